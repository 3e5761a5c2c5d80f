"""The Kubernetes manifests: schema-valid (base files and the kustomize output of base
and overlay), and consistent with the sidecar they deploy (ports, health services,
config file, the config's secret variables, native sidecar, hardening, network policy)."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config import Config, parse_config
from sidecar.rpc.server import HEALTH_SERVICES
from tests.system_tools import require_binary

ROOT = Path(__file__).resolve().parent.parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAY = KUBE / "overlays" / "example"
#: Native sidecars (restartable init containers) are on by default from 1.29, GA in 1.33.
K8S_VERSION = "1.33"
SIDECAR = "integration-sidecar"
SECRET = "integration-sidecar-secrets"
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def base_resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(load_all((BASE / name).read_text()))
    return docs


@cache
def kustomize(path: Path) -> tuple[dict[str, Any], ...]:
    kubectl = require_binary("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return tuple(load_all(out))


def one(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def sidecar_container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == SIDECAR]
    return found


def env_names(raw: Any) -> set[str]:
    """Every environment variable a raw config names in a ``*_env`` field."""
    found: set[str] = set()
    if isinstance(raw, dict):
        for key, value in raw.items():
            if str(key).endswith("_env"):
                found.update([value] if isinstance(value, str) else value)
            else:
                found |= env_names(value)
    elif isinstance(raw, list):
        for item in raw:
            found |= env_names(item)
    return found


def secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret name, key) for env entries filled from a Secret."""
    out = {}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out[entry["name"]] = (ref["name"], ref["key"])
    return out


def parsed_config(raw: dict[str, Any]) -> Config:
    return parse_config(raw, {name: "placeholder-value" for name in env_names(raw)}
                        | {"REDIS_URL": "redis://127.0.0.1:6379/0"})


def validate_schemas(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> set[str]:
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in MONITORING_KINDS:
            check_monitoring_resource(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    return kinds


def check_monitoring_resource(doc: dict[str, Any]) -> None:
    """CRDs kubernetes-validate has no schema for: the fields the operator needs."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"]
    if doc["kind"] == "PodMonitor":
        assert doc["spec"]["selector"]["matchLabels"]
        for endpoint in doc["spec"]["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
            assert endpoint["path"] == "/metrics"
    else:
        for group in doc["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels",
                                     "annotations"}, rule


# ------------------------------------------------------------------ base files


def test_every_base_manifest_validates() -> None:
    kinds = validate_schemas(base_resources())
    assert kinds == {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget",
                     "PodMonitor", "PrometheusRule"}


def test_sidecar_is_a_native_sidecar_with_grpc_probes_on_its_health_services() -> None:
    deployment = one(base_resources(), "Deployment")
    config = parsed_config(yaml.safe_load((BASE / "sidecar.yaml").read_text()))
    c = sidecar_container(deployment)
    assert c["restartPolicy"] == "Always"
    grpc_port = int(config.server.grpc.address.rsplit(":", 1)[1])
    probes = {kind: c[kind]["grpc"] for kind in ("startupProbe", "readinessProbe",
                                                 "livenessProbe")}
    for probe in probes.values():
        assert probe["port"] == grpc_port
        assert probe["service"] in HEALTH_SERVICES
    assert probes["readinessProbe"]["service"] == "readiness"
    assert probes["livenessProbe"]["service"] == "liveness"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "edge": config.server.edge.port,
                     "metrics": config.server.admin.port}
    # The app is a regular container and the sidecar is not one.
    names = [x["name"] for x in deployment["spec"]["template"]["spec"]["containers"]]
    assert SIDECAR not in names and names


def test_config_comes_from_the_configmap_and_every_secret_variable_is_set() -> None:
    deployment = one(base_resources(), "Deployment")
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    c = sidecar_container(deployment)
    config_path = Path(c["args"][c["args"].index("--config") + 1])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (config_mount,) = [m for m in mounts.values()
                       if volumes[m["name"]].get("configMap", {}).get("name") == generator["name"]]
    assert Path(config_mount["mountPath"]) == config_path.parent
    assert config_mount["readOnly"] is True
    assert config_path.name in generator["files"]

    raw = yaml.safe_load((BASE / config_path.name).read_text())
    wanted = env_names(raw)
    assert {"SIDECAR_API_TOKEN", "PAYMENTS_API_TOKEN", "STRIPE_WEBHOOK_SECRET",
            "SIDECAR_JWT_SECRET"} <= wanted
    provided = secret_env(c)
    assert wanted <= set(provided), f"unset: {wanted - set(provided)}"
    assert all(secret == SECRET and key == name for name, (secret, key) in provided.items())
    # Without any one of them the sidecar refuses to start.
    for name in wanted:
        env = {n: "x" for n in wanted - {name}}
        with pytest.raises(Exception, match=name):
            parse_config(raw, env)
    # The data dir is a writable volume (the root filesystem is read-only).
    config = parsed_config(raw)
    data_mount = [m for m in mounts.values() if m["mountPath"] == config.storage.data_dir]
    assert data_mount and "emptyDir" in volumes[data_mount[0]["name"]]
    assert any(m["mountPath"] == "/tmp" for m in mounts.values())
    # The app authenticates with the same token the sidecar requires.
    app = deployment["spec"]["template"]["spec"]["containers"][0]
    assert secret_env(app)["SIDECAR_API_TOKEN"] == provided["SIDECAR_API_TOKEN"]


def test_pods_are_hardened_and_sized() -> None:
    spec = one(base_resources(), "Deployment")["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    grace = parsed_config(yaml.safe_load((BASE / "sidecar.yaml").read_text())
                          ).server.shutdown_grace
    assert spec["terminationGracePeriodSeconds"] > grace
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][section]), c["name"]


def test_only_the_edge_is_public_and_grpc_stays_in_the_pod() -> None:
    docs = base_resources()
    deployment = one(docs, "Deployment")
    ports = {p["name"]: p["containerPort"] for p in sidecar_container(deployment)["ports"]}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    service = one(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [ports["edge"]]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    admitted = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            admitted[port["port"]] = rule.get("from")
    assert set(admitted) == {ports["edge"], ports["metrics"]}
    assert ports["grpc"] not in admitted
    assert admitted[ports["edge"]] is None  # from anywhere
    (monitoring,) = admitted[ports["metrics"]]
    assert monitoring["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}

    podmonitor = one(docs, "PodMonitor")["spec"]
    assert [e["port"] for e in podmonitor["podMetricsEndpoints"]] == ["metrics"]
    assert podmonitor["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


# ---------------------------------------------------------------- kustomize output


def test_kustomize_base_output_validates() -> None:
    docs = kustomize(BASE)
    kinds = validate_schemas(docs)
    assert "ConfigMap" in kinds
    configmap = one(docs, "ConfigMap")
    deployment = one(docs, "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert configmap["metadata"]["name"] in [v.get("configMap", {}).get("name")
                                             for v in volumes]
    assert parsed_config(yaml.safe_load(configmap["data"]["sidecar.yaml"])
                         ).storage.backend == "sqlite"


def test_kustomize_overlay_runs_three_replicas_on_redis() -> None:
    docs = kustomize(OVERLAY)
    validate_schemas(docs)
    assert {d["metadata"].get("namespace") for d in docs} == {"orders"}
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    c = sidecar_container(deployment)
    assert c["image"].endswith("/integration-sidecar:0.1.0")

    config_raw = yaml.safe_load(one(docs, "ConfigMap")["data"]["sidecar.yaml"])
    config = parsed_config(config_raw)
    assert config.storage.backend == "redis"
    assert config.storage.redis.key_prefix
    secret = one(docs, "Secret")
    provided = secret_env(c)
    # Every variable the overlay's config names is filled, from the generated Secret.
    assert env_names(config_raw) <= set(provided)
    assert {s for s, _ in provided.values()} == {secret["metadata"]["name"]}
    assert {key for _, key in provided.values()} <= set(secret["data"])
    # The base's probes, hardening and ports survive the patch.
    assert c["restartPolicy"] == "Always"
    assert c["readinessProbe"]["grpc"]["service"] == "readiness"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The PrometheusRule and PodMonitor come along.
    assert {"PodMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}


def test_overlay_files_patch_what_the_base_has_and_change_only_storage() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    base = one(base_resources(), "Deployment")
    base_inits = {c["name"] for c in base["spec"]["template"]["spec"]["initContainers"]}
    for entry in kustomization["patches"]:
        patch = yaml.safe_load((OVERLAY / entry["path"]).read_text())
        assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment",
                                                              base["metadata"]["name"])
        for c in patch["spec"]["template"]["spec"].get("initContainers", []):
            assert c["name"] in base_inits, c["name"]
    # The overlay's config is the base's with Redis storage: nothing else drifts.
    base_raw = yaml.safe_load((BASE / "sidecar.yaml").read_text())
    overlay_raw = yaml.safe_load((OVERLAY / "sidecar.yaml").read_text())
    assert overlay_raw["storage"]["backend"] == "redis"
    assert {k: v for k, v in overlay_raw.items() if k != "storage"} == {
        k: v for k, v in base_raw.items() if k != "storage"}
    # The example Secret holds placeholders only, one per variable the configs name.
    lines = (OVERLAY / "secrets.example.env").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(values) == env_names(base_raw) | env_names(overlay_raw)
    assert all(v.startswith("replace-me") for k, v in values.items() if k != "REDIS_URL")

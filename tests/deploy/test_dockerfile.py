"""The container image, checked statically (no Docker engine runs here): pinned base,
non-root numeric user, no secrets, every copied file exists and passes .dockerignore,
ports and command match the sidecar's config."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from sidecar.config import parse_config

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def args_defaults() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions()
                if word == "ARG" and "=" in rest)


def test_multi_stage_on_a_pinned_slim_python() -> None:
    defaults = args_defaults()
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2
    for spec in froms:
        image = spec.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert name == "python", image
        match = re.fullmatch(r"3\.(\d+)\.\d+-slim-\w+", tag)
        assert match and int(match.group(1)) >= 11, f"{image}: pin a 3.11+ slim tag"
    assert any(" AS " in spec.upper() for spec in froms)
    assert any(rest.startswith("--from=") for word, rest in instructions() if word == "COPY")


def test_runs_as_a_non_root_numeric_user() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # The data volume belongs to that user (the root filesystem is read-only).
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert f"--uid {uid}" in runs and f"chown {uid}:" in runs
    # The uid the Kubernetes manifests run as.
    deployment = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context is an allow-list"
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from="):
            continue
        *sources, _dest = shlex.split(rest)
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: not in the repository"
            assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), (
                f"COPY {src}: excluded by .dockerignore")


def test_volumes_ports_healthcheck_and_command_match_the_baked_config() -> None:
    ins = instructions()
    env = " ".join(rest for word, rest in ins if word == "ENV")
    copies = [shlex.split(rest) for word, rest in ins
              if word == "COPY" and not rest.startswith("--from=")]
    (config_copy,) = [c for c in copies if c[-1].endswith("sidecar.yaml")]
    config = parse_config(yaml.safe_load((ROOT / config_copy[0]).read_text()), {})
    grpc_port = int(config.server.grpc.address.rsplit(":", 1)[1])
    assert config.server.grpc.address.startswith("0.0.0.0:")  # probes dial the pod IP

    exposed = {int(p) for word, rest in ins if word == "EXPOSE" for p in rest.split()}
    assert exposed == {grpc_port, config.server.edge.port, config.server.admin.port}
    (volumes,) = [rest for word, rest in ins if word == "VOLUME"]
    assert set(yaml.safe_load(volumes)) == {config.storage.data_dir, "/tmp"}
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem
    (health,) = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert "/readyz" in health and "SIDECAR_ADMIN_PORT" in health
    (entry,) = [yaml.safe_load(rest) for word, rest in ins if word == "ENTRYPOINT"]
    (cmd,) = [yaml.safe_load(rest) for word, rest in ins if word == "CMD"]
    assert entry == ["integration-sidecar"]
    assert cmd == ["serve", "--config", config_copy[-1]]


def test_no_secrets_in_the_image() -> None:
    text = DOCKERFILE.read_text()
    for word, rest in instructions():
        if word in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|KEY)\w*=", rest, re.I), rest
    assert not re.search(r"(api[_-]?key|password|secret)\s*[:=]\s*\S+", text, re.I)
    assert "--mount=type=secret" not in text  # nothing secret is needed to build


@pytest.mark.slow
def test_the_build_stage_context_builds_a_wheel_with_the_entry_point(tmp_path: Path) -> None:
    """What the build stage copies (and nothing else) is enough to build the wheel."""
    build_stage: list[tuple[str, str]] = []
    stages = 0
    for word, rest in instructions():
        stages += word == "FROM"
        if stages > 1:
            break
        build_stage.append((word, rest))
    assert any(word == "COPY" for word, _ in build_stage)
    src = tmp_path / "src"
    for word, rest in build_stage:
        if word != "COPY":
            continue
        *sources, dest = shlex.split(rest)
        for source in sources:
            origin = ROOT / source
            target = src / dest / (origin.name if dest.endswith("/") and origin.is_file()
                                   else "")
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("integration_sidecar-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sidecar/app.py" in names
    assert "integration_sidecar/v1/sidecar_pb2_grpc.py" in names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "integration-sidecar = sidecar.cli:main" in text

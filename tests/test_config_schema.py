"""The config file's JSON Schema and reference page, generated from the settings'
declarations (#15): committed and current, every example config validates and points
its editor at the schema, the schema refuses what the loader refuses by key, and
``config show`` of any generated config reads back as the same config."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; locked via kubernetes-validate
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, dump_redacted, parse_config
from sidecar.config.durations import format_duration
from sidecar.config.model import (
    Config,
    DeliveryConfig,
    EdgeConfig,
    LoggingConfig,
    RealtimeConfig,
    ReloadConfig,
    TracingConfig,
    WebhooksConfig,
)
from sidecar.config.reference import SCHEMA_PATH, json_schema, render_reference, render_schema
from sidecar.config.settings import Declared, declared
from tests.fuzzing import examples
from tests.test_config_show import ENV, files, full_config  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / SCHEMA_PATH
#: Every config file the project ships or shows.
EXAMPLES = [ROOT / "deploy" / "config" / "sidecar.example.yaml",
            ROOT / "deploy" / "config" / "sidecar.container.yaml",
            ROOT / "deploy" / "kubernetes" / "base" / "sidecar.yaml",
            ROOT / "deploy" / "kubernetes" / "overlays" / "example" / "sidecar.yaml",
            ROOT / "examples" / "orders" / "sidecar.yaml"]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)\n")


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(document: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator().iter_errors(document)]


def test_the_committed_schema_and_reference_are_current() -> None:
    # deploy/generate.py --check (tests/deploy/test_docs.py) fails on them too.
    assert SCHEMA_FILE.read_text() == render_schema(), "run python deploy/generate.py"
    assert (ROOT / "docs" / "configuration.md").read_text() == render_reference()


def test_every_config_file_in_the_repository_is_an_example_here() -> None:
    shipped = set()
    for top in ("deploy", "examples", "docs"):
        for folder, subfolders, names in os.walk(ROOT / top):
            subfolders[:] = [s for s in subfolders if s not in ("node_modules", ".venv")]
            shipped |= {Path(folder) / n for n in names if n.endswith((".yaml", ".yml"))
                        and re.search(r"^(server|integrations|webhooks|realtime|storage):",
                                      (Path(folder) / n).read_text(), re.M)}
    assert shipped <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_validates_and_names_the_schema(example: Path) -> None:
    text = example.read_text()
    modeline = MODELINE.match(text)
    assert modeline, "the first line must be # yaml-language-server: $schema=..."
    assert (example.parent / modeline.group(1)).resolve() == SCHEMA_FILE
    assert errors(yaml.safe_load(text)) == []


def test_a_config_with_every_setting_and_its_show_output_validate(files: Path) -> None:  # noqa: F811
    assert errors(full_config()) == []
    shown = yaml.safe_load(dump_redacted(parse_config(full_config(), ENV, base_dir=files)))
    assert errors(shown) == []


@pytest.mark.parametrize(("document", "where"), [
    ({"storag": {}}, ""),
    ({"server": {"edge": {"prot": 1}}}, "server.edge"),
    ({"integrations": {"svc": {"base_url": "https://x.example", "retry": {"tries": 2}}}},
     "integrations.svc.retry"),
    ({"integrations": {"svc": {"base_url": "https://x.example",
                               "circuit_breaker": {"failure_rate_threshold": 0.5}}}},
     "integrations.svc.circuit_breaker"),
    ({"logging": {"level": "verbose"}}, "logging.level"),
    ({"realtime": {"queue_size": 0}}, "realtime.queue_size"),
    ({"reload": {"watch_interval": "soon"}}, "reload.watch_interval"),
    ({"integrations": {"svc": {}}}, "integrations.svc"),
    ({"routes": [{"name": "r"}]}, "routes.0"),
    # Client certificates are checked on the gRPC listener only.
    ({"server": {"admin": {"tls": {"cert_file": "c.pem", "key_file": "k.pem",
                                   "client_ca_file": "ca.pem"}}}}, "server.admin.tls"),
])
def test_the_schema_refuses_what_the_loader_refuses(document: dict[str, Any],
                                                    where: str) -> None:
    found = errors(document)
    assert found and all(e.startswith(f"{where}:") for e in found), found
    with pytest.raises(ConfigError):
        parse_config(document, {})


def test_config_schema_command_prints_the_committed_schema() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SIDECAR_NO_UVLOOP": "1"}
    shown = subprocess.run([sys.executable, "-m", "sidecar", "config", "schema"],
                           capture_output=True, text=True, env=env, check=True)
    assert shown.stdout == SCHEMA_FILE.read_text()
    assert json.loads(shown.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_declared_setting_is_in_the_schema_and_the_reference() -> None:
    schema = json_schema()
    reference = render_reference()
    leaves = [d for d in declared(Config)]
    assert set(schema["properties"]) == {"version", *(d.key for d in leaves)}
    for d in declared(LoggingConfig):
        assert f"| `logging.{d.key}` |" in reference
    integration = schema["$defs"]["IntegrationConfig"]["properties"]
    assert {"base_url", "auth", "retry", "rate_limit", "fallback"} <= set(integration)
    assert "failure_rate" in schema["$defs"]["BreakerConfig"]["properties"]


# --------------------------------------------------------------------------- round trip


def _value(d: Declared) -> st.SearchStrategy[Any]:
    """Values the declaration allows for a plain setting, as a file would write them."""
    s = d.setting
    if s.choices:
        return st.sampled_from(s.choices)
    if s.kind == "boolean":
        return st.booleans()
    if s.kind == "integer":
        low = int(s.minimum) if s.minimum is not None else 0
        return st.integers(low, int(s.maximum) if s.maximum is not None else low + 10**6)
    if s.kind == "number":
        return st.floats(s.minimum or 0.0, s.maximum if s.maximum is not None else 1e6)
    if s.kind == "duration":
        least = max(s.minimum or 0.0, 0.0 if not s.positive else 0.001)
        return st.floats(least, 10 * 86400.0).map(lambda x: round(x, 3)).filter(
            lambda x: x >= least).flatmap(lambda x: st.sampled_from([x, format_duration(x)]))
    if s.kind == "string":
        return st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=12)
    raise AssertionError(d)


def section(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of a section's plain settings, each set to an allowed value."""
    plain = [d for d in declared(cls) if d.key is not None
             and d.setting.kind in ("string", "boolean", "integer", "number", "duration")]
    return st.fixed_dictionaries({}, optional={d.key: _value(d) for d in plain
                                               if d.key is not None})


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much])
@given(logging=section(LoggingConfig), realtime=section(RealtimeConfig),
       reload=section(ReloadConfig), edge=section(EdgeConfig), tracing=section(TracingConfig),
       webhooks=section(WebhooksConfig), delivery=section(DeliveryConfig),
       integration=st.fixed_dictionaries({}, optional={
           "max_request_bytes": st.integers(0, 2**40), "allow_insecure_http": st.booleans(),
           "timeouts": st.fixed_dictionaries({}, optional={
               k: st.sampled_from(["1s", "2500ms", 7, "1m"])
               for k in ("connect", "attempt", "total")}),
           "retry": st.fixed_dictionaries({}, optional={
               "max_attempts": st.integers(1, 20),
               "on_status": st.lists(st.sampled_from([429, 500, 503, "5xx", "4xx"])),
               "backoff": st.fixed_dictionaries({}, optional={
                   "initial": st.sampled_from(["10ms", "1s"]),
                   "multiplier": st.floats(1.0, 5.0), "jitter": st.sampled_from(["full",
                                                                                 "none"])})}),
           "rate_limit": st.fixed_dictionaries({"rate": st.floats(0.001, 1e4)}, optional={
               "burst": st.integers(1, 10**6), "on_limit": st.sampled_from(["wait",
                                                                            "reject"])}),
           "fallback": st.fixed_dictionaries({}, optional={
               "enabled": st.booleans(), "max_entries": st.integers(1, 100_000)}),
       }))
def test_config_show_of_any_config_reads_back_the_same(
        logging: dict[str, Any], realtime: dict[str, Any], reload: dict[str, Any],
        edge: dict[str, Any], tracing: dict[str, Any], webhooks: dict[str, Any],
        delivery: dict[str, Any], integration: dict[str, Any]) -> None:
    raw = {"logging": logging, "realtime": realtime, "reload": reload,
           "server": {"edge": edge}, "tracing": tracing,
           "webhooks": {**webhooks, "delivery": delivery},
           "integrations": {"svc": {"base_url": "https://svc.example", **integration}}}
    try:
        config = parse_config(raw, {})
    except ConfigError:
        assume(False)  # settings that contradict each other (attempt > total, ...)
        raise
    shown = yaml.safe_load(dump_redacted(config))
    assert parse_config(shown, {}) == config
    assert errors(shown) == []


def test_every_field_of_every_section_is_declared() -> None:
    """A field added without a declaration would be neither read nor documented."""
    seen: set[type] = set()
    pending: list[type] = [Config]
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        found = list(declared(cls))
        assert {d.name for d in found} == {f.name for f in dataclasses.fields(cls)}, cls
        pending += [d.setting.of or type(d.default) for d in found
                    if d.setting.kind == "section" or d.setting.of is not None]
    assert len(seen) > 25

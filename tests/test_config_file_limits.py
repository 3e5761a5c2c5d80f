"""A hostile or broken config file is refused, quickly and naming what is wrong (#14):
by ``config check`` (exit 2) and by a running sidecar's reload, which keeps its config
and keeps serving. Alias bombs, deep nesting, huge files, bytes that are not UTF-8."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from sidecar.config import ConfigError, load_config
from sidecar.config.yaml_file import MAX_BYTES, MAX_DEPTH, MAX_NODES, read_yaml
from tests.fuzzing import examples

ROOT = Path(__file__).resolve().parent.parent


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Each level lists the one above ``width`` times: width**levels values in all
    (387 million here), in a few hundred bytes, in a list-valued field."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    # Validating this field walked every value (the sidecar hung before the file
    # reader bounded it).
    lines.append(f"webhooks:\n  sources:\n    s:\n      scheme: github\n"
                 f"      secrets_env: *a{levels}")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, tuple[str | bytes, str]] = {
    "alias bomb": (alias_bomb(), "alias"),
    "deep nesting": ("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", "nested"),
    "very deep nesting": ("x: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
    "too big": ("# " + "x" * MAX_BYTES + "\n", "larger than"),
    "not UTF-8": (b"server: {grpc: {address: \xff\xfe}}\n", "not UTF-8"),
    "self reference": ("a: &a [1, *a]\n", "refers to the node"),
}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_is_a_config_error_naming_why(tmp_path: Path, case: str) -> None:
    content, expected = HOSTILE[case]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "sidecar.yaml", content), {})
    assert expected in str(info.value), str(info.value)


def test_documents_just_within_the_limits_load(tmp_path: Path) -> None:
    nested = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    assert read_yaml(write(tmp_path / "deep.yaml", f"x: {nested}\n")) is not None
    shared = read_yaml(write(tmp_path / "shared.yaml", alias_bomb(levels=4, width=9)))
    # 9**4 leaves, nested 4 deep: aliases that stand for fewer than MAX_NODES are fine.
    assert len(shared["webhooks"]["sources"]["s"]["secrets_env"]) == 9
    assert MAX_NODES > 9 ** 5
    # Aliases in a real config are fine.
    config = load_config(write(tmp_path / "ok.yaml", (
        "realtime:\n  websocket:\n    allowed_origins: "
        "[&o 'https://app.example', *o]\n")), {})
    assert config.realtime.websocket.allowed_origins == ("https://app.example",) * 2


@pytest.mark.slow
def test_config_check_refuses_an_alias_bomb_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", alias_bomb())
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
    done = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", "--config",
                           str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "alias" in done.stdout + done.stderr


async def test_a_reload_of_a_hostile_file_is_refused_and_the_sidecar_serves_on(
        tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    good = {"server": {"grpc": {"address": "127.0.0.1:0"},
                       "edge": {"host": "127.0.0.1", "port": 0},
                       "admin": {"host": "127.0.0.1", "port": 0}},
            "storage": {"data_dir": str(tmp_path / "data")}}
    path.write_text(yaml.safe_dump(good))
    sc = Sidecar(load_config(path, {}), config_path=path)
    await sc.start()
    try:
        for case in sorted(HOSTILE):
            write(path, HOSTILE[case][0])
            outcome = await asyncio.wait_for(sc.reload(), 30)
            assert not outcome.ok and outcome.problems, case
            assert sc.config.server.grpc.address == "127.0.0.1:0"
        assert (await sc.readiness()).ready
    finally:
        await sc.stop()


@settings(max_examples=examples(200), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_file_content_loads_or_is_a_config_error(tmp_path: Path,
                                                     content: bytes | str) -> None:
    with contextlib.suppress(ConfigError):  # anything else fails the test
        load_config(write(tmp_path / "any.yaml", content), {})

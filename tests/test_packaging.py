"""Packaging and layout: the wheel ships both packages; generated code is current;
dependencies point inward."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_wheel_ships_server_and_generated_packages_side_by_side(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("integration_sidecar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("sidecar/app.py", "sidecar/py.typed",
                     "integration_sidecar/v1/sidecar_pb2.py",
                     "integration_sidecar/v1/sidecar_pb2_grpc.py",
                     "integration_sidecar/v1/sidecar_pb2.pyi"):
        assert required in names, required
    assert not any(n.startswith(("tests/", "generated/", "sidecar/integration_sidecar"))
                   for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    probe = (
        "import sidecar, integration_sidecar.v1.sidecar_pb2_grpc as g, sidecar.app;"
        "print(sidecar.__file__); print(g.__file__);"
        "print(g.SidecarServiceStub.__name__)"
    )
    # Run outside the checkout with only the installed wheel ahead of the deps.
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target))
    assert out[2] == "SidecarServiceStub"


FORBIDDEN_IN_CORE = ("grpc", "aiohttp", "sqlite3", "sqlite_utils", "redis", "prometheus_client",
                     "integration_sidecar", "google.protobuf", "google.rpc")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_imports_no_transport_storage_or_metrics_library() -> None:
    core = ROOT / "sidecar" / "core"
    offenders = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in core.rglob("*.py") for m in imported_modules(p)
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_CORE)
    ]
    assert offenders == []


def test_protobuf_types_stop_at_the_grpc_adapter() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "sidecar").rglob("*.py")
        if "rpc" not in p.relative_to(ROOT / "sidecar").parts
        and any(m.startswith("integration_sidecar") for m in imported_modules(p))
    ]
    assert offenders == []

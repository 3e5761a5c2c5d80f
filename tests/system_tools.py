"""System programs some tests need (Chromium, Prometheus, promtool, node, kubectl).

Like Redis: under ``CI=true`` a missing program fails the test, elsewhere it skips
with the Debian package that provides it. ``.ci/run`` installs them when missing.
"""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGES = {
    "chromium": "chromium",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "node": "nodejs (and npm)",
    "npm": "npm",
    "kubectl": "kubectl (optional: kustomize build checks)",
}

# Programs the CI machine is not required to have: their tests skip even in CI.
OPTIONAL_IN_CI = {"kubectl"}


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; fail in CI (unless optional), skip elsewhere."""
    found = shutil.which(name)
    if found:
        return found
    what = f"this test needs `{name}` on PATH (Debian: apt-get install {PACKAGES.get(name, name)})"
    if os.environ.get("CI") == "true" and name not in OPTIONAL_IN_CI:
        pytest.fail(f"{what}; in CI it must run")
    pytest.skip(what)


def chromium_path() -> str:
    """The system Chromium for Playwright (``CHROMIUM`` overrides)."""
    override = os.environ.get("CHROMIUM")
    if override:
        return override
    return require_binary("chromium")


# Flags for a headless Chromium on a machine without network or GPU.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

"""The build is reproducible: one interpreter and one lock for tests, CI and the image.

``requirements/*.txt`` pin every dependency with hashes (``make lock``); these tests
check, offline, that the pins agree with each other, with ``pyproject.toml``'s ranges,
with the environment the tests run in, and that the container image is built from the
same interpreter minor version and the same lock. ``make lock-check`` (in CI) checks
the harder part online: that re-resolving changes nothing.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(name: str) -> dict[str, tuple[str, str]]:
    """``requirements/<name>`` as {canonical name: (version, marker)}; every pin hashed."""
    found: dict[str, tuple[str, str]] = {}
    lines = (REQ / name).read_text().splitlines()
    for i, line in enumerate(lines):
        m = PIN.match(line)
        if m is None:
            continue
        assert i + 1 < len(lines) and lines[i + 1].strip().startswith("--hash=sha256:"), \
            f"{name}: {m.group(1)} is pinned without a hash"
        found[canonicalize_name(m.group(1))] = (m.group(2), (m.group(3) or "").strip())
    assert found, f"{name} pins nothing"
    return found


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(kind: str) -> list[Requirement]:
    project = pyproject()
    runtime = [Requirement(r) for r in project["project"]["dependencies"]]  # type: ignore[index]
    fast = [Requirement(r) for r in
            project["project"]["optional-dependencies"]["fast"]]  # type: ignore[index]
    if kind == "runtime":
        return runtime + fast
    dev = [Requirement(r) for r in project["dependency-groups"]["dev"]]  # type: ignore[index]
    return runtime + fast + dev


def test_every_requirement_is_pinned_within_its_range() -> None:
    for kind, file in (("runtime", "runtime.txt"), ("dev", "dev.txt")):
        locked = pins(file)
        for req in requirements(kind):
            name = canonicalize_name(req.name)
            assert name in locked, f"{file} does not pin {req.name} (run make lock)"
            version = locked[name][0]
            assert req.specifier.contains(version, prereleases=True), \
                f"{file} pins {req.name}=={version}, outside pyproject.toml's {req} " \
                "(run make lock)"


def test_the_image_gets_the_versions_the_tests_ran_with() -> None:
    dev, runtime, build = pins("dev.txt"), pins("runtime.txt"), pins("build.txt")
    for file, locked in (("runtime.txt", runtime), ("build.txt", build)):
        for name, (version, _) in locked.items():
            assert dev.get(name, (version,))[0] == version, \
                f"{file} pins {name}=={version} but dev.txt {dev[name][0]}"
    (uv,) = pins("uv.txt").items()
    assert uv == ("uv", dev["uv"]), "uv.txt bootstraps another uv than dev.txt pins"


def test_the_environment_is_the_locked_one() -> None:
    """The suite runs on exactly the pinned versions (make installs with ``pip sync``)."""
    wrong = []
    for name, (version, marker) in pins("dev.txt").items():
        if marker and not Requirement(f"x; {marker}").marker.evaluate():  # type: ignore[union-attr]
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong.append(f"{name}: locked {version}, installed {installed}")
    assert wrong == [], "the venv is not the lock's; run `make venv`: " + "; ".join(wrong)


def locked_python() -> str:
    script = (REQ / "lock.sh").read_text()
    m = re.search(r"^python=(\d+\.\d+)$", script, re.M)
    assert m is not None, "lock.sh names no --python-version"
    return m.group(1)


def test_image_lock_and_tests_share_one_interpreter_minor_version() -> None:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    dockerfile = DOCKERFILE.read_text()
    m = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)(?:\.\d+)?-", dockerfile, re.M)
    assert m is not None, "the Dockerfile's base image is not a python:X.Y[.Z]- tag"
    image = f"{m.group(1)}.{m.group(2)}"
    project = pyproject()
    mypy = project["tool"]["mypy"]["python_version"]  # type: ignore[index]
    ruff = project["tool"]["ruff"]["target-version"]  # type: ignore[index]
    assert (image, locked_python(), mypy, ruff) == (running, running, running,
                                                    "py" + running.replace(".", "")), \
        f"tests run on {running}; image {image}, lock {locked_python()}, mypy {mypy}, ruff {ruff}"


def test_the_image_installs_only_from_the_lock() -> None:
    dockerfile = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\n\\&]*)", dockerfile)
    assert installs, "the Dockerfile installs nothing with pip"
    for args in installs:
        # Either the hash-checked lock, or the wheel just built (its deps come from the lock).
        assert ("--require-hashes" in args and "-r requirements/" in args) or \
            ("--no-deps" in args and args.strip().endswith(".whl")), args
    assert "--no-build-isolation" in dockerfile, \
        "the wheel must be built by the locked setuptools, not a fresh unpinned one"

#!/usr/bin/env bash
# Pins every Python dependency, with hashes, from pyproject.toml's ranges:
#   dev.txt      runtime + uvloop + the dev group: what `make` installs (.venv, CI)
#   runtime.txt  runtime + uvloop: what the container image installs
#   build.txt    the build backend, to build the sidecar's wheel in the image
#   uv.txt       the installer alone, to bootstrap it with pip before it installs dev.txt
# Usage: lock.sh UV ROOT [uv pip compile options]: reads ROOT/pyproject.toml, writes
# ROOT/requirements/. Pins already there are kept where pyproject.toml still allows them
# (so `make lock` changes only what it must; `make lock-upgrade` takes the newest), which
# is also how `make lock-check` sees, in a scratch copy, whether the committed files are
# stale.
set -euo pipefail
uv=$(realpath "$1")
cd "$2"
shift 2
out=requirements
# One interpreter for the lock, the tests and the container image (tests/test_build.py).
python=3.11
common=(--quiet --generate-hashes --universal --python-version "$python"
        --custom-compile-command "make lock" "$@")
"$uv" pip compile pyproject.toml --group pyproject.toml:dev --extra fast "${common[@]}" \
    -o "$out/dev.txt"
# The image gets exactly the versions the tests ran with.
"$uv" pip compile pyproject.toml --extra fast -c "$out/dev.txt" "${common[@]}" \
    -o "$out/runtime.txt"
# The build backend pyproject.toml's [build-system] names, at the tests' versions.
printf 'setuptools\nwheel\n' | "$uv" pip compile - -c "$out/dev.txt" "${common[@]}" \
    -o "$out/build.txt"
grep -E '^uv==' "$out/dev.txt" | sed 's/ .*//' \
    | "$uv" pip compile - "${common[@]}" -o "$out/uv.txt"

"""Generate the Python code in ``generated/`` from the ``.proto`` files here.

Run through ``make protos``; ``make protos-check`` (CI) regenerates into a
temporary directory and fails when the committed code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
ROOT = PROTOS.parent
DEFAULT_OUT = ROOT / "generated"
# Only these suffixes are generated output; anything else in generated/ is ours.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def generate(out: Path) -> None:
    import grpc_tools  # the bundled well-known types live beside it

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    bin_dir = Path(sys.executable).parent
    files = [str(p.relative_to(PROTOS)) for p in proto_files()]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)  # noqa: S603 - fixed argv, our own files
    # Every directory on the way to a generated module is a regular package,
    # so the code imports the same way from a checkout and from a wheel.
    for rel in files:
        pkg = out / Path(rel).parent
        while pkg != out:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent


def generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and (p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py")
    }


def check(out: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(out)
        stale = sorted(str(p) for p in want ^ have)
        stale += sorted(
            str(p) for p in want & have if not filecmp.cmp(fresh / p, out / p, shallow=False)
        )
    if stale:
        print("generated/ is stale; run `make protos` and commit:", *stale, sep="\n  ")
        return 1
    print(f"generated/ is current ({len(want)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="fail if --out is stale")
    args = parser.parse_args()
    if args.check:
        return check(args.out)
    for path in generated_files(args.out) if args.out.exists() else ():
        (args.out / path).unlink()
    generate(args.out)
    print(f"generated {len(generated_files(args.out))} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every ErrorInfo reason the sidecar can return, read from its source.

A reason reaches a caller as ``SidecarError.reason``: either a literal passed as
``reason=`` where an error is built, or the ``default_reason`` of the class built
without one. Both are found by walking the AST of ``sidecar/`` and resolving the
called name in its module, so a new reason anywhere shows up here.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import grpc

from sidecar import errors
from sidecar.rpc.status import grpc_code

ROOT = Path(__file__).resolve().parent.parent.parent
SIDECAR = ROOT / "sidecar"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.expr, namespace: dict[str, object]) -> object | None:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def _error_class(obj: object) -> type[errors.SidecarError] | None:
    owner = getattr(obj, "__self__", obj)  # a classmethod like InvalidArgument.of
    if isinstance(owner, type) and issubclass(owner, errors.SidecarError):
        return owner
    return None


def _sources() -> list[Path]:
    # __main__ runs the CLI on import and raises nothing of its own.
    return [p for p in sorted(SIDECAR.rglob("*.py")) if p.name != "__main__.py"]


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def grpc_reasons() -> dict[str, set[str]]:
    """reason -> the gRPC code names it can come with."""
    found: dict[str, set[str]] = {}
    for path in _sources():
        module = importlib.import_module(_module_name(path))
        namespace = vars(module)
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call):
                continue
            cls = _error_class(_resolve(node.func, namespace))
            if cls is None:
                continue
            reason = cls.default_reason
            for kw in node.keywords:
                if kw.arg == "reason":
                    if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)):
                        raise AssertionError(f"{path}:{node.lineno}: reason is not a literal; "
                                             "the documentation test cannot follow it")
                    reason = kw.value.value
            code: grpc.StatusCode = grpc_code(cls("x"))
            found.setdefault(reason, set()).add(code.name)
    return found


def _literal_reasons(function: str) -> set[str]:
    """String literals passed as the second argument of calls to ``function``."""
    found: set[str] = set()
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name == function and isinstance(node.args[1], ast.Constant):
                found.add(str(node.args[1].value))
    return found


def http_reasons() -> set[str]:
    """Reasons in the JSON error bodies of the edge and admin listeners."""
    return _literal_reasons("json_error")


def websocket_reasons() -> set[str]:
    """Reasons of WebSocket ``{"control": "error"}`` frames given as literals (others
    carry a SidecarError's reason, documented with the gRPC ones)."""
    return _literal_reasons("_send_error")

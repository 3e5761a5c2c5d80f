"""Reading the config file as YAML, within bounds.

YAML aliases let a few hundred bytes stand for billions of nodes (the "billion laughs"
alias bomb): parsed as is, such a file hung ``config check`` and made a running
sidecar that reloaded it grow by gigabytes. Here the file's size, the number of
nodes it stands for once every alias is expanded, and its nesting depth are bounded
before anything is built from it; a file that is not UTF-8 is refused too. Every
refusal is a YamlFileError saying where and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: A config file is a few kilobytes; this leaves room for a thousand integrations.
MAX_BYTES = 1024 * 1024
#: Nodes the document stands for with every alias expanded (a sane file: a few hundred).
MAX_NODES = 100_000
#: Nesting of mappings and sequences.
MAX_DEPTH = 50


class YamlFileError(Exception):
    """The file cannot be read as a config: ``where`` (a line and column, or
    ``<file>``) and what is wrong."""

    def __init__(self, where: str, description: str) -> None:
        super().__init__(f"{where}: {description}")
        self.where = where
        self.description = description


def _refuse(where: str, description: str) -> YamlFileError:
    return YamlFileError(where, description)


def _measure(root: yaml.Node) -> None:
    """Refuse ``root`` if, aliases expanded, it has too many nodes or nests too deep.
    Each node is measured once (aliases share their anchor's node), so a bomb costs
    time in proportion to its text, not to what it stands for."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    # Iterative post-order walk: a deep file must not exhaust Python's stack either.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            if key in on_path:
                raise _refuse(_line(node), "an alias refers to the node it is in")
            on_path.add(key)
            if len(on_path) > MAX_DEPTH:
                raise _refuse(_line(node), f"nested more than {MAX_DEPTH} levels deep")
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        on_path.discard(key)
        sizes[key] = 1 + sum(sizes[id(c)] for c in children)
        depths[key] = 1 + max((depths[id(c)] for c in children), default=0)
        if sizes[key] > MAX_NODES:
            raise _refuse(_line(node), f"stands for more than {MAX_NODES} values once "
                                               "its aliases are expanded (an alias bomb?)")
        if depths[key] > MAX_DEPTH:
            raise _refuse(_line(node), f"nested more than {MAX_DEPTH} levels deep")


def _line(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"


def key_lines(root: yaml.Node) -> dict[str, int]:
    """The line of each key of the document, by the loader's dotted path
    (``integrations.svc.retry``, ``routes[0].name``). Each node is visited once."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    here = f"{path}.{key.value}" if path else str(key.value)
                    lines.setdefault(here, key.start_mark.line + 1)
                    stack.append((value, here))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
                stack.append((item, f"{path}[{i}]"))
    return lines


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``, or YamlFileError; never a hang or unbounded memory."""
    return read_yaml_with_lines(path)[0]


def read_yaml_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """``read_yaml``, and the line of each key (``key_lines``)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _refuse("<file>", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise _refuse("<file>", f"larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse("<file>", f"not UTF-8 text (byte {exc.start})") from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # refuses characters YAML does not allow
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _measure(node)
        return loader.construct_document(node), key_lines(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise _refuse(where, f"not valid YAML: {problem}") from None
    except RecursionError:
        raise _refuse("<file>", f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()

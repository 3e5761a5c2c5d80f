"""How a setting is declared: once, on its field in ``model.py``.

Each field of the config dataclasses carries a ``Setting`` in its metadata (YAML key,
kind, unit, bounds, choices, live or restart-only, a one-line doc). The loader, ``config
show``, the reload diff, the JSON Schema and the reference docs are all read from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

#: What a value is in the file, and so how it is read, written and documented
#: (``header``: an HTTP header name; ``secret``: the name of the variable holding one).
#: ``custom``: read and written by hand in load.py / dump.py; its schema is given.
Kind = Literal["string", "header", "integer", "number", "duration", "boolean", "secret",
               "section", "custom"]
#: ``live``: a reload applies it to new work; ``restart``: the running value stays until
#: the next restart. A section's settings inherit its value unless they say otherwise.
Reload = Literal["live", "restart"]


@dataclass(frozen=True)
class Setting:
    doc: str
    kind: Kind = "string"
    #: The key in the file; "" means the field's name, None that the file has none (a
    #: value derived from other settings).
    yaml: str | None = ""
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    reload: Reload | None = None
    #: A duration of zero is allowed (``positive=False``).
    positive: bool = True
    required: bool = False
    #: The environment variable that overrides it (``SIDECAR_...``).
    env: str = ""
    #: The default as the docs show it, when the field's own is not what applies.
    default_text: str = ""
    #: JSON Schema of a ``custom`` value (its ``description`` is added).
    schema: dict[str, Any] | None = None
    #: A section whose default is None: its class.
    of: Any = None
    #: A section that may be None: ``enabled: false`` in the file makes it None.
    switch: bool = False
    #: A section written inline: its keys sit in the enclosing mapping.
    flatten: bool = False
    #: Keys of the section's class that this place does not take.
    omit: tuple[str, ...] = ()
    #: An empty string means the default.
    blank_default: bool = False
    #: Other keys of the same value (which one is read depends on another setting).
    aliases: tuple[str, ...] = ()
    #: Applied on reload by a rule of its own (``reload.RULES``), not as a whole.
    reload_rule: str = ""


def setting(default: Any = dataclasses.MISSING, *, doc: str, kind: Kind = "string",
            **options: Any) -> Any:
    """A dataclass field with its declaration attached."""
    meta = {"setting": Setting(doc=doc, kind=kind, **options)}
    if isinstance(default, list | dict):
        raise TypeError("use a tuple or a default_factory")
    return dataclasses.field(default=default, metadata=meta)


def about(*, doc: str, kind: Kind = "string", **options: Any) -> dict[str, Any]:
    """The metadata of a field without default: ``field(metadata=about(...))``."""
    options.setdefault("required", True)
    return {"setting": Setting(doc=doc, kind=kind, **options)}


@dataclass(frozen=True)
class Declared:
    """One field's declaration, with the name and default its class gives it."""

    name: str
    key: str | None
    setting: Setting
    default: Any
    type: Any


#: Core's policy types, as the file writes them (``declare_policy``).
_POLICIES: dict[type, dict[str, Setting]] = {}


def declare_policy(cls: type, **settings: Setting) -> None:
    """Declare the fields of a core policy type: core knows nothing of the file, so its
    settings are declared beside the config's, in ``model.py``."""
    _POLICIES[cls] = settings


def declared(cls: type) -> Iterator[Declared]:
    """The declared fields of ``cls``: a config dataclass, or a declared policy type."""
    table = _POLICIES.get(cls)
    for f in dataclasses.fields(cls):
        found = table.get(f.name) if table is not None else f.metadata.get("setting")
        if found is None:
            continue
        default: Any = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            factory: Any = f.default_factory
            default = factory()
        key = None if found.yaml is None else (found.yaml or f.name)
        yield Declared(f.name, key, found, default, f.type)


def is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)

"""What the ``serve`` process need not load at start-up: modules our dependencies
import but the sidecar rarely or never uses, made to load on first use."""

from __future__ import annotations

import importlib.util
import mimetypes
import sys

#: Imported by dependencies at import time, used only by features the sidecar
#: does not call: sqlite-utils' date-parsing recipes import dateutil's parser,
#: which brings dateutil.tz, zoneinfo and ctypes (about 1.1 MB resident).
DEFERRED = ("dateutil.parser",)


def defer(name: str) -> None:
    """Make ``name`` (a module not imported yet) run on first attribute access.

    ``import`` binds it at once (importlib's ``LazyLoader``); its code runs when
    one of its attributes is first read, so nothing changes for code that uses it.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        # As the import system does, so ``from parent import child`` finds it.
        setattr(sys.modules[parent], child, module)


def defer_unused_modules() -> None:
    """Call before importing the server: defers ``DEFERRED`` and the mimetypes tables."""
    for name in DEFERRED:
        defer(name)
    # aiohttp.web builds a MimeTypes() at import, which first loads the system's
    # mime.types into mimetypes' module-level tables (about 0.3 MB). The instance
    # never uses those tables, and mimetypes.guess_type() and friends still load
    # them on first use (they check for the database, not this flag).
    mimetypes.inited = True

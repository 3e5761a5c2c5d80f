"""The event loop every benchmark process runs on: uvloop, as the sidecar itself uses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run_on_uvloop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion on a fresh uvloop loop (plain asyncio without uvloop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dev dependency
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())

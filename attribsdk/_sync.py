"""One way to call the async API from synchronous code, including code that runs on an event
loop's thread (a notebook cell, a sync callback of an async framework)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import sniffio
from anyio.from_thread import start_blocking_portal

T = TypeVar("T")

__all__ = ["run_sync"]


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def run_sync(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` to completion and return its result.

    In plain synchronous code this is :func:`anyio.run` on the calling thread. When an event loop
    is already running on this thread (Jupyter, for instance), a new loop cannot start here, so
    ``fn()`` runs on a loop in a worker thread while this thread waits for it.
    """
    if not _loop_running_here():
        return anyio.run(fn)
    with start_blocking_portal() as portal:
        return portal.call(fn)

"""run_sync: the blocking wrappers work in plain code and on a thread whose event loop runs."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
import trio

from attribsdk._sync import run_sync
from attribsdk.errors import InputError


async def _where(value: int) -> tuple[int, str]:
    await anyio.sleep(0)
    return value * 2, threading.current_thread().name


def test_plain_code_runs_on_the_calling_thread() -> None:
    assert run_sync(lambda: _where(3)) == (6, threading.current_thread().name)


def test_inside_a_running_asyncio_loop() -> None:
    async def notebook_cell() -> tuple[int, str]:
        # what a notebook does: synchronous library code called while the loop runs here
        return run_sync(lambda: _where(4))

    value, thread = asyncio.run(notebook_cell())
    assert value == 8 and thread != threading.current_thread().name


def test_inside_a_running_trio_loop() -> None:
    async def caller() -> tuple[int, str]:
        return run_sync(lambda: _where(5))

    value, thread = trio.run(caller)
    assert value == 10 and thread != threading.current_thread().name


def test_errors_come_through_typed() -> None:
    async def fails() -> None:
        raise InputError("bad input")

    with pytest.raises(InputError, match="bad input"):
        run_sync(fails)

    async def caller() -> None:
        run_sync(fails)

    with pytest.raises(InputError, match="bad input"):
        asyncio.run(caller())

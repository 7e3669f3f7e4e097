"""A model function that records how many of its calls ran at once (for concurrency caps)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from attribsdk.adapters.base import GenerationParams, Message

__all__ = ["PeakConcurrency"]


class PeakConcurrency:
    """An async ``(messages, params) -> str`` for :class:`~attribsdk.adapters.wrappers.FunctionModel`:
    each call holds for ``hold`` seconds and answers ``reply(messages, params)``; :attr:`peak` is
    the most calls that were in flight at once."""

    def __init__(self, reply: Callable[[list[Message], GenerationParams], str], hold: float) -> None:
        self.reply = reply
        self.hold = hold
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, messages: list[Message], params: GenerationParams) -> str:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.hold)
        finally:
            self.in_flight -= 1
        return self.reply(messages, params)

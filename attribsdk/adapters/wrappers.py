"""ClosedModel wrappers and test doubles.

* :class:`ModelWrapper`: base class of every wrapper; forwards ``name``, ``describe_request`` and
  ``aclose`` to the wrapped model.
* :class:`LimitedModel`: a cap on concurrent calls plus a client-side rate limiter (requests per
  minute and tokens per minute, token buckets).
* :class:`FunctionModel` / :class:`TestModel`: in-process models for tests and examples (no HTTP).

Token estimates here are deliberately pessimistic (see :func:`worst_case_input_tokens`): they are
used to decide whether a call may be made, never to report usage.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import types
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..errors import ConfigError
from .base import ClosedModel, Completion, GenerationParams, Message, Usage

__all__ = [
    "FunctionModel",
    "LimitedModel",
    "ModelWrapper",
    "TestModel",
    "TokenBucket",
    "describe_request",
    "worst_case_input_tokens",
    "worst_case_tokens",
]

#: Tokens assumed per message for role markers and separators (providers use 3-4).
MESSAGE_OVERHEAD_TOKENS = 8
#: Tokens assumed per request for the reply primer.
REQUEST_OVERHEAD_TOKENS = 8


def worst_case_input_tokens(messages: list[Message]) -> int:
    """An upper bound on the input tokens of ``messages`` for byte-level BPE tokenizers.

    Every such token covers at least one UTF-8 byte, so the byte count bounds the text's tokens;
    a fixed overhead per message and per request covers role markers. Typically 3-4× the truth.
    """
    text_bytes = sum(len(m.content.encode("utf-8")) + len(m.role) for m in messages)
    return text_bytes + MESSAGE_OVERHEAD_TOKENS * len(messages) + REQUEST_OVERHEAD_TOKENS


def worst_case_tokens(messages: list[Message], params: GenerationParams) -> int:
    """Worst-case total tokens of one call: :func:`worst_case_input_tokens` plus ``max_tokens``."""
    return worst_case_input_tokens(messages) + params.max_tokens


def describe_request(model: ClosedModel, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
    """The final request ``model`` would send, as JSON-able data without credentials or timeouts.

    Adapters that know their wire format implement ``describe_request``; for any other model this
    falls back to its name, the messages and every output-changing parameter.
    """
    method = getattr(model, "describe_request", None)
    if callable(method):
        described = method(messages, params)
        if not isinstance(described, dict):
            raise ConfigError(
                f"{model.name}: describe_request must return a dict, got {type(described).__name__}"
            )
        return described
    return generic_request(model.name, messages, params)


def generic_request(name: str, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
    """A request described by the model's name, the messages and every output-changing parameter."""
    return {
        "provider": "generic",
        "model": name,
        "messages": [m.model_dump() for m in messages],
        "params": params.model_dump(mode="json", exclude={"sample_index"}),
    }


class ModelWrapper:
    """Base of ClosedModel wrappers: holds ``inner`` and forwards what a wrapper does not change."""

    def __init__(self, inner: ClosedModel) -> None:
        if not isinstance(inner, ClosedModel):
            raise ConfigError(f"expected a ClosedModel to wrap, got {type(inner).__name__}")
        self.inner = inner

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self.inner.name

    def describe_request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The wrapped model's final request (see :func:`describe_request`)."""
        return describe_request(self.inner, messages, params)

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Forward to the wrapped model."""
        return await self.inner.generate(messages, params)

    async def aclose(self) -> None:
        """Close the wrapped model."""
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class TokenBucket:
    """A token bucket holding up to ``capacity`` tokens, refilled at ``capacity / period`` per second.

    It starts full. :meth:`acquire` waits (first come, first served) until the amount is available.
    ``clock`` (seconds) and ``sleep`` default to anyio's; tests may pass fakes.
    """

    def __init__(
        self,
        capacity: float,
        period: float = 60.0,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not (capacity > 0 and math.isfinite(capacity)):
            raise ConfigError(f"rate-limit capacity must be a positive number, got {capacity!r}")
        if not (period > 0 and math.isfinite(period)):
            raise ConfigError(f"rate-limit period must be a positive number of seconds, got {period!r}")
        self.capacity = float(capacity)
        self.rate = self.capacity / period
        self._clock = clock or anyio.current_time
        self._sleep = sleep or anyio.sleep
        self._level = self.capacity
        self._stamp: float | None = None
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        if self._stamp is not None:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` tokens, waiting as needed; more than ``capacity`` waits for a full bucket.
        Returns the amount taken (at most ``capacity``)."""
        amount = min(float(amount), self.capacity)
        async with self._lock:
            self._refill()
            while self._level < amount:
                await self._sleep((amount - self._level) / self.rate)
                self._refill()
            self._level -= amount
        return amount

    def refund(self, amount: float) -> None:
        """Give back ``amount`` tokens taken in excess (the bucket never holds more than ``capacity``)."""
        if amount > 0:
            self._refill()
            self._level = min(self.capacity, self._level + float(amount))


class LimitedModel(ModelWrapper):
    """Caps concurrent calls and paces them client-side.

    Args:
        inner: the model to call.
        max_concurrency: at most this many calls in flight at once (``None``: no cap).
        rpm: at most this many calls per minute, sustained (bursts up to ``rpm``).
        tpm: at most this many tokens per minute. A call reserves :func:`worst_case_tokens` before
            it is sent (``max_tokens`` counts, as providers count it against token limits); when the
            answer reports its input tokens, what the byte-count estimate of the input reserved
            beyond them is given back.

    Each call takes one request and its token estimate; retries inside an adapter are paced by
    its backoff and the server's ``retry-after`` instead.
    """

    def __init__(
        self,
        inner: ClosedModel,
        *,
        max_concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(inner)
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ConfigError(f"max_concurrency must be a positive integer or None, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self._slots = anyio.CapacityLimiter(max_concurrency) if max_concurrency is not None else None
        self._requests = TokenBucket(rpm, clock=clock, sleep=sleep) if rpm is not None else None
        self._tokens = TokenBucket(tpm, clock=clock, sleep=sleep) if tpm is not None else None

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Wait for a free slot, then for the rate limits, then call the wrapped model. (Rate
        tokens taken while waiting for a slot would pile up and go out in one burst.)"""
        if self._slots is None:
            return await self._rate_limited(messages, params)
        async with self._slots:
            return await self._rate_limited(messages, params)

    async def _rate_limited(self, messages: list[Message], params: GenerationParams) -> Completion:
        if self._requests is not None:
            await self._requests.acquire(1)
        if self._tokens is None:
            return await self.inner.generate(messages, params)
        taken = await self._tokens.acquire(worst_case_tokens(messages, params))
        completion = await self.inner.generate(messages, params)
        if completion.usage.input_tokens > 0:
            self._tokens.refund(taken - (completion.usage.input_tokens + params.max_tokens))
        return completion

    def __repr__(self) -> str:
        rpm = self._requests.capacity if self._requests else None
        tpm = self._tokens.capacity if self._tokens else None
        return f"LimitedModel({self.inner!r}, max_concurrency={self.max_concurrency}, rpm={rpm}, tpm={tpm})"


Reply = str | Completion
ModelFunction = Callable[[list[Message], GenerationParams], Reply | Awaitable[Reply]]


class FunctionModel:
    """A closed model whose answers come from a Python function (sync or async).

    The function gets ``(messages, params)`` and returns the answer text or a full
    :class:`Completion`. Text answers get a rough usage (whitespace-separated words) and finish
    reason ``"stop"``. Every call is recorded in :attr:`calls`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, function: ModelFunction, *, name: str = "function:model") -> None:
        if not callable(function):
            raise ConfigError(f"FunctionModel needs a callable, got {type(function).__name__}")
        self.function = function
        self._name = name
        self.calls: list[tuple[list[Message], GenerationParams]] = []
        self.closed = False

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    def describe_request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The generic description plus which function answers (its qualified name and a hash of
        its code), so that two doubles sharing the default name do not share cache entries.
        Functions that differ only in the variables they capture look alike: name them apart."""
        described = generic_request(self._name, messages, params)
        described["function"] = self._identity()
        return described

    def _identity(self) -> str:
        return _function_identity(self.function)

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Call the function and normalise its reply into a :class:`Completion`."""
        self.calls.append((list(messages), params))
        reply = self.function(messages, params)
        if inspect.isawaitable(reply):
            reply = await reply
        if isinstance(reply, Completion):
            return reply
        if not isinstance(reply, str):
            raise ConfigError(
                f"{self._name}: the function must return str or Completion, got {type(reply).__name__}"
            )
        usage = Usage(
            input_tokens=sum(len(m.content.split()) for m in messages),
            output_tokens=len(reply.split()),
        )
        return Completion(text=reply, usage=usage, model=self._name, finish_reason="stop")

    async def aclose(self) -> None:
        """Mark the model closed (there is nothing to release)."""
        self.closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, calls={len(self.calls)})"


def _function_identity(fn: Any) -> str:
    """A stable name for a function across processes: its qualified name and a hash of its code
    (nested code objects by their own hash, not their address); a ``functools.partial`` by its
    function and arguments."""
    if isinstance(fn, functools.partial):
        return f"partial({_function_identity(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None)
    return f"{where}#{_code_digest(code)[:16]}" if code is not None else where


def _code_digest(code: types.CodeType) -> str:
    parts = [code.co_code]
    for const in code.co_consts:
        parts.append(
            _code_digest(const).encode() if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


class TestModel(FunctionModel):
    """A closed model that always answers ``answer`` (after ``delay`` seconds, if any).

    ``finish_reason`` and ``usage`` override what the completion reports, e.g.
    ``TestModel("cut", finish_reason="length")`` to exercise truncation handling.
    """

    __test__ = False

    def __init__(
        self,
        answer: str = "test answer",
        *,
        name: str = "test:model",
        finish_reason: str | None = "stop",
        usage: Usage | None = None,
        delay: float = 0.0,
    ) -> None:
        async def reply(messages: list[Message], params: GenerationParams) -> Completion:
            if delay:
                await anyio.sleep(delay)
            used = usage or Usage(
                input_tokens=sum(len(m.content.split()) for m in messages),
                output_tokens=len(answer.split()),
            )
            return Completion(text=answer, usage=used, model=name, finish_reason=finish_reason)

        super().__init__(reply, name=name)
        self.answer = answer
        self._reply = {
            "answer": answer,
            "finish_reason": finish_reason,
            "usage": usage.model_dump() if usage is not None else None,
        }

    def _identity(self) -> str:
        return json.dumps(self._reply, sort_keys=True)

"""The one retry layer every HTTP adapter goes through (tenacity; the SDKs' own retries are off).

An adapter performs one HTTP attempt at a time and classifies its failure: a transient failure is
wrapped in :class:`RetryableFailure` (optionally with the server's ``Retry-After`` hint), anything
else is raised as a final :class:`~attribsdk.errors.AdapterError`. :func:`call_with_retries` then
retries transient failures with jittered exponential backoff, honours the server's hint (capped),
enforces a per-call deadline and counts every attempt.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from ..errors import AdapterError, ConfigError, RequestTimeoutError
from .base import Usage

__all__ = ["RetryPolicy", "RetryableFailure", "call_with_retries", "is_retryable_status", "parse_retry_after"]

logger = logging.getLogger("attribsdk.adapters")

T = TypeVar("T")

#: HTTP statuses that are retried: request timeout, conflict, rate limit and every 5xx (529 included).
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status: int) -> bool:
    """True for 408, 409, 429 and every 5xx status."""
    return status in RETRYABLE_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried. All durations are in seconds.

    The wait before retry ``n`` (1-based) is ``min(max_backoff, initial_backoff * 2**(n-1))`` plus a
    uniform jitter in ``[0, initial_backoff]``, unless the server sent ``retry-after-ms`` or
    ``retry-after``, which is honoured up to ``max_retry_after``. ``deadline`` bounds the whole call
    (every attempt and every wait); ``None`` means no deadline beyond ``max_attempts``.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    deadline: float | None = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for field in ("initial_backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, field)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{field} must be a finite number of seconds >= 0, got {value!r}")
        if self.deadline is not None and not (self.deadline > 0):
            raise ConfigError(f"deadline must be > 0 seconds or None, got {self.deadline!r}")


class RetryableFailure(Exception):
    """Signal from an adapter: this attempt failed transiently with ``error``; try again.

    ``retry_after`` is the server's requested wait in seconds (already parsed), or ``None``.
    ``billed`` is the token usage a discarded answer reported (a 200 response whose body did not
    fit the schema but whose usage could be read): the provider probably billed it.
    """

    def __init__(
        self, error: AdapterError, *, retry_after: float | None = None, billed: Usage | None = None
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.billed = billed


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``retry-after`` (delta seconds or HTTP date).

    Returns ``None`` when neither header is present or parseable, never a negative number.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, value) if math.isfinite(value) else None


class _Wait:
    """tenacity wait: the server's hint when there is one, else jittered exponential backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        # Jitter after the cap, so clients at max_backoff do not retry in lockstep.
        exponential = wait_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff)
        self._backoff = exponential + wait_random(0, policy.initial_backoff)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableFailure) and exc.retry_after is not None:
            return min(exc.retry_after, self._policy.max_retry_after)
        return float(self._backoff(state))


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, *, label: str
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds, fails permanently, or the policy gives up.

    Returns ``(result, attempts)``. On failure the final :class:`AdapterError` is raised with its
    ``attempts`` set; a passed deadline raises :class:`RequestTimeoutError`. ``label`` names the
    model in log messages (it must not contain secrets).
    """
    attempts = 0

    async def counted() -> T:
        nonlocal attempts
        attempts += 1
        return await attempt()

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = exc.error.message if isinstance(exc, RetryableFailure) else repr(exc)
        logger.info(
            "%s: attempt %d/%d failed (%s); retrying in %.3f s",
            label,
            state.attempt_number,
            policy.max_attempts,
            reason,
            state.upcoming_sleep,
        )

    stop = stop_after_attempt(policy.max_attempts)
    if policy.deadline is not None:
        stop = stop | stop_before_delay(policy.deadline)  # type: ignore[assignment]
    retrying = AsyncRetrying(
        stop=stop,
        wait=_Wait(policy),
        retry=retry_if_exception_type(RetryableFailure),
        sleep=anyio.sleep,
        reraise=True,
        before_sleep=log_retry,
    )
    try:
        with anyio.fail_after(policy.deadline):
            result: T = await retrying(counted)
    except RetryableFailure as exc:
        error = exc.error
        error.attempts = attempts
        error.message = f"{error.message} (gave up after {attempts} attempt{'s' * (attempts != 1)})"
        error.args = (error.message,)
        raise error from None  # the SDK's exception is left out: it may quote the key
    except AdapterError as exc:
        exc.attempts = attempts
        raise
    except TimeoutError:
        raise RequestTimeoutError(
            f"{label}: no answer within the per-call deadline of {policy.deadline} s "
            f"({attempts} attempt{'s' * (attempts != 1)})",
            attempts=attempts,
        ) from None
    return result, attempts

"""The error hierarchy. Every error the SDK raises on purpose derives from :class:`AttribError`.

Errors that interrupt work after something was already computed or paid for carry it in
``partial`` so nothing is lost (for example the closed answer when scoring fails later).

:class:`InputError` and :class:`ConfigError` deliberately do not derive from ``ValueError``:
pydantic wraps ``ValueError`` raised in validators into its own ``ValidationError``, and these
errors must reach the caller with their own type, also from model constructors.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = [
    "APIStatusError",
    "AdapterError",
    "AttribError",
    "AuthenticationError",
    "BudgetExceeded",
    "CacheUnavailableError",
    "ConfigError",
    "ContextWindowError",
    "FeatureError",
    "InputError",
    "InvalidResponseError",
    "LogprobsUnavailableError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RateLimitError",
    "RequestTimeoutError",
    "ScoringError",
    "TransportError",
    "TruncatedOutputError",
]


class AttribError(Exception):
    """Base class of every error raised by attribsdk.

    ``partial`` holds whatever was already computed (or paid for) when the error happened,
    e.g. ``{"completion": ..., "cost": ...}`` (the closed answer and its cost report; other keys:
    ``"report"``; a failed closed loop's ``"answers"``, ``"masks"`` and ``"answers_received"``);
    it is empty when nothing was.
    """

    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partial: dict[str, Any] = dict(partial or {})


class InputError(AttribError):
    """A user-supplied input is malformed (empty prompt, wrong type, out-of-range option)."""


class FeatureError(InputError):
    """Features could not be built from the input (no features, bad spans, unknown granularity)."""


class ConfigError(AttribError):
    """A configuration value is invalid or inconsistent (unknown method, sampler, target, kernel)."""


class CacheUnavailableError(ConfigError, ConnectionError):
    """The response cache could not be used: its server (e.g. Redis) could not be reached, refused
    the credentials or failed a command (the URL in the message has its password redacted), or
    its directory cannot be created or opened."""


class ModelNotFoundError(AttribError, LookupError):
    """A model name, path or packaged weight file could not be found."""


class ModelLoadError(AttribError, RuntimeError):
    """A model was found but could not be loaded."""


class ContextWindowError(InputError):
    """A prompt plus the answer does not fit the surrogate's context window."""

    def __init__(self, message: str, *, n_tokens: int, limit: int, partial: dict[str, Any] | None = None):
        super().__init__(message, partial=partial)
        self.n_tokens = n_tokens
        self.limit = limit


class ScoringError(AttribError, RuntimeError):
    """The surrogate failed while scoring perturbations."""


class AdapterError(AttribError, RuntimeError):
    """A closed-model adapter failed (bad response, refused request, transport failure).

    ``attempts`` is the number of HTTP attempts made before giving up (0 when none was made).
    When the provider did answer (and probably billed) before the error was raised, the answer is
    in ``partial["completion"]`` so that cost accounting still sees it.

    Subclasses::

        AdapterError
        ├── APIStatusError            the provider answered with an HTTP error status
        │   ├── AuthenticationError   401/403: bad or missing key (never retried)
        │   └── RateLimitError        429 that outlasted every retry
        ├── TransportError            connection failed or dropped, after retries
        │   └── RequestTimeoutError   an attempt timed out, or the per-call deadline passed
        ├── InvalidResponseError      the response was not valid JSON or not the expected schema
        ├── TruncatedOutputError      the answer hit ``max_tokens`` and truncation was not allowed
        └── LogprobsUnavailableError  log-probabilities were asked for and the model cannot give them
    """

    def __init__(
        self,
        message: str,
        *,
        partial: dict[str, Any] | None = None,
        attempts: int = 0,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, partial=partial)
        self.attempts = attempts
        self.provider = provider


class APIStatusError(AdapterError):
    """The provider answered with an HTTP error status (``status_code``) that was not retried away."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        partial: dict[str, Any] | None = None,
        attempts: int = 0,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, partial=partial, attempts=attempts, provider=provider)
        self.status_code = status_code
        self.request_id = request_id


class AuthenticationError(APIStatusError):
    """The provider rejected the credentials (HTTP 401/403). Never retried."""


class RateLimitError(APIStatusError):
    """The provider kept answering HTTP 429 until the retry policy gave up."""


class TransportError(AdapterError):
    """The connection failed or was dropped before a complete response arrived, after retries."""


class RequestTimeoutError(TransportError):
    """An HTTP attempt timed out and retries ran out, or the per-call deadline passed."""


class InvalidResponseError(AdapterError):
    """The provider's response was not valid JSON or did not have the expected shape."""


class TruncatedOutputError(AdapterError):
    """The answer stopped at ``max_tokens`` (finish reason ``length``) and truncation was not allowed.

    The truncated completion is in ``partial["completion"]``; it is never cached.
    """


class LogprobsUnavailableError(AdapterError):
    """Token log-probabilities were requested but the model or provider does not return them."""


class BudgetExceeded(AttribError):
    """A call was refused because it could exceed the budget; nothing was sent.

    ``spent_usd`` and ``calls`` are what was spent and made before the refusal, ``estimate_usd``
    the worst-case cost of the refused call; the full cost report is in ``partial["report"]``.
    """

    def __init__(
        self,
        message: str,
        *,
        spent_usd: float,
        calls: int,
        estimate_usd: float | None,
        max_usd: float | None,
        max_calls: int | None,
        partial: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, partial=partial)
        self.spent_usd = spent_usd
        self.calls = calls
        self.estimate_usd = estimate_usd
        self.max_usd = max_usd
        self.max_calls = max_calls


def callback_failed(
    callback: str, errors: list[Exception], calls: int, kept: str, partial: dict[str, Any]
) -> ConfigError:
    """The error raised after a batch whose user callback (``on_result``, ``on_row``) raised: the
    batch went on, so ``partial`` carries everything it produced."""
    first = errors[0]
    error = ConfigError(
        f"{callback} raised {type(first).__name__}: {first} ({len(errors)} of {calls} calls); "
        f"{kept}: see partial[{next(iter(partial))!r}]",
        partial=partial,
    )
    error.__cause__ = first
    return error


def raise_keeping(exc: BaseException, what: str, **kept: Any) -> NoReturn:
    """Raise ``exc`` (being handled) so that what was already computed or paid for (``kept``) is not
    lost: an :class:`AttribError` itself, with ``kept`` added to its ``partial`` (entries it already
    has win), any other exception as a :class:`ScoringError` caused by it and carrying ``kept``
    (message ``"<what>: <type>: <exc>"``, or ``"<type>: <exc>"`` when ``what`` is empty)."""
    if isinstance(exc, AttribError):
        for name, value in kept.items():
            exc.partial.setdefault(name, value)
        raise exc
    detail = f"{type(exc).__name__}: {exc}"
    raise ScoringError(f"{what}: {detail}" if what else detail, partial=kept) from exc

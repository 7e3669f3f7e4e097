"""Pieces shared by the HTTP adapters: credentials, base URLs, error classification, JSON parsing,
and :class:`SDKModel`, the skeleton both official-SDK adapters fill in."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from .._strategy import validation_problems
from ..errors import (
    AdapterError,
    APIStatusError,
    AuthenticationError,
    ConfigError,
    InvalidResponseError,
    LogprobsUnavailableError,
    RateLimitError,
    RequestTimeoutError,
    TransportError,
    TruncatedOutputError,
)
from ._retry import RetryableFailure, RetryPolicy, call_with_retries, is_retryable_status, parse_retry_after
from .base import Completion, GenerationParams, Message, MissingUsageWarning, Usage

logger = logging.getLogger("attribsdk.adapters")

__all__ = [
    "SDKErrors",
    "SDKModel",
    "check_base_url",
    "complete_with_retries",
    "missing_usage",
    "parse_json_object",
    "readable_usage",
    "redact",
    "resolve_api_key",
    "sdk_failure",
    "status_failure",
]


def resolve_api_key(
    api_key: str | SecretStr | None, api_key_env: str | None, *, required: bool, label: str
) -> SecretStr | None:
    """The API key from ``api_key`` or else the environment variable ``api_key_env``.

    Raises :class:`ConfigError` when ``required`` and neither gives a non-empty key, or when
    ``api_key_env`` is named but unset (naming a variable means the caller expects a key there).
    Surrounding whitespace is dropped (a key read from a file ends with a newline); a key with
    whitespace or control characters inside is refused, without quoting it: sent as a header it
    would fail as a transport error, and the key would show in that error.
    """
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{label}: api_key must be a string or SecretStr, got {type(api_key).__name__}")
    if api_key and api_key.strip():
        return _checked_key(api_key, label, "api_key")
    if api_key_env:
        value = os.environ.get(api_key_env, "")
        if value.strip():
            return _checked_key(value, label, f"${api_key_env}")
        raise ConfigError(
            f"{label}: no API key; the environment variable {api_key_env} is unset or empty "
            "(set it, or pass api_key=...)"
        )
    if required:
        raise ConfigError(f"{label}: no API key given (pass api_key=... or api_key_env=...)")
    return None


def _checked_key(key: str, label: str, source: str) -> SecretStr:
    key = key.strip()
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(
            f"{label}: the API key in {source} contains whitespace or control characters "
            f"(length {len(key)}); it is not sent"
        )
    return SecretStr(key)


def check_base_url(url: str, *, label: str) -> str:
    """Validate an ``http(s)`` base URL without credentials in it; returns it without a trailing ``/``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{label}: base_url must be a non-empty URL such as http://127.0.0.1:8000/v1")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{label}: base_url {url!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(f"{label}: base_url must not contain credentials; pass the key via api_key_env")
    if parts.query or parts.fragment:
        raise ConfigError(f"{label}: base_url must not contain a query string or fragment")
    return url.strip().rstrip("/")


def redact(text: str, secret: SecretStr | None) -> str:
    """``text`` with every occurrence of the secret replaced by ``***``."""
    if secret is None:
        return text
    value = secret.get_secret_value()
    return text.replace(value, "***") if value else text


def _error_message(body: object, fallback: str) -> str:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return fallback


def status_failure(
    *,
    status: int,
    headers: Mapping[str, str],
    body: object,
    fallback_message: str,
    label: str,
    provider: str,
    request_id: str | None,
    secret: SecretStr | None,
    logprobs_requested: bool = False,
) -> AdapterError | RetryableFailure:
    """Classify an HTTP error status: a :class:`RetryableFailure` to retry, or a final error to raise.

    408/409/429/5xx are retried unless the server says ``x-should-retry: false``; every other status
    is final. 401/403 give :class:`AuthenticationError`; a 400 about logprobs when they were
    requested gives :class:`LogprobsUnavailableError`.
    """
    detail = redact(_error_message(body, fallback_message), secret)
    message = f"{label}: HTTP {status}: {detail}"
    should_retry = {k.lower(): v for k, v in headers.items()}.get("x-should-retry", "").lower()
    retryable = (
        is_retryable_status(status) if should_retry not in ("true", "false") else should_retry == "true"
    )
    if status == 429:
        error: AdapterError = RateLimitError(
            message, status_code=status, request_id=request_id, provider=provider
        )
    elif status in (401, 403):
        hint = " (check the API key and its permissions)"
        return AuthenticationError(
            message + hint, status_code=status, request_id=request_id, provider=provider
        )
    elif logprobs_requested and status in (400, 422) and "logprob" in detail.lower():
        return LogprobsUnavailableError(
            f"{label}: the model refused to return log-probabilities: {detail}", provider=provider
        )
    else:
        error = APIStatusError(message, status_code=status, request_id=request_id, provider=provider)
    if retryable:
        return RetryableFailure(error, retry_after=parse_retry_after(headers))
    return error


@dataclass(frozen=True)
class SDKErrors:
    """An official SDK's exception classes (``timeout`` must subclass ``connection``)."""

    timeout: type[Exception]
    connection: type[Exception]
    status: type[Exception]
    base: type[Exception]


def sdk_failure(
    exc: Exception,
    errors: SDKErrors,
    *,
    label: str,
    provider: str,
    timeout: float | None,
    secret: SecretStr | None,
    logprobs_requested: bool = False,
) -> AdapterError | RetryableFailure:
    """Translate an SDK exception: timeouts and connection failures become retryable, HTTP
    statuses are classified by :func:`status_failure`, anything else is a final :class:`AdapterError`.
    Messages never contain the key."""
    if isinstance(exc, errors.timeout):
        return RetryableFailure(
            RequestTimeoutError(f"{label}: an attempt got no answer within {timeout} s", provider=provider)
        )
    if isinstance(exc, errors.connection):
        return RetryableFailure(
            TransportError(f"{label}: connection failed ({redact(str(exc), secret)})", provider=provider)
        )
    if isinstance(exc, errors.status):
        err: Any = exc
        return status_failure(
            status=err.status_code,
            headers=err.response.headers,
            body=err.body,
            fallback_message=err.message,
            label=label,
            provider=provider,
            request_id=err.request_id,
            secret=secret,
            logprobs_requested=logprobs_requested,
        )
    return AdapterError(f"{label}: {redact(str(exc), secret)}", provider=provider)


async def complete_with_retries(
    attempt: Callable[[], Awaitable[Completion]],
    retry: RetryPolicy,
    *,
    label: str,
    provider: str,
    allow_truncated: bool,
    max_tokens: int,
) -> Completion:
    """Run ``attempt`` under ``retry``, record the HTTP attempts in the completion, and refuse an
    answer cut at ``max_tokens`` (:class:`TruncatedOutputError`, answer kept in ``partial``) unless
    ``allow_truncated``.

    The usage that discarded answers reported (:attr:`RetryableFailure.billed`, one per attempt)
    goes to the completion's ``discarded``; when the call fails, to the completion the error
    carries, or else to the error's ``partial["discarded"]``. The ledger prices every answer the
    provider sent, kept or not.
    """
    discarded: list[Usage] = []

    async def tracked() -> Completion:
        try:
            return await attempt()
        except RetryableFailure as failure:
            if failure.billed is not None:
                discarded.append(failure.billed)
            raise

    try:
        completion, attempts = await call_with_retries(tracked, retry, label=label)
    except AdapterError as exc:
        if discarded:
            answered = exc.partial.get("completion")
            if isinstance(answered, Completion):  # e.g. a failed Responses answer, billed too
                exc.partial["completion"] = answered.model_copy(update={"discarded": discarded})
            else:
                exc.partial["discarded"] = discarded
        raise
    completion = completion.model_copy(update={"attempts": attempts, "discarded": discarded})
    if completion.finish_reason == "length" and not allow_truncated:
        raise TruncatedOutputError(
            f"{label}: the answer was cut at max_tokens={max_tokens}; raise max_tokens "
            "or allow truncated answers",
            partial={"completion": completion},
            attempts=attempts,
            provider=provider,
        )
    return completion


def parse_json_object(text: str, *, label: str, provider: str) -> dict[str, Any]:
    """Parse a response body that must be one JSON object; a malformed one is a retryable failure."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        error = InvalidResponseError(
            f"{label}: the response body is not valid JSON ({exc.__class__.__name__}: {exc})",
            provider=provider,
        )
        raise RetryableFailure(error) from exc
    if not isinstance(data, dict):
        error = InvalidResponseError(
            f"{label}: expected a JSON object, got {type(data).__name__}", provider=provider
        )
        raise RetryableFailure(error)
    return data


UsageT = TypeVar("UsageT", bound=BaseModel)


def readable_usage(
    data: Mapping[str, Any], schema: type[UsageT], convert: Callable[[UsageT], Usage]
) -> Usage | None:
    """The usage of a response whose body did not fit the schema: ``data["usage"]`` validated on
    its own against ``schema`` and converted, or ``None`` when it is missing or unreadable too."""
    try:
        return convert(schema.model_validate(data.get("usage")))
    except ValidationError:
        return None


class _Closable(Protocol):
    async def close(self) -> None: ...


_logged_usage: set[str] = set()


def missing_usage(label: str) -> Usage:
    """Zero usage for an answer that carried none, with a :class:`MissingUsageWarning` (logged
    once per model and process). The answer itself is kept: re-sending a call that was answered (and
    possibly billed) only because its usage is missing would pay twice."""
    message = f"{label}: the response carries no token usage; its tokens and cost count as 0"
    warnings.warn(message, MissingUsageWarning, stacklevel=2)  # the warnings filter dedupes
    if label not in _logged_usage:
        _logged_usage.add(label)
        logger.warning(message)
    return Usage()


ClientT = TypeVar("ClientT", bound=_Closable)
RequestT = TypeVar("RequestT")


class SDKModel(Generic[ClientT, RequestT]):
    """The part of an official-SDK adapter that does not depend on the API's shape.

    It validates the common constructor arguments, holds the key as a :class:`SecretStr`, creates the
    SDK client lazily (its own retries off), runs each call under :func:`complete_with_retries` and
    closes the client. A subclass sets :attr:`provider` and :attr:`name` and supplies three pieces:
    :meth:`_new_client`, :meth:`_request` (the per-call request, built and checked once, before
    anything is sent) and :meth:`_attempt` (one HTTP attempt).
    """

    model: str
    base_url: str | None
    timeout: float
    retry: RetryPolicy
    allow_truncated: bool

    def _configure(
        self,
        model: str,
        *,
        label: Callable[[str], str],
        example: str,
        base_url: str | None,
        api_key: str | SecretStr | None,
        api_key_env: str | None,
        key_required: bool,
        timeout: float,
        retry: RetryPolicy | None,
        allow_truncated: bool,
        http_client: Any,
    ) -> str:
        """Validate and store the shared arguments; returns the error label (``label(model)``)."""
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{type(self).__name__}: model must be a non-empty string such as {example!r}")
        self.model = model.strip()
        where = label(self.model)
        self.base_url = check_base_url(base_url, label=where) if base_url is not None else None
        if not (timeout > 0):
            raise ConfigError(f"{where}: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.allow_truncated = allow_truncated
        self._api_key = resolve_api_key(api_key, api_key_env, required=key_required, label=where)
        self._http_client = http_client
        self._sdk: ClientT | None = None
        return where

    @property
    def name(self) -> str:
        """The model string, e.g. ``anthropic:claude-haiku-4-5``."""
        raise NotImplementedError

    @property
    def provider(self) -> str:
        """The provider label carried by errors and cache keys."""
        raise NotImplementedError

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """One completion; retried per :attr:`retry`; ``Completion.attempts`` counts HTTP attempts."""
        request = self._request(messages, params)

        async def attempt() -> Completion:
            return await self._attempt(request, params)

        return await complete_with_retries(
            attempt,
            self.retry,
            label=self.name,
            provider=self.provider,
            allow_truncated=self.allow_truncated,
            max_tokens=params.max_tokens,
        )

    async def aclose(self) -> None:
        """Close the SDK client (and the ``http_client`` given to it)."""
        sdk, self._sdk = self._sdk, None
        if sdk is not None:
            await sdk.close()

    # ------------------------------------------------------------------ for subclasses
    def _client(self) -> ClientT:
        if self._sdk is None:
            self._sdk = self._new_client()
        return self._sdk

    def _new_client(self) -> ClientT:
        raise NotImplementedError

    def _request(self, messages: list[Message], params: GenerationParams) -> RequestT:
        raise NotImplementedError

    async def _attempt(self, request: RequestT, params: GenerationParams) -> Completion:
        raise NotImplementedError

    def _sdk_failure(
        self, exc: Exception, errors: SDKErrors, *, logprobs_requested: bool = False
    ) -> AdapterError | RetryableFailure:
        """:func:`sdk_failure` with this adapter's label, provider, timeout and key."""
        return sdk_failure(
            exc,
            errors,
            label=self.name,
            provider=self.provider,
            timeout=self.timeout,
            secret=self._api_key,
            logprobs_requested=logprobs_requested,
        )

    def _invalid(self, exc: ValidationError, billed: Usage | None = None) -> RetryableFailure:
        """A response that does not fit the expected schema: retryable, the first problems named.

        ``billed``: the usage the discarded response reported, when it could be read (see
        :func:`readable_usage`)."""
        problems = validation_problems(exc, limit=5)
        return RetryableFailure(
            InvalidResponseError(
                f"{self.name}: unexpected response shape ({problems})", provider=self.provider
            ),
            billed=billed,
        )

"""Anthropic closed models through the Messages API (``"anthropic:claude-haiku-4-5"``).

The official ``anthropic.AsyncAnthropic`` client does the HTTP with its own retries off
(``max_retries=0``). Sampling parameters (``temperature``, ``top_p``) travel in ``extra_body`` as the
current SDK requires. Anthropic returns no token log-probabilities, so asking for them is an error
raised before anything is sent. ``seed`` has no Anthropic equivalent and is not sent.
"""

from __future__ import annotations

from typing import Any

import anthropic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ..errors import (
    InputError,
    LogprobsUnavailableError,
)
from ._common import (
    SDKErrors,
    SDKModel,
    missing_usage,
    parse_json_object,
    readable_usage,
)
from ._retry import RetryPolicy
from .base import Completion, GenerationParams, Message, Usage

__all__ = ["AnthropicModel"]

#: Body keys sent through ``extra_body`` rather than as SDK arguments.
_SAMPLING_KEYS = ("temperature", "top_p")

#: Anthropic stop reasons → the normalised finish reasons used by :class:`Completion`.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}

_SDK_ERRORS = SDKErrors(
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
    base=anthropic.AnthropicError,
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Block(_Lenient):
    type: str
    text: str | None = None


class _Usage(_Lenient):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _MessageResponse(_Lenient):
    model: str | None = None
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage | None = None


def _usage(u: _Usage) -> Usage:
    cache_read = u.cache_read_input_tokens or 0
    cache_write = u.cache_creation_input_tokens or 0
    return Usage(
        # Anthropic counts cached reads and writes outside input_tokens; ours is the total.
        input_tokens=u.input_tokens + cache_read + cache_write,
        output_tokens=u.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


class AnthropicModel(SDKModel[anthropic.AsyncAnthropic, dict[str, Any]]):
    """A Claude model behind the Anthropic Messages API.

    Args:
        model: the model name, e.g. ``"claude-haiku-4-5"``.
        base_url: API root without ``/v1`` (a proxy or a test server); default Anthropic's.
        api_key: the key itself (``str`` or ``SecretStr``); wins over ``api_key_env``.
        api_key_env: environment variable holding the key (default ``ANTHROPIC_API_KEY``).
        timeout: seconds allowed for one HTTP attempt.
        retry: retry policy (attempts, backoff, per-call deadline).
        allow_truncated: return answers cut at ``max_tokens`` instead of raising
            :class:`~attribsdk.errors.TruncatedOutputError`.
        http_client: an ``httpx2.AsyncClient`` for the SDK; closed by :meth:`aclose`.

    System messages are joined into the ``system`` field. Use one instance inside one event loop.
    """

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        api_key_env: str | None = "ANTHROPIC_API_KEY",
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        allow_truncated: bool = False,
        http_client: Any = None,
    ) -> None:
        self._configure(
            model,
            label=lambda m: f"anthropic:{m}",
            example="claude-haiku-4-5",
            base_url=base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            key_required=True,
            timeout=timeout,
            retry=retry,
            allow_truncated=allow_truncated,
            http_client=http_client,
        )

    @property
    def name(self) -> str:
        """``anthropic:<model>``."""
        return f"anthropic:{self.model}"

    def __repr__(self) -> str:
        return f"AnthropicModel(name={self.name!r}, timeout={self.timeout})"

    def describe_request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The final request (``extra_body`` merged in) as JSON-able data, for cache keys (a
        request this adapter refuses is refused here too, before any cache lookup)."""
        self._refuse_logprobs(params)
        return {"provider": self.provider, "endpoint": "messages", "body": self._body(messages, params)}

    def _refuse_logprobs(self, params: GenerationParams) -> None:
        if params.logprobs:
            raise LogprobsUnavailableError(
                f"{self.name}: Anthropic models do not return token log-probabilities; "
                "use a method that needs only the answer text",
                provider=self.provider,
            )

    # ------------------------------------------------------------------ internals
    def _new_client(self) -> anthropic.AsyncAnthropic:
        assert self._api_key is not None
        return anthropic.AsyncAnthropic(
            api_key=self._api_key.get_secret_value(),
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout,
            http_client=self._http_client,
        )

    def _request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        self._refuse_logprobs(params)
        body = self._body(messages, params)
        kwargs = {k: v for k, v in body.items() if k not in _SAMPLING_KEYS}
        kwargs["extra_body"] = {k: body[k] for k in _SAMPLING_KEYS if k in body}
        return kwargs

    def _body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
        if not turns:
            raise InputError(f"{self.name}: the Messages API needs at least one user message")
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens, "messages": turns}
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        return body

    async def _attempt(self, request: dict[str, Any], params: GenerationParams) -> Completion:
        client = self._client()
        try:
            raw = await client.messages.with_raw_response.create(**request)
            text = (await raw.read()).decode("utf-8", errors="replace")
        except anthropic.AnthropicError as exc:
            # Not chained: the SDK's exception may quote the request's headers (the key).
            raise self._sdk_failure(exc, _SDK_ERRORS) from None
        data = parse_json_object(text, label=self.name, provider=self.provider)
        try:
            parsed = _MessageResponse.model_validate(data)
        except ValidationError as exc:
            raise self._invalid(exc, readable_usage(data, _Usage, _usage)) from None
        usage = _usage(parsed.usage) if parsed.usage is not None else missing_usage(self.name)
        reason = parsed.stop_reason
        return Completion(
            text="".join(b.text or "" for b in parsed.content if b.type == "text"),
            usage=usage,
            model=parsed.model or self.model,
            finish_reason=_FINISH.get(reason, reason) if reason is not None else None,
            raw=data,
        )

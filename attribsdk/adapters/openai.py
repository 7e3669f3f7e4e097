"""OpenAI and OpenAI-compatible closed models (Chat Completions, or the Responses API where needed).

Model strings::

    "openai:gpt-4o-mini"                                     api.openai.com, key from OPENAI_API_KEY
    "openai-compatible:llama3.1@http://127.0.0.1:8000/v1"    vLLM, Ollama, llama.cpp server, hosted APIs

The official ``openai.AsyncOpenAI`` client does the HTTP with its own retries off
(``max_retries=0``): :mod:`attribsdk.adapters._retry` is the only retry layer. The key lives in a
:class:`~pydantic.SecretStr` and never reaches reprs, logs, errors, cache entries or results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .._strategy import check_options
from ..errors import (
    AdapterError,
    ConfigError,
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
from .base import Completion, GenerationParams, Message, TokenLogprob, Usage

__all__ = ["RESPONSES_ONLY_PREFIXES", "OpenAIModel"]

Api = Literal["chat", "responses"]

#: Model-name prefixes served only by the Responses API (``api=`` overrides the choice).
RESPONSES_ONLY_PREFIXES: tuple[str, ...] = (
    "o1-pro",
    "o3-pro",
    "o3-deep-research",
    "o4-mini-deep-research",
    "gpt-5-pro",
    "codex-mini",
    "computer-use-preview",
)

_SPEC = re.compile(r"^(?P<model>.+)@(?P<url>https?://.+)$")

_SDK_ERRORS = SDKErrors(
    timeout=openai.APITimeoutError,
    connection=openai.APIConnectionError,
    status=openai.APIStatusError,
    base=openai.OpenAIError,
)


# ---------------------------------------------------------------- response schemas (the subset we read)
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TopLogprob(_Lenient):
    token: str
    logprob: float


class _TokenLogprob(_Lenient):
    token: str
    logprob: float
    top_logprobs: list[_TopLogprob] = Field(default_factory=list)


class _ChoiceLogprobs(_Lenient):
    content: list[_TokenLogprob] | None = None


class _ChatMessage(_Lenient):
    content: str | None = None
    refusal: str | None = None


class _Choice(_Lenient):
    message: _ChatMessage
    finish_reason: str | None = None
    logprobs: _ChoiceLogprobs | None = None


class _PromptDetails(_Lenient):
    cached_tokens: int | None = None


class _CompletionDetails(_Lenient):
    reasoning_tokens: int | None = None


class _ChatUsage(_Lenient):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _ChatResponse(_Lenient):
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    usage: _ChatUsage | None = None
    system_fingerprint: str | None = None


class _OutputContent(_Lenient):
    type: str
    text: str | None = None
    refusal: str | None = None
    logprobs: list[_TokenLogprob] | None = None


class _OutputItem(_Lenient):
    type: str
    content: list[_OutputContent] | None = None


class _InputDetails(_Lenient):
    cached_tokens: int | None = None


class _OutputDetails(_Lenient):
    reasoning_tokens: int | None = None


class _ResponsesUsage(_Lenient):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _IncompleteDetails(_Lenient):
    reason: str | None = None


class _ResponsesResponse(_Lenient):
    model: str | None = None
    status: str | None = None
    output: list[_OutputItem]
    usage: _ResponsesUsage | None = None
    incomplete_details: _IncompleteDetails | None = None
    error: dict[str, Any] | None = None


def _chat_usage(u: _ChatUsage) -> Usage:
    # OpenAI counts cached tokens inside prompt_tokens, as Usage does.
    return Usage(
        input_tokens=u.prompt_tokens,
        output_tokens=u.completion_tokens,
        cache_read_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
        reasoning_tokens=(u.completion_tokens_details.reasoning_tokens or 0)
        if u.completion_tokens_details
        else 0,
    )


def _responses_usage(u: _ResponsesUsage) -> Usage:
    return Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=(u.input_tokens_details.cached_tokens or 0) if u.input_tokens_details else 0,
        reasoning_tokens=(u.output_tokens_details.reasoning_tokens or 0) if u.output_tokens_details else 0,
    )


def _logprobs(items: Sequence[_TokenLogprob]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=t.token, logprob=t.logprob, top=tuple((a.token, a.logprob) for a in t.top_logprobs)
        )
        for t in items
    ]


def _chat_finish_reason(reason: str | None, refused: bool) -> str | None:
    return "refusal" if refused else reason


class OpenAIModel(SDKModel[openai.AsyncOpenAI, dict[str, Any]]):
    """A model behind the OpenAI Chat Completions (or Responses) API.

    Args:
        model: the provider's model name, e.g. ``"gpt-4o-mini"``.
        base_url: API root including ``/v1``; required for OpenAI-compatible servers. Must not hold
            credentials.
        api_key: the key itself (``str`` or ``SecretStr``); wins over ``api_key_env``.
        api_key_env: environment variable holding the key. Default ``OPENAI_API_KEY`` for OpenAI;
            for compatible servers no key is needed unless this is given.
        compatible: an OpenAI-compatible server rather than OpenAI itself. Its base URL is part of
            :attr:`name` and of cache keys, and it is sent ``max_tokens`` (not
            ``max_completion_tokens``).
        api: ``"chat"`` or ``"responses"``; by default ``"responses"`` for the models in
            :data:`RESPONSES_ONLY_PREFIXES` and ``"chat"`` otherwise.
        timeout: seconds allowed for one HTTP attempt.
        retry: retry policy (attempts, backoff, per-call deadline).
        allow_truncated: return answers cut at ``max_tokens`` instead of raising
            :class:`~attribsdk.errors.TruncatedOutputError`.
        http_client: an ``httpx2.AsyncClient`` for the SDK (proxies, custom TLS); closed by :meth:`aclose`.

    Use one instance inside one event loop; :meth:`aclose` it when done.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        api_key_env: str | None = None,
        compatible: bool = False,
        api: Api | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        allow_truncated: bool = False,
        http_client: Any = None,
    ) -> None:
        self.compatible = compatible
        label = self._configure(
            model,
            label=lambda m: f"openai-compatible:{m}" if compatible else f"openai:{m}",
            example="gpt-4o-mini",
            base_url=base_url,
            api_key=api_key,
            api_key_env="OPENAI_API_KEY" if api_key_env is None and not compatible else api_key_env,
            key_required=not compatible,
            timeout=timeout,
            retry=retry,
            allow_truncated=allow_truncated,
            http_client=http_client,
        )
        if compatible and base_url is None:
            raise ConfigError(
                f"{label}: an OpenAI-compatible model needs base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        if api is not None and api not in ("chat", "responses"):
            raise ConfigError(f"{label}: api must be 'chat' or 'responses', got {api!r}")
        self.api: Api = api or (
            "responses" if self.model.lower().startswith(RESPONSES_ONLY_PREFIXES) else "chat"
        )

    # ------------------------------------------------------------------ construction from strings
    @classmethod
    def compatible_from_spec(cls, spec: str, **options: Any) -> OpenAIModel:
        """Build from ``"<model>@<base_url>"`` (the part after ``openai-compatible:``)."""
        match = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
        if match is None:
            raise ConfigError(
                f"openai-compatible model strings look like 'openai-compatible:<model>@<base_url>', "
                f"e.g. 'openai-compatible:llama3.1@http://127.0.0.1:8000/v1'; got {spec!r}"
            )
        if "base_url" in options:
            raise ConfigError("give the base URL either in the model string or as base_url=, not both")
        check_options(cls, {**options, "base_url": None, "compatible": True}, f"openai-compatible:{spec}")
        return cls(match["model"], base_url=match["url"], compatible=True, **options)

    # ------------------------------------------------------------------ ClosedModel
    @property
    def name(self) -> str:
        """``openai:<model>`` or ``openai-compatible:<model>@<base_url>``."""
        if self.compatible:
            return f"openai-compatible:{self.model}@{self.base_url}"
        return f"openai:{self.model}"

    @property
    def provider(self) -> str:
        """``"openai"`` or ``"openai-compatible"``."""
        return "openai-compatible" if self.compatible else "openai"

    def __repr__(self) -> str:
        return f"OpenAIModel(name={self.name!r}, api={self.api!r}, timeout={self.timeout})"

    def describe_request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The final request as JSON-able data, for cache keys: no credentials, no timeouts."""
        described: dict[str, Any] = {
            "provider": self.provider,
            "endpoint": "chat.completions" if self.api == "chat" else "responses",
            "body": self._body(messages, params),
        }
        if self.compatible:
            described["base_url"] = self.base_url
        return described

    # ------------------------------------------------------------------ internals
    def _new_client(self) -> openai.AsyncOpenAI:
        key = self._api_key
        return openai.AsyncOpenAI(
            api_key=key.get_secret_value() if key is not None else _no_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout,
            http_client=self._http_client,
        )

    def _request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        return self._body(messages, params)

    def _body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        if not messages:
            raise InputError(f"{self.name}: no messages to send")
        if self.api == "chat":
            return self._chat_body(messages, params)
        return self._responses_body(messages, params)

    def _chat_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            ("max_tokens" if self.compatible else "max_completion_tokens"): params.max_tokens,
            "temperature": params.temperature,
        }
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs:
            body["logprobs"] = True
            if params.top_logprobs is not None:
                body["top_logprobs"] = params.top_logprobs
        return body

    def _responses_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        if params.stop:
            raise ConfigError(
                f"{self.name}: the Responses API has no stop sequences; drop `stop` or use api='chat'"
            )
        body: dict[str, Any] = {
            "model": self.model,
            "input": [{"role": m.role, "content": m.content} for m in messages],
            "max_output_tokens": params.max_tokens,
            "temperature": params.temperature,
            "store": False,
        }
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.logprobs:
            body["include"] = ["message.output_text.logprobs"]
            body["top_logprobs"] = params.top_logprobs or 0
        return body

    async def _attempt(self, request: dict[str, Any], params: GenerationParams) -> Completion:
        client = self._client()
        # Without a key the Authorization header is omitted explicitly (local servers need none).
        extra: dict[str, Any] = {} if self._api_key else {"extra_headers": {"Authorization": openai.omit}}
        try:
            if self.api == "chat":
                raw = await client.chat.completions.with_raw_response.create(**request, **extra)
            else:
                raw = await client.responses.with_raw_response.create(**request, **extra)
        except openai.OpenAIError as exc:
            # Not chained: the SDK's exception may quote the request's headers (the key).
            raise self._sdk_failure(exc, _SDK_ERRORS, logprobs_requested=params.logprobs) from None
        data = parse_json_object(raw.text, label=self.name, provider=self.provider)
        if self.api == "chat":
            return self._parse_chat(data, params)
        return self._parse_responses(data, params)

    def _parse_chat(self, data: dict[str, Any], params: GenerationParams) -> Completion:
        try:
            parsed = _ChatResponse.model_validate(data)
        except ValidationError as exc:
            raise self._invalid(exc, readable_usage(data, _ChatUsage, _chat_usage)) from None
        choice = parsed.choices[0]
        refused = choice.message.content is None and bool(choice.message.refusal)
        text = (
            choice.message.content if choice.message.content is not None else (choice.message.refusal or "")
        )
        usage = _chat_usage(parsed.usage) if parsed.usage is not None else missing_usage(self.name)
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content is not None:
            logprobs = _logprobs(choice.logprobs.content)
        completion = Completion(
            text=text,
            usage=usage,
            model=parsed.model or self.model,
            finish_reason=_chat_finish_reason(choice.finish_reason, refused),
            raw=data,
            logprobs=logprobs,
        )
        self._check_logprobs(completion, params)
        return completion

    def _parse_responses(self, data: dict[str, Any], params: GenerationParams) -> Completion:
        try:
            parsed = _ResponsesResponse.model_validate(data)
        except ValidationError as exc:
            raise self._invalid(exc, readable_usage(data, _ResponsesUsage, _responses_usage)) from None
        usage = _responses_usage(parsed.usage) if parsed.usage is not None else missing_usage(self.name)
        if parsed.status == "failed":
            # Not retried: the provider may have billed the input. Its usage goes to the ledger.
            detail = (parsed.error or {}).get("message", "no detail")
            failed = Completion(
                text="", usage=usage, model=parsed.model or self.model, finish_reason="failed", raw=data
            )
            raise AdapterError(
                f"{self.name}: the response failed: {detail}",
                provider=self.provider,
                partial={"completion": failed},
            )
        texts: list[str] = []
        tokens: list[_TokenLogprob] = []
        saw_logprobs = False
        refused = False
        for item in parsed.output:
            if item.type != "message":
                continue
            for part in item.content or []:
                if part.type == "output_text":
                    texts.append(part.text or "")
                    if part.logprobs is not None:
                        saw_logprobs = True
                        tokens.extend(part.logprobs)
                elif part.type == "refusal":
                    refused = True
                    texts.append(part.refusal or "")
        finish: str | None = "stop"
        if refused:
            finish = "refusal"
        elif parsed.status == "incomplete":
            reason = parsed.incomplete_details.reason if parsed.incomplete_details else None
            finish = "length" if reason == "max_output_tokens" else (reason or "incomplete")
        completion = Completion(
            text="".join(texts),
            usage=usage,
            model=parsed.model or self.model,
            finish_reason=finish,
            raw=data,
            logprobs=_logprobs(tokens) if saw_logprobs else None,
        )
        self._check_logprobs(completion, params)
        return completion

    def _check_logprobs(self, completion: Completion, params: GenerationParams) -> None:
        if params.logprobs and completion.logprobs is None:
            raise LogprobsUnavailableError(
                f"{self.name}: log-probabilities were requested but the response carries none "
                "(the model or server does not support them)",
                partial={"completion": completion},
                provider=self.provider,
            )


async def _no_key() -> str:
    """Key provider for servers that need none: the SDK then sends no Authorization header."""
    return ""

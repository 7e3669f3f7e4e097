"""OpenAI / OpenAI-compatible adapter against a real HTTP server, under asyncio and trio."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import anyio
import pytest

from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.base import GenerationParams, Message, MissingUsageWarning, Usage
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.adapters.registry import resolve_closed_model
from attribsdk.adapters.stack import build_closed_model
from attribsdk.cache import CachedModel, ResponseCache
from attribsdk.cost import CallLedger, CostReport, Price, Pricing
from attribsdk.errors import (
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

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="What is the capital of France?"),
]
ANSWER = "Answer to: What is the capital of France?"
PARAMS = GenerationParams(max_tokens=50)
CHAT = "/v1/chat/completions"


def hosted(server: FakeLLMServer, retry: RetryPolicy, **options: object) -> OpenAIModel:
    """``openai:gpt-4o-mini`` pointed at the fake server."""
    options.setdefault("timeout", 5.0)
    return OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url, api_key=SECRET, retry=retry, **options)  # type: ignore[arg-type]


def compatible(server: FakeLLMServer, retry: RetryPolicy, **options: object) -> OpenAIModel:
    options.setdefault("timeout", 5.0)
    return OpenAIModel.compatible_from_spec(f"llama-3@{server.openai_base_url}", retry=retry, **options)


async def test_chat_completion_round_trip_and_usage(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.cached_tokens = 2
    model = hosted(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, PARAMS)
    finally:
        await model.aclose()
    assert completion.text == ANSWER
    assert completion.finish_reason == "stop"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.attempts == 1 and not completion.cached
    # OpenAI counts cached tokens inside prompt_tokens: input total 8 words, 2 of them cached.
    assert completion.usage.input_tokens == 8
    assert completion.usage.cache_read_tokens == 2
    assert completion.usage.output_tokens == len(ANSWER.split())
    (request,) = server.requests
    assert request.path == CHAT
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["x-stainless-retry-count"] == "0"
    assert request.body["max_completion_tokens"] == 50
    assert request.body["temperature"] == 0.0
    assert request.body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_compatible_server_gets_max_tokens_and_no_key(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    model = compatible(server, fast_retry)
    assert model.name == f"openai-compatible:llama-3@{server.openai_base_url}"
    try:
        completion = await model.generate(MESSAGES, GenerationParams(max_tokens=20, seed=7, stop=("\n",)))
    finally:
        await model.aclose()
    assert completion.text == ANSWER
    (request,) = server.requests
    assert "authorization" not in request.headers
    assert request.body["max_tokens"] == 20 and "max_completion_tokens" not in request.body
    assert request.body["seed"] == 7 and request.body["stop"] == ["\n"]


async def test_429_honours_retry_after_ms(
    server: FakeLLMServer, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    server.inject(Fault(status=429, headers={"retry-after-ms": "37"}))
    model = hosted(server, fast_retry)
    with caplog.at_level(logging.INFO, logger="attribsdk.adapters"):
        try:
            completion = await model.generate(MESSAGES, PARAMS)
        finally:
            await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 2
    assert server.calls(CHAT) == 2
    assert "retrying in 0.037 s" in caplog.text  # the server's wait, not the 1 ms backoff


async def test_retry_after_is_capped(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_retry_after=0.02)
    server.inject(Fault(status=503, headers={"retry-after": "3600"}))
    model = hosted(server, policy)
    with caplog.at_level(logging.INFO, logger="attribsdk.adapters"):
        try:
            completion = await model.generate(MESSAGES, PARAMS)
        finally:
            await model.aclose()
    assert completion.attempts == 2
    assert "retrying in 0.020 s" in caplog.text


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 529])
async def test_transient_statuses_are_retried(
    server: FakeLLMServer, fast_retry: RetryPolicy, status: int
) -> None:
    server.inject(Fault(status=status), Fault(status=status))
    model = compatible(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, PARAMS)
    finally:
        await model.aclose()
    assert completion.text == ANSWER
    assert completion.attempts == 3 and server.calls(CHAT) == 3


async def test_rate_limit_that_outlasts_retries(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.inject(*[Fault(status=429, headers={"retry-after-ms": "1"})] * 4)
    model = hosted(server, fast_retry)
    with pytest.raises(RateLimitError) as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.status_code == 429
    assert info.value.attempts == 4 == server.calls(CHAT)
    assert "gave up after 4 attempts" in str(info.value)


async def test_slow_response_past_timeout_is_retried(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.inject(Fault(delay=2.0))
    model = hosted(server, fast_retry, timeout=0.25)
    try:
        completion = await model.generate(MESSAGES, PARAMS)
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 2


async def test_timeouts_that_never_end_raise_request_timeout(server: FakeLLMServer) -> None:
    server.inject(*[Fault(delay=2.0)] * 2)
    model = hosted(server, RetryPolicy(max_attempts=2, initial_backoff=0.001), timeout=0.1)
    with pytest.raises(RequestTimeoutError) as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.attempts == 2


async def test_per_call_deadline(server: FakeLLMServer) -> None:
    server.inject(*[Fault(delay=2.0)] * 3)
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.001, deadline=0.3)
    model = hosted(server, policy, timeout=5.0)
    with pytest.raises(RequestTimeoutError, match=r"deadline of 0\.3 s") as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.attempts == 1


async def test_dropped_connection_is_retried(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.inject(Fault(drop=True))
    model = hosted(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, PARAMS)
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 2


async def test_connection_refused_gives_transport_error(fast_retry: RetryPolicy) -> None:
    dead = FakeLLMServer().start()
    url = dead.openai_base_url
    dead.stop()
    model = OpenAIModel.compatible_from_spec(
        f"m@{url}", retry=RetryPolicy(max_attempts=2, initial_backoff=0.001)
    )
    with pytest.raises(TransportError) as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.attempts == 2


async def test_malformed_json_is_retried_then_reported(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.inject(Fault(malformed=True))
    model = hosted(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, PARAMS)
        assert completion.text == ANSWER and completion.attempts == 2
        server.inject(*[Fault(malformed=True)] * 4)
        with pytest.raises(InvalidResponseError, match="not valid JSON") as info:
            await model.generate(MESSAGES, PARAMS)
        assert info.value.attempts == 4
    finally:
        await model.aclose()


async def test_wrong_schema_is_invalid_response(server: FakeLLMServer) -> None:
    # No usage and a usage that does not fit either: nothing is known to be billed.
    bad_usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": "many"}}
    server.inject(Fault(status=200, body={"id": "x", "choices": []}), Fault(status=200, body=bad_usage))
    model = hosted(server, RetryPolicy(max_attempts=2, initial_backoff=0.001))
    with pytest.raises(InvalidResponseError, match="choices") as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.attempts == 2 and "discarded" not in info.value.partial


#: 200 bodies that do not fit each API's schema but report their tokens (7 in, 2 out).
UNREADABLE = {
    "chat": {"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
    "responses": {"output": "not a list", "usage": {"input_tokens": 7, "output_tokens": 2}},
}
DOLLAR_A_TOKEN = Price(input_mtok=1e6, output_mtok=1e6)
FAILED_USAGE = {"input_tokens": 12, "output_tokens": 0}


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_discarded_answer_is_paid_for_once(
    server: FakeLLMServer, fast_retry: RetryPolicy, api: Literal["chat", "responses"], tmp_path: Path
) -> None:
    server.inject(Fault(status=200, body=UNREADABLE[api]))
    stack = build_closed_model(
        OpenAIModel(
            "gpt-4o-mini", base_url=server.openai_base_url, api_key=SECRET, retry=fast_retry, api=api
        ),
        pricing=Pricing({"openai:gpt-4o-mini": DOLLAR_A_TOKEN}),
        cache=tmp_path / "cache",
    )
    try:
        completion = await stack.generate(MESSAGES, PARAMS)
        hit = await stack.generate(MESSAGES, PARAMS)
    finally:
        await stack.adapter.aclose()  # given, so not the stack's to close
        await stack.aclose()
    assert completion.text == ANSWER and completion.attempts == 2 == len(server.requests)
    assert completion.usage.input_tokens == 8  # the Responses API adds 3 reasoning tokens to its output
    answer_tokens = 8 + completion.usage.output_tokens
    assert completion.discarded_usage == Usage(input_tokens=7, output_tokens=2)
    paid, cached = stack.ledger.records
    assert paid.cost_usd == answer_tokens + 9 and paid.discarded_usage == completion.discarded_usage
    # The hit avoids the answer's price only: the discarded answer was a one-off.
    assert hit.cached and hit.discarded_usage == Usage()
    assert cached.cost_usd == 0.0 and cached.avoided_usd == answer_tokens
    report = stack.ledger.report()
    assert report.cost_usd == answer_tokens + 9
    assert report.tokens.input_tokens == 15 and report.discarded_tokens == Usage(
        input_tokens=7, output_tokens=2
    )


async def test_unreadable_answers_to_the_last_attempt_are_paid_for(server: FakeLLMServer) -> None:
    server.inject(*[Fault(status=200, body=UNREADABLE["chat"])] * 3)
    stack = build_closed_model(
        hosted(server, RetryPolicy(max_attempts=3, initial_backoff=0.001)),
        pricing=Pricing({"openai:gpt-4o-mini": DOLLAR_A_TOKEN}),
    )
    try:
        with pytest.raises(InvalidResponseError, match="choices") as info:
            await stack.generate(MESSAGES, PARAMS)
    finally:
        await stack.adapter.aclose()  # given, so not the stack's to close
        await stack.aclose()
    assert info.value.attempts == 3
    assert info.value.partial["discarded"] == [Usage(input_tokens=7, output_tokens=2)] * 3
    (record,) = stack.ledger.records
    assert record.error == "InvalidResponseError" and record.cost_usd == 27.0
    report = stack.ledger.report()
    assert report.discarded_tokens.input_tokens == 21
    assert (
        "tokens in 21 " in report.summary() and "incl. 21 in / 6 out of discarded answers" in report.summary()
    )
    assert CostReport.model_validate_json(report.model_dump_json()) == report


async def test_a_discarded_answer_before_a_failed_one_is_paid_for_once(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    """An unreadable answer, then a failed one (billed, not retried): the failed answer the error
    carries also carries the discarded one. Callers waiting on that call are not charged again."""
    failed = {"status": "failed", "output": [], "error": {"message": "crashed"}, "usage": FAILED_USAGE}
    server.inject(Fault(status=200, body=UNREADABLE["responses"], delay=0.1), Fault(status=200, body=failed))
    inner = OpenAIModel(
        "o3-pro", base_url=server.openai_base_url, api_key=SECRET, retry=fast_retry, api="responses"
    )
    ledger = CallLedger(pricing=Pricing({"openai:o3-pro": DOLLAR_A_TOKEN}))
    errors: list[AdapterError] = []
    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(inner, cache)

        async def one() -> None:
            with pytest.raises(AdapterError, match="crashed") as info:
                await model.generate(MESSAGES, PARAMS)
            errors.append(info.value)
            ledger.record_failure(model.name, info.value)  # as a ledger metering each caller would

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
    await inner.aclose()
    assert len(server.requests) == 2
    (leader,) = [e for e in errors if not e.partial["completion"].cached]
    assert leader.attempts == 2 and leader.partial["completion"].discarded == [
        Usage(input_tokens=7, output_tokens=2)
    ]
    assert all(e.attempts == 0 and "discarded" not in e.partial for e in errors if e is not leader)
    report = ledger.report()
    assert report.cost_usd == 9 + 12 and report.http_attempts == 2
    assert report.discarded_tokens == Usage(input_tokens=7, output_tokens=2) and report.cache_hits == 3


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_an_answer_without_usage_is_kept_not_paid_twice(
    server: FakeLLMServer, fast_retry: RetryPolicy, api: Literal["chat", "responses"]
) -> None:
    server.inject(Fault(no_usage=True))
    model = OpenAIModel(
        f"usage-less-{api}", base_url=server.openai_base_url, api_key=SECRET, retry=fast_retry, api=api
    )
    try:
        with pytest.warns(MissingUsageWarning, match="no token usage"):
            completion = await model.generate(MESSAGES, PARAMS)
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 1 and len(server.requests) == 1
    assert completion.usage.input_tokens == completion.usage.output_tokens == 0


async def test_a_failed_response_is_not_retried_and_its_usage_is_kept(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    failed = {
        "model": "o3-pro-2025-06-10",
        "status": "failed",
        "output": [],
        "error": {"code": "server_error", "message": "the model crashed"},
        "usage": {"input_tokens": 12, "output_tokens": 0},
    }
    server.inject(Fault(status=200, body=failed))
    stack = build_closed_model(
        OpenAIModel("o3-pro", base_url=server.openai_base_url, api_key=SECRET, retry=fast_retry),
        pricing=Pricing({"openai:o3-pro": Price(input_mtok=1e6, output_mtok=1e6)}),
    )
    try:
        with pytest.raises(AdapterError, match="the model crashed") as info:
            await stack.generate(MESSAGES, PARAMS)
    finally:
        await stack.adapter.aclose()
    assert len(server.requests) == 1
    assert info.value.partial["completion"].usage.input_tokens == 12
    (record,) = stack.ledger.records
    assert record.error == "AdapterError" and record.cost_usd == 12.0


async def test_401_is_not_retried_and_is_clear(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.api_key = "sk-the-right-one"
    model = hosted(server, fast_retry)
    with pytest.raises(AuthenticationError) as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert server.calls(CHAT) == 1 and info.value.attempts == 1
    assert info.value.status_code == 401
    assert "HTTP 401" in str(info.value) and "API key" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_are_not_retried(server: FakeLLMServer, fast_retry: RetryPolicy, status: int) -> None:
    server.inject(Fault(status=status))
    model = hosted(server, fast_retry)
    with pytest.raises(APIStatusError) as info:
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert info.value.status_code == status and info.value.attempts == 1 == server.calls(CHAT)


async def test_should_retry_header_wins(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.inject(Fault(status=500, headers={"x-should-retry": "false"}))
    model = hosted(server, fast_retry)
    with pytest.raises(APIStatusError):
        await model.generate(MESSAGES, PARAMS)
    await model.aclose()
    assert server.calls(CHAT) == 1


async def test_truncation_is_an_error_unless_allowed(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    short = GenerationParams(max_tokens=3)
    model = hosted(server, fast_retry)
    with pytest.raises(TruncatedOutputError) as info:
        await model.generate(MESSAGES, short)
    await model.aclose()
    cut = info.value.partial["completion"]
    assert cut.text == "Answer to: What" and cut.finish_reason == "length"
    assert info.value.attempts == 1

    lenient = hosted(server, fast_retry, allow_truncated=True)
    try:
        completion = await lenient.generate(MESSAGES, short)
    finally:
        await lenient.aclose()
    assert completion.finish_reason == "length" and completion.text == "Answer to: What"


async def test_logprobs_are_requested_and_normalised(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    model = hosted(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, GenerationParams(logprobs=True, top_logprobs=3))
    finally:
        await model.aclose()
    assert server.requests[0].body["logprobs"] is True and server.requests[0].body["top_logprobs"] == 3
    assert completion.logprobs is not None
    assert [t.token for t in completion.logprobs] == ANSWER.split()
    assert completion.logprobs[1].logprob == pytest.approx(-0.1)
    assert len(completion.logprobs[0].top) == 3 and completion.logprobs[0].top[1] == ("alt1", -6.0)


async def test_model_refusing_logprobs_is_a_clear_error(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    asked = GenerationParams(logprobs=True, top_logprobs=2)
    model = hosted(server, fast_retry)
    try:
        server.inject(
            Fault(status=400, body={"error": {"message": "logprobs are not supported with this model"}})
        )
        with pytest.raises(LogprobsUnavailableError, match="refused to return log-probabilities"):
            await model.generate(MESSAGES, asked)
        assert server.calls(CHAT) == 1
        server.inject(Fault(no_logprobs=True))  # a server that silently ignores the request
        with pytest.raises(LogprobsUnavailableError, match="carries none") as info:
            await model.generate(MESSAGES, asked)
        assert info.value.partial["completion"].text == ANSWER
    finally:
        await model.aclose()


async def test_responses_api(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.cached_tokens = 1
    model = OpenAIModel("o3-pro", base_url=server.openai_base_url, api_key=SECRET, retry=fast_retry)
    assert model.api == "responses"
    try:
        completion = await model.generate(
            MESSAGES, GenerationParams(max_tokens=40, logprobs=True, top_logprobs=1)
        )
        with pytest.raises(TruncatedOutputError):
            await model.generate(MESSAGES, GenerationParams(max_tokens=2))
        with pytest.raises(ConfigError, match="no stop sequences"):
            await model.generate(MESSAGES, GenerationParams(stop=("x",)))
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.finish_reason == "stop"
    assert completion.usage.reasoning_tokens == 3 and completion.usage.cache_read_tokens == 1
    assert completion.logprobs is not None and len(completion.logprobs) == len(ANSWER.split())
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/responses"
    assert body["max_output_tokens"] == 40 and body["store"] is False
    assert body["include"] == ["message.output_text.logprobs"] and body["top_logprobs"] == 1


async def test_model_strings_through_the_registry(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, fast_retry: RetryPolicy
) -> None:
    model = resolve_closed_model(f"openai-compatible:qwen2.5:7b@{server.openai_base_url}", retry=fast_retry)
    assert isinstance(model, OpenAIModel) and model.model == "qwen2.5:7b"
    try:
        assert (await model.generate(MESSAGES, PARAMS)).text == ANSWER
    finally:
        await model.aclose()
    monkeypatch.setenv("MY_KEY", SECRET)
    keyed = resolve_closed_model("openai:gpt-4o-mini", api_key_env="MY_KEY")
    assert keyed.name == "openai:gpt-4o-mini"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_closed_model("openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="openai-compatible:<model>@<base_url>"):
        resolve_closed_model("openai-compatible:llama3")
    with pytest.raises(ConfigError, match="credentials"):
        OpenAIModel("m", base_url="http://user:pw@host/v1", compatible=True)
    with pytest.raises(ConfigError, match="MISSING_VAR"):
        resolve_closed_model(f"openai-compatible:m@{server.openai_base_url}", api_key_env="MISSING_VAR")

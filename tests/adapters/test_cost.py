"""Prices, budgets, the call ledger and the assembled stack."""

from __future__ import annotations

import warnings
from pathlib import Path

import anyio
import genai_prices
import pytest

from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.base import Completion, GenerationParams, Message, Usage
from attribsdk.adapters.stack import ClosedModelStack, build_closed_model
from attribsdk.adapters.wrappers import FunctionModel, LimitedModel, TestModel, worst_case_input_tokens
from attribsdk.cache import ResponseCache
from attribsdk.cost import (
    PRICE_SOURCE,
    Budget,
    CallLedger,
    CostReport,
    MeteredModel,
    Price,
    Pricing,
    UnknownPriceWarning,
)
from attribsdk.errors import (
    APIStatusError,
    BudgetExceeded,
    ConfigError,
    InputError,
    LogprobsUnavailableError,
    RequestTimeoutError,
    TruncatedOutputError,
)

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(max_tokens=64)
CHAT = "/v1/chat/completions"


def priced() -> Pricing:
    return Pricing({"test:model": Price(input_mtok=1.0, output_mtok=10.0)})


def ask(i: int | str = 0) -> list[Message]:
    return [Message(role="user", content=f"question {i}")]


def gpt(server: FakeLLMServer, retry: RetryPolicy, **options: object) -> ClosedModelStack:
    """``openai:gpt-4o-mini`` (priced by genai-prices) served by the fake server."""
    options.setdefault("timeout", 5.0)
    return build_closed_model(
        "openai:gpt-4o-mini",
        base_url=server.openai_base_url,
        api_key=SECRET,
        retry=retry,
        **options,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------- prices
def test_openai_prices_are_cached_input_aware() -> None:
    pricing = Pricing()
    plain = pricing.cost("openai:gpt-4o-mini", Usage(input_tokens=1000, output_tokens=100))
    cached = pricing.cost(
        "openai:gpt-4o-mini", Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=100)
    )
    assert plain == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6)
    assert cached == pytest.approx((800 * 0.15 + 200 * 0.075 + 100 * 0.6) / 1e6)
    versioned = pricing.cost(
        "openai:gpt-4o-mini", Usage(input_tokens=1000), response_model="gpt-4o-mini-2024-07-18"
    )
    assert versioned == pytest.approx(1000 * 0.15 / 1e6)


def test_anthropic_prices_cache_reads_and_writes() -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=200, cache_write_tokens=100, output_tokens=100)
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=1000, cache_read_tokens=200, cache_write_tokens=100, output_tokens=100
        ),
        "claude-haiku-4-5",
        provider_id="anthropic",
    ).total_price
    priced = Pricing().cost("anthropic:claude-haiku-4-5", usage)
    assert priced == pytest.approx(float(expected))
    assert priced != Pricing().cost("anthropic:claude-haiku-4-5", Usage(input_tokens=1000, output_tokens=100))


def test_unknown_model_costs_none_with_one_warning() -> None:
    pricing = Pricing()
    with pytest.warns(UnknownPriceWarning, match="no price known for 'openai-compatible:mystery@"):
        assert pricing.cost("openai-compatible:mystery@http://127.0.0.1:9/v1", Usage(input_tokens=5)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pricing.cost("openai-compatible:mystery@http://127.0.0.1:9/v1", Usage(input_tokens=5)) is None
    assert pricing.cost("local:smollm2", Usage(input_tokens=5, output_tokens=5)) == 0.0


def test_the_test_double_is_free_unless_priced() -> None:
    usage = Usage(input_tokens=5, output_tokens=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TestModel in a user's tests costs $0 and warns nothing
        assert Pricing().cost(TestModel().name, usage) == 0.0
    # an override prices it (e.g. to rehearse a budget without a paid model)
    priced = Pricing({"test:model": Price(input_mtok=1e6, output_mtok=0.0)})
    assert priced.cost("test:model", usage) == 5.0
    # a FunctionModel's function may call a paid API: its cost stays unknown, said loudly
    with pytest.warns(UnknownPriceWarning, match="function:model"):
        assert Pricing().cost("function:model", usage) is None


def test_a_custom_models_bare_name_is_not_priced_as_free() -> None:
    pricing = Pricing()
    usage = Usage(input_tokens=5, output_tokens=5)
    with pytest.warns(UnknownPriceWarning, match="no price known for 'my-gpt4'"):
        assert pricing.cost("my-gpt4", usage) is None
    assert not pricing.is_known("my-gpt4") and pricing.is_known("local:smollm2")
    assert Pricing({"my-gpt4": Price(input_mtok=1e6, output_mtok=0.0)}).cost("my-gpt4", usage) == 5.0
    # so a dollar budget cannot be enforced for it and says so before any call
    ledger = CallLedger(pricing=pricing, budget=Budget(max_usd=1.0))
    with pytest.raises(ConfigError, match="my-gpt4"):
        ledger.reserve("my-gpt4", [Message(role="user", content="hi")], GenerationParams())


async def test_cancelled_and_refused_calls_do_not_use_up_max_calls() -> None:
    release = anyio.Event()

    async def slow(messages: list[Message], params: GenerationParams) -> str:
        await release.wait()
        return "ok"

    free = Pricing({"function:model": Price(input_mtok=0.0, output_mtok=0.0)})
    ledger = CallLedger(budget=Budget(max_calls=3), pricing=free)
    model = MeteredModel(LimitedModel(FunctionModel(slow), max_concurrency=1), ledger)
    with anyio.move_on_after(0.2):  # three calls queue behind one slot and are cancelled
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(model.generate, [Message(role="user", content="hi")], GenerationParams())
    report = ledger.report()
    assert report.cancelled_calls == 3 and report.closed_calls == 0
    release.set()

    # the budget still has its three calls; a request refused before sending costs none of them
    def refuse(messages: list[Message], params: GenerationParams) -> str:
        raise InputError("refused before sending")

    refusing = MeteredModel(FunctionModel(refuse), ledger)
    with pytest.raises(InputError):
        await refusing.generate([Message(role="user", content="hi")], GenerationParams())
    for _ in range(3):
        assert (await model.generate([Message(role="user", content="hi")], GenerationParams())).text == "ok"
    with pytest.raises(BudgetExceeded):
        await model.generate([Message(role="user", content="hi")], GenerationParams())


def test_aliases_price_calls_as_another_model_with_its_tiers() -> None:
    sonnet = "anthropic:claude-sonnet-4-5"  # $3 per million input tokens, $6 above 200k a call
    base = Pricing()
    small, long = Usage(input_tokens=1_000, output_tokens=10), Usage(input_tokens=300_000, output_tokens=10)
    small_usd, long_usd = base.cost(sonnet, small), base.cost(sonnet, long)
    assert small_usd is not None and long_usd is not None
    assert long_usd / 300 > 1.5 * small_usd  # the long-context tier is dearer per token
    aliased = Pricing(aliases={"local:smollm2": sonnet})
    assert aliased.cost("local:smollm2", small) == small_usd
    assert aliased.cost("local:smollm2", long) == long_usd
    assert aliased.is_known("local:smollm2") and "local:smollm2 priced as " + sonnet in aliased.source
    assert Pricing().cost("local:smollm2", small) == 0.0  # without the alias, local calls are free
    with pytest.raises(ConfigError, match="alias itself"):
        Pricing(aliases={"a:x": "b:y", "b:y": sonnet})
    # price_of gives the base tier, not the tier a million-token call would fall in
    from attribsdk.compare import price_of

    per_token = base.cost(sonnet, Usage(input_tokens=10_000))
    assert per_token is not None and price_of(sonnet).input_mtok == pytest.approx(per_token * 100)


def test_price_overrides() -> None:
    pricing = Pricing(
        {
            "mystery": {"input_mtok": 2.0, "output_mtok": 4.0, "cache_read_mtok": 0.5},
            "openai:gpt-4o-mini": Price(input_mtok=100.0, output_mtok=0.0),
        }
    )
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=500_000, output_tokens=1_000_000)
    assert pricing.cost("openai-compatible:mystery@http://h/v1", usage) == pytest.approx(1.0 + 0.25 + 4.0)
    assert pricing.cost("openai:gpt-4o-mini", Usage(input_tokens=10_000)) == pytest.approx(1.0)
    assert PRICE_SOURCE in pricing.source and "mystery" in pricing.source
    with pytest.raises(ConfigError, match="invalid price override"):
        Pricing({"x": {"input_mtok": -1, "output_mtok": 1}})


# ---------------------------------------------------------------------------------------------- reports
async def test_cost_report_aggregates_and_round_trips() -> None:
    ledger = CallLedger(pricing=priced())
    paid = Completion(
        text="a", model="test:model", usage=Usage(input_tokens=100, output_tokens=10), attempts=2
    )
    ledger.record_completion("test:model", paid)
    ledger.record_completion("test:model", paid.model_copy(update={"cached": True, "attempts": 0}))
    truncated = TruncatedOutputError("cut", partial={"completion": paid}, attempts=1)
    ledger.record_failure("test:model", truncated)
    report = ledger.report()
    one = (100 * 1.0 + 10 * 10.0) / 1e6
    assert (report.closed_calls, report.failed_calls, report.cache_hits, report.http_attempts) == (2, 1, 1, 3)
    assert report.tokens.input_tokens == 200 and report.avoided_tokens.output_tokens == 10
    assert report.cost_usd == pytest.approx(2 * one) and report.avoided_usd == pytest.approx(one)
    assert report.price_source.startswith("genai-prices ")
    assert CostReport.model_validate_json(report.model_dump_json()) == report
    total = report + report
    assert total.closed_calls == 4 and total.cost_usd == pytest.approx(4 * one)
    assert "2 closed calls" in report.summary()
    again = CallLedger.from_json(ledger.to_json())
    assert again.report().model_dump(exclude={"price_source"}) == report.model_dump(exclude={"price_source"})

    with pytest.warns(UnknownPriceWarning):
        ledger.record_completion("custom:unpriced", paid)
    assert ledger.report().cost_usd is None and ledger.report().unpriced_calls == 1


def test_totals_are_exact_sums_and_a_refused_cached_answer_is_a_hit() -> None:
    ledger = CallLedger(pricing=Pricing({"test:model": Price(input_mtok=100_000.0, output_mtok=0.0)}))
    dime = Completion(text="a", model="test:model", usage=Usage(input_tokens=1), attempts=1)  # $0.10
    for _ in range(10):
        ledger.record_completion("test:model", dime)
    assert ledger.report().cost_usd == 1.0  # math.fsum: not 0.9999999999999999
    # a cached truncated answer refused to a strict caller: no call was made, none is paid
    hit = dime.model_copy(update={"cached": True, "attempts": 0, "finish_reason": "length"})
    record = ledger.record_failure("test:model", TruncatedOutputError("cut", partial={"completion": hit}))
    assert record.cached and record.cost_usd == 0.0 and record.avoided_usd == pytest.approx(0.1)
    report = ledger.report()
    assert (report.closed_calls, report.cache_hits, report.failed_calls, report.cost_usd) == (10, 1, 0, 1.0)


async def test_a_metered_model_metered_again_is_counted_once_per_ledger() -> None:
    """Explainer(closed=build_closed_model(...)) meters a stack that meters itself: each ledger
    records the call once, and a block tracking the outer ledger sees one call, not two."""
    inner_ledger, outer_ledger = CallLedger(pricing=priced()), CallLedger(pricing=priced())
    model = MeteredModel(MeteredModel(TestModel("x"), inner_ledger), outer_ledger)
    with outer_ledger.track() as mine:
        await model.generate(ask(), PARAMS)
    for ledger in (inner_ledger, outer_ledger, mine):
        assert ledger.report().closed_calls == 1, ledger


async def test_a_logprobs_refusal_before_sending_is_not_a_call() -> None:
    from attribsdk.adapters.anthropic import AnthropicModel

    ledger = CallLedger(budget=Budget(max_calls=1))
    model = MeteredModel(AnthropicModel("claude-haiku-4-5", api_key=SECRET), ledger)
    for _ in range(2):  # refused twice without using up max_calls=1
        with pytest.raises(LogprobsUnavailableError):
            await model.generate(ask(), GenerationParams(max_tokens=8, logprobs=True))
    assert ledger.report().closed_calls == 0 and ledger.records == []
    await model.aclose()


async def test_track_separates_concurrent_blocks() -> None:
    ledger = CallLedger(pricing=priced())
    model = MeteredModel(TestModel(delay=0.01), ledger)
    reports: dict[int, CostReport] = {}

    async def example(i: int, calls: int) -> None:
        with ledger.track() as mine:
            for j in range(calls):
                await model.generate(ask(f"{i}-{j}"), PARAMS)
            reports[i] = mine.report()

    async with anyio.create_task_group() as tg:
        tg.start_soon(example, 1, 2)
        tg.start_soon(example, 2, 3)
    assert reports[1].closed_calls == 2 and reports[2].closed_calls == 3
    assert ledger.report().closed_calls == 5


# ---------------------------------------------------------------------------------------------- budgets
async def test_budget_is_never_exceeded(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    worst = Pricing().cost(
        "openai:gpt-4o-mini", Usage(input_tokens=worst_case_input_tokens(ask(10)), output_tokens=64)
    )
    assert worst is not None
    budget = Budget(max_usd=worst * 3)
    model = gpt(server, fast_retry, budget=budget, max_concurrency=4)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            await model.generate(ask(10 + i), PARAMS)
            outcomes.append("ok")
        except BudgetExceeded as exc:
            outcomes.append("refused")
            assert exc.spent_usd <= budget.max_usd  # type: ignore[operator]
            assert exc.estimate_usd is not None and exc.max_usd == budget.max_usd
            assert isinstance(exc.partial["report"], CostReport)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    await model.aclose()
    report = model.ledger.report()
    assert "refused" in outcomes and "ok" in outcomes
    assert report.cost_usd is not None and report.cost_usd <= budget.max_usd  # type: ignore[operator]
    assert server.calls(CHAT) == outcomes.count("ok") == report.closed_calls  # refused calls were never sent
    assert report.budget == budget


async def test_max_calls_and_free_cache_hits(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    model = gpt(server, fast_retry, budget=Budget(max_calls=2), cache=tmp_path, rpm=2)
    try:
        with anyio.fail_after(10):  # rpm=2: a third request through the limiter would wait 30 s
            await model.generate(ask(1), PARAMS)
            await model.generate(ask(2), PARAMS)
            with pytest.raises(BudgetExceeded, match="max_calls=2") as info:
                await model.generate(ask(3), PARAMS)
            for _ in range(3):  # cache hits consume neither budget nor rate limit
                assert (await model.generate(ask(1), PARAMS)).cached
    finally:
        await model.aclose()
    assert info.value.calls == 2 and server.calls(CHAT) == 2
    report = model.ledger.report()
    assert (report.closed_calls, report.cache_hits) == (2, 3)
    assert report.avoided_usd is not None and report.avoided_usd > 0 and report.cost_usd is not None


async def test_unknown_price_with_dollar_budget_is_refused_up_front() -> None:
    model = build_closed_model(TestModel(name="custom:model"), budget=Budget(max_usd=1.0))
    with pytest.raises(ConfigError, match="price is unknown"):
        await model.generate(ask(), PARAMS)
    assert model.adapter.calls == []  # type: ignore[attr-defined]


async def test_failed_calls_are_recorded_with_their_attempts(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.inject(Fault(status=500), Fault(status=400))
    model = gpt(server, fast_retry)
    with pytest.raises(APIStatusError, match="HTTP 400"):
        await model.generate(ask(), PARAMS)
    await model.aclose()
    report = model.ledger.report()
    assert (report.closed_calls, report.failed_calls, report.http_attempts) == (1, 1, 2)
    assert report.cost_usd == 0.0


# ---------------------------------------------------------------------------------------------- stack
async def test_stack_order_and_ownership(tmp_path: Path) -> None:
    inner = TestModel()
    stack = build_closed_model(inner, cache=tmp_path / "c", rpm=100, max_concurrency=2, pricing=priced())
    layers = []
    layer = stack.inner
    while hasattr(layer, "inner"):
        layers.append(type(layer).__name__)
        layer = layer.inner
    assert layers == ["CachedModel", "MeteredModel", "LimitedModel"] and layer is inner
    assert isinstance(stack.cache, ResponseCache)
    await stack.generate(ask(), PARAMS)
    await stack.aclose()
    assert not inner.closed  # a ready model belongs to the caller
    with pytest.raises(ConfigError, match="configure a ready ClosedModel directly"):
        build_closed_model(inner, timeout=3)
    with pytest.raises(ConfigError, match="max_attempts or retry"):
        build_closed_model("openai:gpt-4o-mini", max_attempts=2, retry=RetryPolicy())
    with pytest.raises(ConfigError, match="different budget"):
        build_closed_model(inner, ledger=CallLedger(budget=Budget(max_calls=1)), budget=Budget(max_calls=2))


async def test_stack_from_string_passes_http_options(server: FakeLLMServer) -> None:
    stack = build_closed_model(
        f"openai-compatible:m@{server.openai_base_url}", timeout=0.2, max_attempts=2, allow_truncated=True
    )
    server.inject(Fault(delay=1.0), Fault(delay=1.0))
    with pytest.raises(RequestTimeoutError, match=r"no answer within 0\.2 s"):
        await stack.generate(ask(), PARAMS)
    with pytest.warns(UnknownPriceWarning):  # a local server has no price: cost None, said loudly
        cut = await stack.generate(ask(), GenerationParams(max_tokens=1))
    await stack.aclose()
    assert cut.finish_reason == "length"
    assert stack.ledger.report().cost_usd is None


async def test_the_cache_follows_the_adapters_truncation_policy(tmp_path: Path) -> None:
    """A model that never refuses truncated answers (local, test, function) gets them from the
    cache too; before, a cached stack refused on a hit what the fresh call had returned."""
    calls: list[int] = []

    def cut(messages: list[Message], params: GenerationParams) -> Completion:
        calls.append(1)
        return Completion(text="Par", model="function:model", finish_reason="length")

    stack = build_closed_model(FunctionModel(cut), cache=tmp_path, pricing=priced())
    fresh = await stack.generate(ask(), PARAMS)
    hit = await stack.generate(ask(), PARAMS)
    assert (fresh.text, fresh.cached, hit.text, hit.cached) == ("Par", False, "Par", True) and len(calls) == 1
    await stack.aclose()


async def test_function_model_through_the_stack() -> None:
    stack = build_closed_model(
        FunctionModel(lambda m, p: m[-1].content.upper(), name="test:model"), pricing=priced()
    )
    assert (await stack.generate(ask(), PARAMS)).text == "QUESTION 0"
    assert stack.ledger.report().closed_calls == 1

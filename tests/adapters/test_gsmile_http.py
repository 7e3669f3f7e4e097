"""gSMILE over real HTTP: exactly 1 + 64 requests reach the loopback server on a cold cache and
none on a warm one; the comparison report's counts match the server's request log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attribsdk import Explainer
from attribsdk.adapters.base import Usage
from attribsdk.compare import CompareConfig, acompare
from attribsdk.cost import Price, Pricing
from attribsdk.eval.datasets import LabeledExample
from attribsdk.prompt import build_prompt
from tests.tiny_models import tiny_local_model

from .conftest import SECRET
from .fakeserver import FakeLLMServer

pytestmark = pytest.mark.anyio

#: Twelve distinct words: 64 distinct random deletions exist, so 64 distinct requests.
QUESTION = "Which famous river crosses Paris where tourists walk along the Seine today"
PRICE = Price(input_mtok=1.0, output_mtok=2.0)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=1)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_gsmile_cold_cache_65_requests_warm_cache_none(
    provider: str, server: FakeLLMServer, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    pricing = Pricing(overrides={"my-model": PRICE})
    results = []
    for _ in range(2):
        async with Explainer(
            closed=f"{provider}:my-model",
            surrogate=tiny,
            method="gsmile",
            cache=str(tmp_path / "cache"),
            pricing=pricing,
            closed_options={"base_url": base},
        ) as ex:
            results.append(await ex.explain(QUESTION, features="words"))
        if len(results) == 1:
            assert server.calls(path) == 65  # cold: the explained answer + 64 perturbations
    cold, warm = results
    assert server.calls(path) == 65  # warm: nothing more reached the server
    assert (cold.counts.closed_calls, cold.counts.http_attempts, cold.counts.cache_hits) == (65, 65, 0)
    assert (warm.counts.closed_calls, warm.counts.http_attempts, warm.counts.cache_hits) == (0, 0, 65)
    # Every perturbed request carried its own prompt; the unmasked prompt was sent once.
    bodies = [r.body for r in server.requests]
    prompts = [json.dumps(b.get("messages")) for b in bodies]
    assert len(set(prompts)) == 65
    assert cold.attributions == warm.attributions
    assert cold.cost.cost_usd is not None and cold.cost.cost_usd > 0
    assert warm.cost.cost_usd == 0 and warm.cost.avoided_usd == pytest.approx(cold.cost.cost_usd)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # both backends are covered above
async def test_compare_report_counts_match_server_log(
    server: FakeLLMServer, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    examples = [
        LabeledExample(
            id=f"ex{i}",
            prompt=build_prompt(q, features="words"),
            gold=gold,
            dataset="test",
        )
        for i, (q, gold) in enumerate(
            [
                (QUESTION, (4, 10)),
                ("Where was Marie Curie born and which prizes did she win", (2, 3)),
            ]
        )
    ]
    config = CompareConfig(
        methods=("rope-lime", "rope-lime-loo", "gsmile", "closed-loo"),
        closed="openai:my-model",
        concurrency=2,
    )
    report = await acompare(
        config,
        tmp_path / "out",
        examples=examples,
        surrogate=tiny,
        pricing=Pricing(overrides={"my-model": PRICE}),
        closed_options={"base_url": server.openai_base_url},
    )
    total = sum(s.closed_calls for s in report.methods)
    attempts = sum(s.http_attempts for s in report.methods)
    assert total == attempts == server.calls("/v1/chat/completions") == len(server.requests)
    by = {s.method: s for s in report.methods}
    m = [ex.prompt.n_features for ex in examples]
    assert by["rope-lime"].closed_calls == by["rope-lime-loo"].closed_calls == 2
    assert by["gsmile"].closed_calls == 2 * 65
    assert by["closed-loo"].closed_calls == sum(k + 1 for k in m)
    assert by["gsmile"].surrogate_sequences == 0 < by["rope-lime"].surrogate_sequences
    gsmile_usd, rope_usd = by["gsmile"].cost_usd, by["rope-lime"].cost_usd
    assert gsmile_usd is not None and rope_usd is not None and gsmile_usd > rope_usd > 0
    assert all(s.n_ok == 2 and s.auroc is not None for s in report.methods)
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [s["closed_calls"] for s in saved["methods"]] == [s.closed_calls for s in report.methods]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000

    # Run again: every answer comes from the per-method caches; the server sees nothing new.
    again = await acompare(
        config,
        tmp_path / "out",
        examples=examples,
        surrogate=tiny,
        pricing=Pricing(overrides={"my-model": PRICE}),
        closed_options={"base_url": server.openai_base_url},
    )
    assert server.calls() == total
    assert sum(s.closed_calls for s in again.methods) == 0
    assert sum(s.cache_hits for s in again.methods) == total
    assert again.methods[2].avoided_usd == pytest.approx(report.methods[2].cost_usd)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_compare_prices_calls_as_another_model(
    server: FakeLLMServer, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """price_as prices every call of the closed model as that model would have charged for it."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    example = LabeledExample(
        id="q", dataset="custom", prompt=build_prompt(QUESTION, features="words"), gold=(4, 10)
    )
    sonnet = "anthropic:claude-sonnet-4-5"
    report = await acompare(
        CompareConfig(methods=("rope-lime-loo",), closed="openai:my-model", price_as=sonnet),
        tmp_path / "out",
        examples=[example],
        surrogate=tiny,
        closed_options={"base_url": server.openai_base_url},
    )
    (summary,) = report.methods
    expected = Pricing().cost(
        sonnet, Usage(input_tokens=summary.input_tokens, output_tokens=summary.output_tokens)
    )
    assert summary.closed_calls == 1 and summary.cost_usd == pytest.approx(expected)
    assert "AS IF " + sonnet in report.pricing_note and "priced as " + sonnet in report.price_source

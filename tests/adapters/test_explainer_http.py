"""The Explainer over real HTTP: official SDK clients talk to the loopback server over sockets.

A second run of the same explanation makes no upstream call, and the explanation's cost report
matches the server's own request log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attribsdk import Explainer
from attribsdk.cost import Price, Pricing
from tests.tiny_models import tiny_local_model

from .conftest import SECRET
from .fakeserver import FakeLLMServer

pytestmark = pytest.mark.anyio

CONTEXT = ["The capital of France is Paris. Paris is on the Seine.", "Berlin is in Germany."]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=1)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_second_run_makes_no_upstream_call(
    provider: str, server: FakeLLMServer, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    pricing = Pricing(overrides={"my-model": Price(input_mtok=1.0, output_mtok=2.0)})
    results = []
    for _ in range(2):
        async with Explainer(
            closed=f"{provider}:my-model",
            surrogate=tiny,
            cache=tmp_path / "cache",
            pricing=pricing,
            closed_options={"base_url": base},
        ) as ex:
            results.append(await ex.explain("What is the capital of France?", CONTEXT))
    first, second = results
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    assert server.calls(path) == 1  # the server saw exactly one request in both runs together
    assert (first.counts.closed_calls, first.counts.http_attempts, first.counts.cache_hits) == (1, 1, 0)
    assert (second.counts.closed_calls, second.counts.http_attempts, second.counts.cache_hits) == (0, 0, 1)
    assert first.answer == second.answer and first.answer.startswith("Answer to:")
    assert first.cost.cost_usd is not None and first.cost.cost_usd > 0
    assert second.cost.cost_usd == 0 and second.cost.avoided_usd == pytest.approx(first.cost.cost_usd)
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    for res in results:
        assert SECRET not in res.model_dump_json()
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes()


async def test_a_ready_http_adapter_is_cached_by_default(
    server: FakeLLMServer, tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attribsdk.adapters.openai import OpenAIModel
    from attribsdk.adapters.wrappers import TestModel

    monkeypatch.delenv("ATTRIBSDK_CACHE_URL", raising=False)
    monkeypatch.setenv("ATTRIBSDK_CACHE_DIR", str(tmp_path / "default-cache"))
    pricing = Pricing(overrides={"my-model": Price(input_mtok=1.0, output_mtok=2.0)})
    counts = []
    for _ in range(2):
        adapter = OpenAIModel("my-model", base_url=server.openai_base_url, api_key=SECRET)
        async with Explainer(closed=adapter, surrogate=tiny, pricing=pricing) as ex:
            res = await ex.explain("What is the capital of France?", CONTEXT)
            counts.append((res.counts.closed_calls, res.counts.cache_hits))
        await adapter.aclose()
    assert counts == [(1, 0), (0, 1)] and server.calls("/v1/chat/completions") == 1
    # a ready model that is not an HTTP adapter is not cached unless asked
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny) as ex:
        assert (await ex.closed_model()).cache is None

"""The Explainer end to end with a tiny in-process surrogate and in-process closed models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from attribsdk import ConfigError, Explainer, Explanation, FeatureError, ScoringError
from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.local import LocalClosedModel
from attribsdk.adapters.wrappers import FunctionModel, TestModel
from attribsdk.cost import Budget
from attribsdk.errors import AdapterError, BudgetExceeded, InputError
from attribsdk.methods import RopeLime
from attribsdk.regression import UnderdeterminedFitWarning
from attribsdk.scoring.base import ScoringRequest
from tests.tiny_models import tiny_local_model

pytestmark = pytest.mark.anyio

CONTEXT = [
    "The capital of France is Paris. Paris is a large city on the Seine.",
    "Berlin is the capital of Germany. The cat sat on the mat in the sun.",
]
QUESTION = "What is the capital of France?"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=3)


async def test_explain_runs_every_stage_and_reports_counts(tiny: Any) -> None:
    closed = TestModel("Paris is the capital of France.")
    async with Explainer(closed=closed, surrogate=tiny, cache=False) as ex:
        res = await ex.explain(QUESTION, CONTEXT, features="sentences")
    assert len(closed.calls) == 1  # exactly one closed call
    assert [f.text for f in res.features][:2] == [
        "The capital of France is Paris.",
        "Paris is a large city on the Seine.",
    ]
    m = len(res.features)
    assert len(res.attributions) == m == len(res.coefficients) == 4
    assert abs(sum(res.attributions) - 1) < 1e-9 and min(res.attributions) >= 0
    # attributions are the normalised magnitudes of the signed coefficients
    coef = np.abs(res.coefficients)
    np.testing.assert_allclose(res.attributions, coef / coef.sum())
    assert res.samples is not None and res.samples.masks[0] == [1] * m
    assert res.counts.closed_calls == 1 and res.counts.cache_hits == 0
    # each distinct prompt is scored once; a repeated mask row (4 features, 6 rows) shares its scores
    distinct = {tuple(row) for row in res.samples.masks}
    assert res.counts.surrogate_sequences == len(distinct) < len(res.samples.masks)
    assert res.engine["repeated_rows"] == len(res.samples.masks) - len(distinct)
    by_row: dict[tuple[int, ...], set[float]] = {}
    for row, target in zip(res.samples.masks, res.samples.targets, strict=True):
        by_row.setdefault(tuple(row), set()).add(target)
    assert all(len(targets) == 1 for targets in by_row.values())
    assert res.counts.surrogate_tokens > 0
    # the engine's own figures travel with the result: rows reuse the reference's cached prefix
    assert 0 < res.engine["computed_tokens"] < res.counts.surrogate_tokens
    assert res.engine["reused_prefix_tokens"] > 0 and res.engine["batches"] >= 2
    assert res.engine["peak_memory_bytes"] > 0 and res.engine["dtype"] == "float32"
    assert res.samples.weights[0] == 1.0 and res.samples.targets[0] == pytest.approx(0.0, abs=1e-6)
    assert res.config["sampler"]["kind"] == "sparse_k" and res.config["kernel"]["kind"] == "rwmd"
    assert res.timings.total >= res.timings.scoring > 0
    assert res.cost.closed_calls == 1 and res.usage.output_tokens == 6


async def test_same_seed_same_result_and_json_round_trip(tiny: Any) -> None:
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        a = await ex.explain(QUESTION, CONTEXT, seed=7)
        b = await ex.explain(QUESTION, CONTEXT, seed=7)
    assert a.attributions == b.attributions and a.samples == b.samples
    again = Explanation.model_validate_json(a.model_dump_json())
    assert again == a


async def test_an_underdetermined_fit_is_reported(tiny: Any) -> None:
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        full = await ex.explain(QUESTION, CONTEXT, features="words")
        m = len(full.features)
        assert full.fit_rank == m and not full.underdetermined
        assert full.fit_summary() == f"R² {full.r2:.3f}"
        # Three random masks cannot identify one effect per word.
        few = RopeLime(sampler={"kind": "uniform", "n_samples": 3})
        with pytest.warns(UnderdeterminedFitWarning, match=f"identify 3 of {m} feature effects"):
            res = await ex.explain(QUESTION, CONTEXT, features="words", method=few)
    assert res.fit_rank == 3 and res.underdetermined
    assert f"identify only 3 of {m} feature effects" in res.fit_summary()
    assert Explanation.model_validate_json(res.model_dump_json()).fit_rank == 3


async def test_given_answer_makes_no_closed_call(tiny: Any) -> None:
    closed = TestModel("unused")
    async with Explainer(closed=closed, surrogate=tiny, cache=False) as ex:
        res = await ex.explain(QUESTION, CONTEXT, answer="Paris.")
    assert closed.calls == [] and res.counts.closed_calls == 0 and res.closed_model is None
    assert res.answer == "Paris."


async def test_local_closed_model_and_disk_cache(tiny: Any, tmp_path: Path) -> None:
    """A second run of the same explanation makes no upstream call. (The random tiny model never
    stops before max_tokens, so truncated answers are allowed into the cache here.)"""
    for run in range(2):
        async with Explainer(
            closed=LocalClosedModel(tiny),
            surrogate=tiny,
            cache=tmp_path / "c",
            closed_options={"allow_truncated": True},
        ) as ex:
            res = await ex.explain(QUESTION, CONTEXT)
        assert (res.counts.closed_calls, res.counts.cache_hits) == ((1, 0) if run == 0 else (0, 1))
        assert res.answer.strip()


async def test_a_local_closed_model_given_a_handle_survives_aclose(tiny: Any) -> None:
    closed = LocalClosedModel(tiny)
    params = GenerationParams(max_tokens=3)
    first = await closed.generate([Message(role="user", content="Hi")], params)
    await closed.aclose()
    again = await closed.generate([Message(role="user", content="Hi")], params)  # the caller's handle
    assert again.text == first.text and again.model == "local:" + tiny.name


async def test_scoring_failure_keeps_the_paid_answer(tiny: Any) -> None:
    class Broken:
        name = "broken"

        def score(self, request: ScoringRequest) -> Any:
            raise RuntimeError("device lost")

    async with Explainer(closed=TestModel("Paris."), surrogate=Broken(), cache=False) as ex:
        with pytest.raises(ScoringError, match="device lost") as info:
            await ex.explain(QUESTION, CONTEXT)
    assert info.value.partial["completion"].text == "Paris."
    assert info.value.partial["cost"].closed_calls == 1


async def test_budget_refuses_the_call(tiny: Any) -> None:
    closed = TestModel("Paris.")
    async with Explainer(closed=closed, surrogate=tiny, cache=False, budget=Budget(max_calls=0)) as ex:
        with pytest.raises(BudgetExceeded):
            await ex.explain(QUESTION, CONTEXT)
    assert closed.calls == []


async def test_explain_many_isolates_failures(tiny: Any) -> None:
    seen: list[int] = []

    def answer(messages: Any, params: Any) -> str:
        if "Germany" in messages[-1].content and "Bonn" in messages[-1].content:
            raise RuntimeError("upstream exploded")
        return "An answer."

    examples = [
        {"question": QUESTION, "context": CONTEXT},
        {"question": QUESTION, "context": CONTEXT, "features": "letters"},  # bad granularity
        {"question": "Where?", "context": ["Bonn was the capital of Germany."]},  # closed model fails
        {"question": QUESTION, "context": CONTEXT, "answer": "Paris."},
    ]
    async with Explainer(closed=FunctionModel(answer), surrogate=tiny, cache=False) as ex:
        out = await ex.explain_many(examples, concurrency=2, on_result=lambda i, r: seen.append(i))
    assert isinstance(out[0], Explanation) and isinstance(out[3], Explanation)
    assert isinstance(out[1], FeatureError)
    for bad in (0, 2.5, True, "2"):
        with pytest.raises(ConfigError, match="concurrency must be an integer"):
            await ex.explain_many(examples, concurrency=bad)  # type: ignore[arg-type]
    # a custom model's own error is the closed call's typed error, with what that example spent
    assert isinstance(out[2], AdapterError) and "RuntimeError: upstream exploded" in str(out[2])
    assert isinstance(out[2].__cause__, RuntimeError) and out[2].partial["cost"].failed_calls == 1
    assert sorted(seen) == [0, 1, 2, 3]


async def test_closed_call_failures_are_typed_and_keep_their_cost(tiny: Any) -> None:
    def explode(messages: Any, params: Any) -> str:
        raise RuntimeError("upstream exploded")

    async with Explainer(closed=FunctionModel(explode), surrogate=tiny, cache=False) as ex:
        with pytest.raises(AdapterError, match="RuntimeError: upstream exploded") as failed:
            await ex.explain(QUESTION, CONTEXT)
    assert failed.value.partial["cost"].failed_calls == 1
    # an empty answer was still a paid call: its cost travels with the error
    async with Explainer(closed=TestModel("   "), surrogate=tiny, cache=False) as ex:
        with pytest.raises(InputError, match="empty answer") as empty:
            await ex.explain(QUESTION, CONTEXT)
    assert empty.value.partial["cost"].closed_calls == 1 and empty.value.partial["completion"].text == "   "


async def test_a_raising_on_result_loses_no_explanation(tiny: Any) -> None:
    def callback(i: int, result: Any) -> None:
        if i == 0:
            raise KeyError("user bug")

    examples = [{"question": QUESTION, "context": CONTEXT, "answer": a} for a in ("Paris.", "Bonn.", "Rome.")]
    closed = TestModel("unused")
    async with Explainer(closed=closed, surrogate=tiny, cache=False) as ex:
        with pytest.raises(ConfigError, match=r"on_result raised KeyError: 'user bug' \(1 of 3") as info:
            await ex.explain_many(examples, concurrency=1, on_result=callback)
    results = info.value.partial["results"]
    assert [r.answer for r in results] == ["Paris.", "Bonn.", "Rome."]
    with pytest.raises(InputError, match=r"example 1: invalid Example.question"):
        async with Explainer(closed=closed, surrogate=tiny, cache=False) as ex:
            await ex.explain_many([{"question": QUESTION}, {"question": 1}])


def test_sync_wrapper(tiny: Any) -> None:
    with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        res = ex.explain_sync(QUESTION, CONTEXT, features="sentences")
        many = ex.explain_many_sync([{"question": QUESTION, "context": CONTEXT}])
    assert isinstance(res, Explanation) and isinstance(many[0], Explanation)
    # the blocking wrappers run the same explanation as the async API (same seed, same numbers)
    assert many[0].coefficients == res.coefficients and many[0].answer == res.answer == "Paris."

    async def explain_async() -> Explanation:
        async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
            return await ex.explain(QUESTION, CONTEXT, features="sentences")

    assert anyio.run(explain_async).coefficients == res.coefficients
    with pytest.raises(ConfigError, match="with Explainer"):
        Explainer(closed=TestModel("x"), surrogate=tiny).explain_sync(QUESTION, CONTEXT)


async def test_closed_explainer_refuses_work(tiny: Any) -> None:
    ex = Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False)
    await ex.aclose()
    with pytest.raises(ConfigError, match="closed"):
        await ex.explain(QUESTION, CONTEXT)


@pytest.mark.parametrize("method", ["rope-lime", "rope-lime-loo"])
async def test_methods_and_kernels_run(tiny: Any, method: str) -> None:
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False, method=method) as ex:
        res = await ex.explain(QUESTION, CONTEXT)
        m = len(res.features)
        assert res.samples is not None
        if method == "rope-lime-loo":
            assert len(res.samples.masks) == m + 1
        # the default RWMD kernel: the unmasked row is at distance 0, the masked rows farther
        assert res.samples.distances[0] == pytest.approx(0.0, abs=1e-9)
        assert min(res.samples.distances[1:]) > 0 and len(set(res.samples.weights)) > 1
        from attribsdk import RopeLime
        from attribsdk.locality import CosineKernel, NoKernel

        for kernel in (CosineKernel(), NoKernel()):
            r2 = await ex.explain(QUESTION, CONTEXT, method=RopeLime(kernel=kernel.kind))
            assert r2.config["kernel"]["kind"] == kernel.kind and r2.samples is not None
            # the fit used this kernel's weights on this run's masks
            expected = kernel.weights(np.array(r2.samples.masks, dtype=bool)).weights
            np.testing.assert_allclose(r2.samples.weights, expected, rtol=1e-12)


def test_anyio_run_from_plain_code(tiny: Any) -> None:
    async def go() -> Explanation:
        async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
            return await ex.explain(QUESTION, CONTEXT)

    under_trio = anyio.run(go, backend="trio")
    assert isinstance(under_trio, Explanation)
    assert under_trio.coefficients == anyio.run(go, backend="asyncio").coefficients


async def test_explain_many_progress_bar_and_aggregate_cost(
    tiny: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = [{"question": QUESTION, "context": CONTEXT}] * 3
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        out = await ex.explain_many(examples, concurrency=3, progress=True)
        report = ex.cost_report()
    assert all(isinstance(r, Explanation) for r in out)
    assert report.closed_calls == 3 == sum(r.counts.closed_calls for r in out if isinstance(r, Explanation))
    assert "3/3" in capsys.readouterr().err  # bars go to stderr, results to stdout


async def test_progress_counts_the_surrogate_sequences(tiny: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        quiet = await ex.explain(QUESTION, CONTEXT)  # auto: no bar for a surrogate method
        assert capsys.readouterr().err == ""
        res = await ex.explain(QUESTION, CONTEXT, progress=True)
    err = capsys.readouterr().err
    assert "surrogate sequences" in err and f"{res.counts.surrogate_sequences}/" in err
    assert res.counts.surrogate_sequences > 1 and res.coefficients == quiet.coefficients


async def test_explain_many_batches_examples_together_with_identical_results() -> None:
    lm = tiny_local_model(seed=3)
    examples = [
        {"question": QUESTION, "context": CONTEXT, "answer": answer}
        for answer in ("Paris.", "Paris is the capital of France.", "Berlin.", "The Seine.")
    ]
    async with Explainer(closed=TestModel("unused"), surrogate=lm, cache=False) as ex:
        alone = [await ex.explain(QUESTION, CONTEXT, answer=str(e["answer"])) for e in examples]
        assert lm.queue.stats.max_jobs_in_flight == 1
        together = await ex.explain_many(examples, concurrency=4)
    assert lm.queue.stats.max_jobs_in_flight > 1  # rows of several examples shared micro-batches
    for a, b in zip(alone, together, strict=True):
        assert isinstance(b, Explanation)
        np.testing.assert_allclose(a.attributions, b.attributions, atol=1e-6)
        assert a.samples is not None and b.samples is not None
        np.testing.assert_allclose(a.samples.targets, b.samples.targets, atol=1e-6)


def test_device_or_dtype_with_a_ready_scorer_is_refused(tiny: Any) -> None:
    with pytest.raises(ConfigError, match="would be ignored"):
        Explainer(closed=TestModel("Paris."), surrogate=tiny, device="cpu")
    with pytest.raises(ConfigError, match="would be ignored"):
        Explainer(closed=TestModel("Paris."), surrogate=tiny, dtype="bfloat16")
    # A local closed model is loaded by name, so device/dtype still apply to it.
    ex = Explainer(closed="local:smollm2", surrogate=tiny, dtype="float32")
    assert ex.dtype == "float32"
    Explainer(closed=TestModel("Paris."), surrogate=tiny)  # "auto": nothing to ignore

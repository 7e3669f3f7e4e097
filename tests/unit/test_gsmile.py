"""gSMILE and closed-model leave-one-out with in-process closed models and a tiny surrogate."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import anyio
import numpy as np
import ot
import pytest

from attribsdk import ConfigError, Explainer, Explanation
from attribsdk.adapters.base import Completion, GenerationParams, Message
from attribsdk.adapters.stack import build_closed_model
from attribsdk.adapters.wrappers import FunctionModel, TestModel
from attribsdk.cost import Budget, Price, Pricing
from attribsdk.errors import AdapterError, BudgetExceeded, InputError, TruncatedOutputError
from attribsdk.methods import ClosedLoo, GSmile, MethodParts, make_method
from attribsdk.methods.gsmile import DEFAULT_WORD_VECTORS, _target
from attribsdk.prompt import build_prompt
from attribsdk.regression import UnderdeterminedFitWarning
from attribsdk.wmd import WMD, clean_words
from attribsdk.wordvec import (
    CallableWordVectors,
    EmbeddingWordVectors,
    KeyedWordVectors,
    make_word_vectors,
)
from tests.concurrency import PeakConcurrency
from tests.tiny_models import tiny_local_model

pytestmark = pytest.mark.anyio

#: Twelve distinct words; the closed model's answer depends on "paris" and "seine" only.
QUESTION = "Which famous river crosses Paris where tourists walk along the Seine today"


FREE = Pricing(overrides={"test:model": Price(input_mtok=0.0, output_mtok=0.0)})


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=5)


def hashed_vector(word: str, dim: int = 32) -> np.ndarray:
    """A fixed pseudo-random vector per word (distinct words are far apart in 32-d)."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(dim)


def planted(messages: list[Message], params: GenerationParams) -> str:
    text = messages[-1].content.lower()
    city = "paris" if "paris" in text.split() else "somewhere"
    river = "seine" if "seine" in text.split() else "unknown"
    return f"the river in {city} is the {river}"


# -- WMD -------------------------------------------------------------------------------------------


def test_clean_words_lowercases_and_strips_punctuation() -> None:
    assert clean_words("Paris, the CAPITAL!  of France.") == ["paris", "the", "capital", "of", "france"]


def test_wmd_matches_gensim_definition_on_hand_vectors() -> None:
    table = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [-3.0, 0.0]}
    wmd = WMD(KeyedWordVectors(table))
    # nBOW: doc1 = {a: 2/3, b: 1/3}, doc2 = {c: 1}; unit vectors a=(1,0), b=(0,1), c=(-1,0).
    expected = 2 / 3 * 2.0 + 1 / 3 * np.sqrt(2.0)
    assert wmd("a a b", "c") == pytest.approx(expected)
    assert wmd("a b", "b a") == pytest.approx(0.0, abs=1e-12)
    assert wmd("a", "a a") == 0.0
    # The same problem solved directly with POT's exact solver.
    cost = np.array([[2.0], [np.sqrt(2.0)]])
    assert wmd("a a b", "c") == pytest.approx(ot.emd2(np.array([2 / 3, 1 / 3]), np.array([1.0]), cost))


def test_wmd_unknown_words_dropped_and_empty_side_is_one() -> None:
    wmd = WMD(KeyedWordVectors({"a": [1.0, 0.0], "b": [0.0, 1.0]}))
    assert wmd("a zzz", "a") == 0.0  # zzz has no vector: left out, as gensim does
    assert wmd("zzz", "a") == 1.0  # the authors' safe_wmdistance value
    assert wmd("zzz", "yyy") == 1.0 and wmd("", "a") == 1.0
    # the same words are no change, even when none has a vector (numbers, punctuation)
    assert wmd("", "") == 0.0 and wmd("42!", "42") == 0.0 and wmd("zzz", "ZZZ.") == 0.0
    assert WMD(KeyedWordVectors({"a": [1.0, 0.0]}), empty=float("inf"))("", "a") == float("inf")


def test_wmd_cosine_cost() -> None:
    wmd = WMD(KeyedWordVectors({"a": [1.0, 0.0], "b": [0.0, 5.0]}), metric="cosine")
    assert wmd("a", "b") == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        WMD(KeyedWordVectors({"a": [1.0]}), metric="manhattan")  # type: ignore[arg-type]


# -- word vectors ------------------------------------------------------------------------------------


def test_embedding_word_vectors_are_mean_of_token_embeddings(tiny: Any) -> None:
    vecs = EmbeddingWordVectors(tiny)
    (paris,) = vecs.lookup(["paris"])
    ids = tiny.tokenizer(" paris", add_special_tokens=False)["input_ids"]
    weight = tiny.model.get_input_embeddings().weight.detach().numpy()
    assert paris is not None and paris.shape == (weight.shape[1],)
    np.testing.assert_allclose(paris, weight[ids].mean(axis=0), rtol=1e-6)
    assert vecs.name == "input-embeddings:tiny-llama"


def test_make_word_vectors_specs(tiny: Any) -> None:
    assert isinstance(make_word_vectors(None, surrogate=tiny), EmbeddingWordVectors)
    assert isinstance(make_word_vectors({"a": [1.0]}), KeyedWordVectors)
    fn = make_word_vectors(lambda w: [1.0, 2.0] if w == "a" else None)
    assert isinstance(fn, CallableWordVectors)
    assert fn.lookup(["a", "b"])[1] is None
    with pytest.raises(ConfigError, match="local surrogate"):
        make_word_vectors(None, surrogate=object())
    with pytest.raises(ConfigError):
        make_word_vectors(42)
    with pytest.raises(ConfigError):
        KeyedWordVectors({})


# -- gSMILE ------------------------------------------------------------------------------------------


def test_target_and_kernel_definitions() -> None:
    d = np.array([0.0, 0.5, 1.0])
    inv = 1 / (d + 1e-8)
    np.testing.assert_allclose(_target(d, "inverse"), (inv - inv.min()) / (inv.max() - inv.min()))
    np.testing.assert_allclose(_target(d, "similarity"), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(_target(np.full(3, 0.3), "inverse"), [1.0, 1.0, 1.0])


async def test_gsmile_recovers_planted_words() -> None:
    closed = FunctionModel(planted)
    prompt = build_prompt(QUESTION, features="words")
    method = GSmile(word_vectors=hashed_vector)
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await method.attribute(prompt, answer, MethodParts(closed=closed, seed=1))
    words = [f.text.lower() for f in prompt.features]
    top2 = {words[i] for i in np.argsort(-res.attributions)[:2]}
    assert top2 == {"paris", "seine"}
    assert res.coefficients[words.index("paris")] > 0 and res.coefficients[words.index("seine")] > 0
    assert len(closed.calls) == 64  # one call per distinct perturbation, none for the original
    assert res.samples is not None and len(res.samples.masks) == 65 and res.samples.weights[0] == 0.0
    assert res.attributions.sum() == pytest.approx(1.0)
    # The masks are the seeded uniform masks: the same seed gives the same explanation.
    again = await GSmile(word_vectors=hashed_vector).attribute(
        prompt, answer, MethodParts(closed=FunctionModel(planted), seed=1)
    )
    np.testing.assert_allclose(again.coefficients, res.coefficients)


async def test_gsmile_script_variant_also_recovers_planted_words() -> None:
    prompt = build_prompt(QUESTION, features="words")
    method = GSmile(word_vectors=hashed_vector, target="similarity", kernel_on="output")
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await method.attribute(prompt, answer, MethodParts(closed=FunctionModel(planted), seed=2))
    words = [f.text.lower() for f in prompt.features]
    assert {words[i] for i in np.argsort(-res.attributions)[:2]} == {"paris", "seine"}
    assert method.config()["kernel_on"] == "output"


async def test_gsmile_through_explainer_makes_65_closed_calls(tiny: Any) -> None:
    closed = FunctionModel(planted, name="function:planted")
    pricing = Pricing(overrides={"function:planted": Price(input_mtok=1.0, output_mtok=2.0)})
    async with Explainer(closed=closed, surrogate=tiny, method="gsmile", pricing=pricing) as ex:
        res = await ex.explain(QUESTION, features="words")
    assert len(closed.calls) == 65
    assert (res.counts.closed_calls, res.counts.cache_hits) == (65, 0)
    # every paid answer is in the result, aligned with its mask, and survives JSON
    samples = res.samples
    assert samples is not None and samples.answers is not None
    answers = samples.answers
    assert len(answers) == len(samples.masks) == 65
    assert set(answers) <= {planted(messages, params) for messages, params in closed.calls}
    # targets are raw divergences from the explained answer, as for every method: 0 for the
    # unmasked row and for every perturbation whose answer did not change
    targets = samples.targets
    assert targets[0] == 0.0 and min(targets) >= 0.0
    assert all(t == 0.0 for a, t in zip(answers, targets, strict=True) if a == answers[0])
    back = Explanation.model_validate_json(res.model_dump_json()).samples
    assert back is not None and back.answers == answers
    assert res.counts.surrogate_sequences == 0
    assert res.method == "gsmile" and res.config["word_vectors"] == "surrogate-input-embeddings"
    assert len(res.attributions) == 12


async def test_gsmile_needs_a_closed_model_and_valid_settings(tiny: Any) -> None:
    prompt = build_prompt(QUESTION, features="words")
    with pytest.raises(ConfigError, match="closed model"):
        await GSmile().attribute(prompt, "x", MethodParts(scorer=tiny))
    with pytest.raises(ConfigError):
        GSmile(p=1.5)
    with pytest.raises(ConfigError):
        GSmile(kernel_on="input")  # type: ignore[arg-type]
    assert isinstance(make_method("gsmile"), GSmile) and isinstance(make_method("closed-loo"), ClosedLoo)


async def test_gsmile_failure_keeps_the_answers_and_raises_typed_error() -> None:
    calls = 0

    def flaky(messages: list[Message], params: GenerationParams) -> str:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("boom")
        return "ok"

    prompt = build_prompt(QUESTION, features="words")
    with pytest.raises(AdapterError, match="boom") as info:
        await GSmile(word_vectors=hashed_vector).attribute(
            prompt, "ok", MethodParts(closed=FunctionModel(flaky))
        )
    assert calls == 5  # nothing was sent after the failure
    partial = info.value.partial
    masks, answers = partial["masks"], partial["answers"]
    assert len(masks) == len(answers) == GSmile().cfg.n_samples and partial["answers_received"] == 4
    # every answer that came back is kept, aligned with its mask row; the others are None
    assert set(answers) == {"ok", None} and answers.count("ok") >= 4
    assert all(set(row) <= {0, 1} for row in masks)


async def test_a_failed_closed_loop_sends_no_more_and_lets_sent_calls_finish() -> None:
    async def slow_or_failing(messages: list[Message], params: GenerationParams) -> str:
        if "seine" not in messages[-1].content.lower():
            raise RuntimeError("boom")
        await anyio.sleep(0.2)  # still in flight when the failure comes: it must not be cancelled
        return "ok"

    fn = FunctionModel(slow_or_failing)
    stack = build_closed_model(fn, max_concurrency=4)
    assert stack.max_concurrency == 4
    prompt = build_prompt(QUESTION, features="words")
    with pytest.raises(AdapterError, match="boom") as info:
        await GSmile(word_vectors=hashed_vector).attribute(prompt, "ok", MethodParts(closed=stack))
    sent = len(fn.calls)
    assert sent < GSmile().cfg.n_samples  # after the failure nothing more was sent
    records = stack.ledger.records
    assert len(records) == sent and all(r.error in (None, "RuntimeError") for r in records)  # none cancelled
    finished = sum(r.error is None for r in records)
    assert info.value.partial["answers_received"] == finished  # every sent call that answered is kept


async def test_gsmile_budget_stops_the_closed_loop(tiny: Any) -> None:
    closed = TestModel("the same answer", name="test:model")
    async with Explainer(
        closed=closed, surrogate=tiny, method="gsmile", budget=Budget(max_calls=10), pricing=FREE
    ) as ex:
        with pytest.raises(BudgetExceeded, match="max_calls=10") as info:
            await ex.explain(QUESTION, features="words")
    # the answer and 9 perturbations were sent (nothing is cached), the 11th call was refused unsent
    # (calls still in flight at the refusal count against max_calls but not in ``calls`` yet)
    assert len(closed.calls) == 10 and info.value.max_calls == 10 and 1 <= info.value.calls <= 10


async def test_gsmile_uses_truncated_answers() -> None:
    def cut(messages: list[Message], params: GenerationParams) -> Completion:
        text = planted(messages, params)
        raise TruncatedOutputError("cut", partial={"completion": Completion(text=text, model="m")})

    prompt = build_prompt(QUESTION, features="words")
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await GSmile(word_vectors=hashed_vector).attribute(
        prompt, answer, MethodParts(closed=FunctionModel(cut), seed=1)
    )
    words = [f.text.lower() for f in prompt.features]
    assert {words[i] for i in np.argsort(-res.attributions)[:2]} == {"paris", "seine"}


# -- closed-model LOO ------------------------------------------------------------------------------


async def test_closed_loo_makes_m_calls_and_finds_planted_words() -> None:
    closed = FunctionModel(planted)
    prompt = build_prompt(QUESTION, features="words")
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await ClosedLoo(word_vectors=hashed_vector).attribute(prompt, answer, MethodParts(closed=closed))
    words = [f.text.lower() for f in prompt.features]
    assert len(closed.calls) == prompt.n_features
    assert {words[i] for i in np.flatnonzero(res.coefficients > 0)} == {"paris", "seine"}
    assert res.attributions[words.index("paris")] + res.attributions[words.index("seine")] == pytest.approx(
        1.0
    )


async def test_repeated_prompts_are_requested_once() -> None:
    closed = FunctionModel(planted)
    prompt = build_prompt("the the cat", features="words")  # deleting either "the" gives "the cat"
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await ClosedLoo(word_vectors=hashed_vector).attribute(prompt, answer, MethodParts(closed=closed))
    assert sorted(m.content for msgs, _ in closed.calls for m in msgs) == ["the cat", "the the"]
    assert res.extras["closed_requests"] == 2
    assert res.samples is not None and res.samples.answers is not None
    assert len(res.samples.answers) == 4 and res.samples.answers[0] == answer  # the unmasked row first


async def test_few_features_get_every_distinct_mask_once_and_never_the_unmasked_one() -> None:
    closed = FunctionModel(planted)
    prompt = build_prompt("paris seine river", features="words")  # M = 3: 6 masks besides these two
    answer = planted(list(prompt.render().messages), GenerationParams())
    res = await GSmile(word_vectors=hashed_vector).attribute(
        prompt, answer, MethodParts(closed=closed, seed=0)
    )
    assert res.samples is not None
    rows = [tuple(r) for r in res.samples.masks[1:]]
    assert len(rows) == len(set(rows)) == 6 and (1, 1, 1) not in rows and (0, 0, 0) not in rows
    assert res.fit_rank == 3 and len(closed.calls) == 6
    words = [f.text for f in prompt.features]
    assert res.coefficients[words.index("paris")] > 0 and res.coefficients[words.index("seine")] > 0
    assert {words[i] for i in np.argsort(-res.attributions)[:2]} == {"paris", "seine"}


async def test_a_failed_fit_keeps_the_paid_answers() -> None:
    # a kernel this narrow gives every perturbation weight 0: the fit fails after 64 paid answers
    closed = FunctionModel(planted)
    prompt = build_prompt(QUESTION, features="words")
    with pytest.raises(InputError, match="weight") as info:
        await GSmile(word_vectors=hashed_vector, kernel_width=1e-3).attribute(
            prompt, "the river in paris is the seine", MethodParts(closed=closed)
        )
    assert len(info.value.partial["answers"]) == len(info.value.partial["masks"]) == len(closed.calls) == 64


async def test_the_explainer_keeps_the_closed_models_concurrency_cap() -> None:
    counted = PeakConcurrency(planted, hold=0.01)
    stack = build_closed_model(FunctionModel(counted), max_concurrency=2, pricing=FREE)
    async with Explainer(
        closed=stack, surrogate=tiny_local_model(seed=5), method=GSmile(word_vectors=hashed_vector)
    ) as ex:
        await ex.explain(QUESTION, features="words")
    assert counted.peak == 2  # the method's gate follows the cap (it was 8 through the Explainer's wrapper)


def test_gsmile_configuration_round_trips_and_refuses_unknown_word_vectors() -> None:
    default = make_method("gsmile", n_samples=16)
    again = make_method("gsmile", **default.config())
    assert again.config() == default.config()
    with pytest.raises(ConfigError, match="word_vectors 'glove'"):
        GSmile(word_vectors="glove")
    with pytest.raises(ConfigError):
        GSmile(n_samples=1)  # one sample fits nothing
    assert (
        make_method("closed-loo", **make_method("closed-loo").config()).config()["word_vectors"]
        == DEFAULT_WORD_VECTORS
    )


async def test_two_features_are_identified() -> None:
    closed = FunctionModel(planted)
    prompt = build_prompt("paris seine", features="words")
    answer = planted(list(prompt.render().messages), GenerationParams())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedFitWarning)
        res = await GSmile(word_vectors=hashed_vector).attribute(prompt, answer, MethodParts(closed=closed))
    assert res.fit_rank == 2 and len(closed.calls) == 2  # the unmasked row costs no call
    assert res.coefficients[0] > 0 and res.coefficients[1] > 0

"""The classic white-box baselines on tiny in-process models: planted dependency, numerical checks
against independent computations (full forward + autograd, finite differences, eager attention,
direct re-scoring), IG completeness, errors and the Explainer round trip."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from attribsdk import ConfigError, Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.methods.base import MethodParts
from attribsdk.prompt import build_prompt
from attribsdk.scoring.capture import ATTENTION_NAME
from attribsdk.scoring.engine import tokenize_prompt
from attribsdk.scoring.models import LocalModel
from attribsdk.whitebox import aggregate, prepare_input
from attribsdk.whitebox._method import WhiteboxMethod
from attribsdk.whitebox.baselines import (
    Attention,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    RandomAttribution,
    Saliency,
    quadrature,
)
from tests.tiny_models import planted_example, planted_model, tiny_gemma3, tiny_local_model, tiny_tokenizer

QUESTION = "What is the capital of France?"
CONTEXT = ["The capital of France is Paris.", "Berlin is the capital of Germany."]

#: Held-out planted prompts (the model trained on seeds 0-299), Paris and Berlin alike: deleting
#: the city flips the answer to "Unknown" (tests/unit/test_whitebox_core.py checks it).
PLANTED_SEEDS = [1000, 1001, 1002, 1003, 1004]


@pytest.fixture(scope="module")
def planted() -> LocalModel:
    return planted_model()


@pytest.fixture(scope="module")
def tiny() -> LocalModel:
    return tiny_local_model(seed=3)


def _run(method: WhiteboxMethod, lm: LocalModel, prompt: Any, answer: str, seed: int = 0) -> Any:
    import anyio

    return anyio.run(method.attribute, prompt, answer, MethodParts(scorer=lm, seed=seed))


def _reference_logprob(lm: LocalModel, ids: torch.Tensor, n_prompt: int, answer_ids: list[int]) -> float:
    """Mean log p(answer token | prefix) from the model's own full-sequence forward pass."""
    with torch.no_grad():
        logits = lm.model(ids.unsqueeze(0)).logits[0].float()
    lp = torch.log_softmax(logits[n_prompt - 1 : n_prompt - 1 + len(answer_ids)], -1)
    return float(lp.gather(-1, torch.tensor(answer_ids).view(-1, 1)).mean())


# --------------------------------------------------------------------------------------------------
# planted dependency


@pytest.mark.parametrize(
    "method",
    [Saliency(), IntegratedGradients(), Attention(layer=0), Occlusion()],
    ids=["saliency", "integrated-gradients", "attention-layer0", "occlusion"],
)
def test_planted_city_is_ranked_first(planted: LocalModel, method: WhiteboxMethod) -> None:
    """Measured on held-out seeds 1000-1019: saliency, integrated gradients (defaults), attention at
    layer 0 and occlusion rank the city first on 20/20. Input x gradient (7/20; the model is
    saturated, p(answer) ≈ 0.99) and last-layer attention (0/20, top 3 on 10/20: by the last of 2
    layers the answer positions read the city's information elsewhere) do not, so they are checked
    numerically below instead."""
    for seed in PLANTED_SEEDS:
        prompt, answer, city = planted_example(seed)
        res = _run(method, planted, prompt, answer, seed)
        assert int(np.argmax(res.coefficients)) == city, (seed, res.coefficients)


# --------------------------------------------------------------------------------------------------
# gradients against independent computations


def test_gradients_match_full_forward_autograd_and_finite_differences(tiny: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT, features="words")
    wi = prepare_input(tiny, prompt, "Paris is the capital.")
    emb_layer = tiny.model.get_input_embeddings()

    # Independent gradient: the model's full forward (all positions' logits), plain backward.
    x = emb_layer(wi.ids.unsqueeze(0)).detach().requires_grad_(True)
    logits = tiny.model(inputs_embeds=x).logits[0].float()
    pos = wi.answer_positions
    f = torch.log_softmax(logits[pos], -1).gather(-1, wi.answer_tensor.view(-1, 1)).mean()
    (grad,) = torch.autograd.grad(f, x)
    g, e = grad[0, : wi.n_prompt], x[0, : wi.n_prompt].detach()

    sal = Saliency().run(wi, np.random.default_rng(0))
    ixg = InputXGradient().run(wi, np.random.default_rng(0))
    assert sal.token_scores is not None and ixg.token_scores is not None
    ref_sal, ref_ixg = g.norm(dim=-1).numpy(), (g * e).sum(-1).numpy()
    np.testing.assert_allclose(sal.token_scores, ref_sal, rtol=1e-4, atol=1e-4 * ref_sal.max())
    np.testing.assert_allclose(ixg.token_scores, ref_ixg, rtol=1e-4, atol=1e-4 * np.abs(ref_ixg).max())
    assert sal.extras["target_logprob"] == pytest.approx(float(f.detach()), abs=1e-5)
    assert (sal.token_scores >= 0).all() and (ixg.token_scores < 0).any()  # unsigned vs signed

    # Input x gradient is the directional derivative along each token's own embedding: central
    # differences on a float64 copy of the model (RoPE's cos/sin stay float32-accurate, so a smaller
    # step only adds noise: measured max error 1.9e-5 at 1e-2, 2e-4 at 1e-3; scores reach 2e-2).
    model64 = copy.deepcopy(tiny.model).double()
    eps = 1e-2
    base = emb_layer(wi.ids).detach().double()
    rows = []
    for i in range(wi.n_prompt):
        for sign in (1.0, -1.0):
            y = base.clone()
            y[i] *= 1.0 + sign * eps
            rows.append(y)
    with torch.no_grad():
        out = model64(inputs_embeds=torch.stack(rows)).logits[:, pos]
    lp = torch.log_softmax(out, -1).gather(-1, wi.answer_tensor.view(1, -1, 1).expand(len(rows), -1, 1))
    fd = (lp.squeeze(-1).mean(-1).view(-1, 2) @ torch.tensor([1.0, -1.0], dtype=torch.float64)) / (2 * eps)
    np.testing.assert_allclose(ixg.token_scores, fd.numpy(), rtol=0, atol=3e-3 * float(fd.abs().max()))


def test_gradients_work_under_inference_mode_and_leave_parameters_alone(tiny: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT, features="sentences")
    with torch.inference_mode():
        wi = prepare_input(tiny, prompt, "Paris.")
        sal = Saliency().run(wi, np.random.default_rng(0))
        ig = IntegratedGradients(steps=4).run(wi, np.random.default_rng(0))
    assert sal.token_scores is not None and np.isfinite(sal.token_scores).all()
    assert sal.token_scores.max() > 0
    assert ig.token_scores is not None and np.abs(ig.token_scores).max() > 0
    assert all(p.grad is None for p in tiny.model.parameters())


# --------------------------------------------------------------------------------------------------
# integrated gradients


def test_quadrature_rules_integrate_exactly_what_they_should() -> None:
    for steps in (1, 4, 32):
        a, w = quadrature(steps, "gauss-legendre")
        assert w.sum() == pytest.approx(1.0) and ((a > 0) & (a < 1)).all()
        degree = 2 * steps - 1  # Gauss-Legendre is exact up to this degree
        assert (w * a**degree).sum() == pytest.approx(1 / (degree + 1), rel=1e-12)
    a, w = quadrature(5, "trapezoid")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75, 1])
    assert (w * a).sum() == pytest.approx(0.5)  # exact for linear functions
    with pytest.raises(ConfigError):
        quadrature(1, "trapezoid")


@pytest.mark.parametrize("scope", ["features", "prompt"])
def test_ig_completeness_with_enough_steps(planted: LocalModel, scope: str) -> None:
    """Σ attributions = f(x) - f(baseline). The zero baseline makes the path integrand stiff on
    these tiny RMSNorm models: the whole change happens between α ≈ 0.006 and 0.016 (the moved
    tokens' normalised embeddings switch on once α·rms(e) exceeds √eps). Measured relative gaps on
    seed 5 (a change of 2.55 nats/token for "features", 0.24 for "prompt"): Gauss-Legendre 32 steps
    0.76 / 5.2, 256 steps 1.7e-3 / 0.82, 512 steps 8e-7 / 1.8e-2 (trapezoid 512: 1.3e-2 / 1.3)."""
    prompt, answer, city = planted_example(5)
    wi = prepare_input(planted, prompt, answer)
    res = IntegratedGradients(scope=scope, steps=512, batch_size=128).run(wi, np.random.default_rng(0))
    ex = res.extras
    change = ex["ig_target_input"] - ex["ig_target_baseline"]
    assert abs(change) > 0.1  # a real change to attribute, not noise
    assert ex["ig_target_input"] == pytest.approx(
        _reference_logprob(planted, wi.ids, wi.n_prompt, wi.answer_ids), abs=1e-4
    )
    assert res.token_scores is not None
    assert ex["ig_attribution_sum"] == pytest.approx(float(res.token_scores.sum()))
    assert ex["ig_completeness_gap"] == pytest.approx(abs(ex["ig_attribution_sum"] - change))
    assert ex["ig_completeness_relative_gap"] < 0.05
    assert res.forward_passes == 512 + 2
    feature_sum = float(aggregate(res.token_scores, wi.feature_tokens).sum())
    if scope == "features":  # the feature scores alone carry the whole change
        assert ex["ig_non_feature_attribution"] == 0.0
        assert feature_sum == pytest.approx(ex["ig_attribution_sum"], abs=1e-6)
        assert ex["ig_interpolated_tokens"] == int(wi.feature_mask.sum())
    else:  # every non-special prompt token moves; the rest of the sum is on template/question tokens
        assert feature_sum + ex["ig_non_feature_attribution"] == pytest.approx(ex["ig_attribution_sum"])
        special = set(planted.tokenizer.all_special_ids)
        assert ex["ig_interpolated_tokens"] == sum(int(t) not in special for t in wi.ids[: wi.n_prompt])
    assert int(np.argmax(aggregate(res.token_scores, wi.feature_tokens))) == city


def test_ig_trapezoid_batches_and_pad_baseline(tiny: LocalModel) -> None:
    """The trapezoid evaluates both ends on the path (no extra passes); batching does not change the
    result; the pad baseline starts from the pad token's embedding."""
    prompt = build_prompt(QUESTION, CONTEXT, features="sentences")
    wi = prepare_input(tiny, prompt, "Paris.")
    rng = np.random.default_rng(0)
    one = IntegratedGradients(rule="trapezoid", steps=6, batch_size=1).run(wi, rng)
    many = IntegratedGradients(rule="trapezoid", steps=6, batch_size=4).run(wi, rng)
    assert one.forward_passes == many.forward_passes == 6
    assert one.token_scores is not None and many.token_scores is not None
    np.testing.assert_allclose(one.token_scores, many.token_scores, rtol=1e-4, atol=1e-6)
    assert one.extras["ig_target_input"] == pytest.approx(
        _reference_logprob(tiny, wi.ids, wi.n_prompt, wi.answer_ids), abs=1e-4
    )

    # Pad baseline: f(baseline) is the prompt with every feature token replaced by the pad token.
    # (The tiny Llama's pad row is zero -- padding_idx -- so give it one that is not.)
    lm = tiny_local_model(seed=3)
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[lm.pad_token_id].normal_(0.0, 0.2)
    wi = prepare_input(lm, prompt, "Paris.")
    pad = IntegratedGradients(baseline="pad", steps=2).run(wi, rng)
    zero = IntegratedGradients(baseline="zero", steps=2).run(wi, rng)
    ids = wi.ids.clone()
    ids[torch.as_tensor(np.flatnonzero(wi.feature_mask))] = lm.pad_token_id
    assert pad.extras["ig_target_baseline"] == pytest.approx(
        _reference_logprob(lm, ids, wi.n_prompt, wi.answer_ids), abs=1e-4
    )
    assert pad.extras["ig_target_baseline"] != pytest.approx(zero.extras["ig_target_baseline"], abs=1e-3)


# --------------------------------------------------------------------------------------------------
# attention


def _eager_attention(lm: LocalModel, ids: torch.Tensor, layer: int) -> torch.Tensor:
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(ids.unsqueeze(0), output_attentions=True)
    finally:
        lm.model.set_attn_implementation(ATTENTION_NAME)
    weights: torch.Tensor = out.attentions[layer][0].float()  # [heads, S, S]
    return weights


@pytest.mark.parametrize("family", ["llama", "gemma3-sliding"])
def test_attention_matches_eager_attention_weights(tiny: LocalModel, family: str) -> None:
    if family == "llama":
        lm = tiny
    else:  # layer 0 has an 8-token sliding window, layer 1 is global
        tok = tiny_tokenizer()
        lm = LocalModel(tiny_gemma3(len(tok), sliding_window=8), tok, name="tiny-gemma3")
    prompt = build_prompt(QUESTION, CONTEXT, features="words")
    wi = prepare_input(lm, prompt, "Paris is the capital.")
    for layer in range(lm.n_layers):
        res = Attention(layer=layer).run(wi, np.random.default_rng(0))
        eager = _eager_attention(lm, wi.ids, layer)[:, wi.answer_positions, : wi.n_prompt].mean((0, 1))
        assert res.token_scores is not None
        np.testing.assert_allclose(res.token_scores, eager.numpy(), rtol=1e-4, atol=1e-6)
        assert res.extras["attention_layer"] == layer
        assert 0 < res.extras["attention_mass_on_prompt"] <= 1 + 1e-6
    assert lm.model.config._attn_implementation == ATTENTION_NAME


def test_attention_default_is_the_last_layer_and_relative_depth_works(tiny: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT)
    wi = prepare_input(tiny, prompt, "Paris.")
    rng = np.random.default_rng(0)
    assert Attention().run(wi, rng).extras["attention_layer"] == tiny.n_layers - 1
    assert Attention(layer=0.0).run(wi, rng).extras["attention_layer"] == 0
    with pytest.raises(ConfigError, match="out of range"):
        Attention(layer=7).run(wi, rng)


# --------------------------------------------------------------------------------------------------
# occlusion and random


def test_occlusion_equals_direct_rescoring(tiny: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT, features="words")
    answer = "Paris is the capital."
    res = _run(Occlusion(), tiny, prompt, answer)
    answer_ids = tiny.tokenizer(answer, add_special_tokens=False)["input_ids"]
    m = prompt.n_features
    direct = []
    for keep in [np.ones(m, bool), *(np.arange(m) != i for i in range(m))]:
        ids = tokenize_prompt(tiny, prompt.render(keep)).ids
        seq = torch.tensor(ids + answer_ids)
        direct.append(_reference_logprob(tiny, seq, len(ids), answer_ids))
    expected = direct[0] - np.array(direct[1:])  # drop in mean log p = increase of mean NLL
    np.testing.assert_allclose(res.coefficients, expected, atol=2e-5)
    assert res.surrogate_sequences == m + 1
    assert res.extras["target_logprob"] == pytest.approx(direct[0], abs=1e-5)
    direct_run = Occlusion().run(prepare_input(tiny, prompt, answer), np.random.default_rng(0))
    assert direct_run.feature_scores is not None
    np.testing.assert_allclose(direct_run.feature_scores, res.coefficients, atol=1e-6)
    bare = prepare_input(tiny, prompt, answer)
    bare.prompt = None
    with pytest.raises(ConfigError, match="prepare_input"):
        Occlusion().run(bare, np.random.default_rng(0))


def test_progress_is_told_the_rows_of_every_forward_pass(tiny: LocalModel) -> None:
    """Every path to the model ticks the bar: the engine's prefixed leave-one-out passes (occlusion:
    M + 1 rows), batched gradient passes (IG trapezoid: one row per step, in batches of 4), the
    full model (saliency: one row). The hook is gone afterwards."""
    import anyio

    prompt = build_prompt(QUESTION, CONTEXT, features="sentences")
    for method, rows in (
        (Occlusion(), prompt.n_features + 1),
        (IntegratedGradients(rule="trapezoid", steps=6, batch_size=4), 6),
        (Saliency(), 1),
    ):
        ticks: list[int] = []
        res = anyio.run(method.attribute, prompt, "Paris.", MethodParts(scorer=tiny, progress=ticks.append))
        assert sum(ticks) == rows == res.surrogate_sequences, method.name
        assert all(t > 0 for t in ticks)
        if isinstance(method, IntegratedGradients):
            assert ticks == [4, 2]
    ticks.clear()
    _run(Saliency(), tiny, prompt, "Paris.")  # no progress: no hook left behind
    assert ticks == [] and not tiny.decoder._forward_hooks

    def broken(n: int) -> None:
        raise RuntimeError("display gone")

    quiet = _run(Occlusion(), tiny, prompt, "Paris.")
    loud = anyio.run(Occlusion().attribute, prompt, "Paris.", MethodParts(scorer=tiny, progress=broken))
    np.testing.assert_array_equal(quiet.coefficients, loud.coefficients)  # a failing bar fails nothing


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_explain_shows_model_rows_for_a_white_box_method(
    tiny: LocalModel, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False) as ex:
        res = await ex.explain(QUESTION, CONTEXT, method=Occlusion(), progress=True)
    err = capsys.readouterr().err
    assert "occlusion" in err and "model rows" in err and f"{res.counts.surrogate_sequences}/" in err


def test_random_is_seeded(tiny: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT, features="words")
    a, b, c = (_run(RandomAttribution(), tiny, prompt, "Paris.", seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    assert not np.allclose(a.coefficients, c.coefficients)
    assert a.coefficients.shape == (prompt.n_features,)
    assert ((a.coefficients >= 0) & (a.coefficients < 1)).all()
    assert a.surrogate_sequences == 0
    # inputs sharing a seed do not share a ranking: with one stream per seed every 3-feature
    # input would rank its features the same way
    orders = set()
    for q in ("Where is Paris?", "Who wrote Hamlet?", "What is water?", "Why is the sky blue?"):
        three = build_prompt(q, "One fact. Two facts. Three facts.", features="sentences")
        orders.add(tuple(np.argsort(_run(RandomAttribution(), tiny, three, "Paris.", 1).coefficients)))
    assert len(orders) > 1


# --------------------------------------------------------------------------------------------------
# errors and the Explainer


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (IntegratedGradients, {"steps": 0}),
        (IntegratedGradients, {"steps": 5000}),
        (IntegratedGradients, {"rule": "simpson"}),
        (IntegratedGradients, {"rule": "trapezoid", "steps": 1}),
        (IntegratedGradients, {"baseline": "mean"}),
        (IntegratedGradients, {"scope": "all"}),
        (IntegratedGradients, {"batch_size": 0}),
        (Attention, {"layer": 1.5}),
        (Attention, {"layer": True}),
        (Attention, {"layer": "last"}),
        (Saliency, {"steps": 4}),
        (Occlusion, {"target": "kl"}),
        (RandomAttribution, {"seed": 1}),
    ],
)
def test_bad_options_raise_config_error(cls: type[WhiteboxMethod], options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=cls.name):
        cls(**options)


ALL_METHODS = [Saliency, InputXGradient, IntegratedGradients, Attention, Occlusion, RandomAttribution]


@pytest.mark.parametrize("cls", ALL_METHODS)
def test_a_scorer_that_is_not_a_local_model_is_refused(cls: type[WhiteboxMethod]) -> None:
    import anyio

    class RemoteScorer:
        name = "remote"

        def score(self, request: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(ConfigError, match="local model"):
        anyio.run(
            cls().attribute, build_prompt(QUESTION, CONTEXT), "Paris.", MethodParts(scorer=RemoteScorer())
        )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("cls", ALL_METHODS)
async def test_explanation_json_round_trip(
    tiny: LocalModel, cls: type[WhiteboxMethod], anyio_backend: str
) -> None:
    # Any: WhiteboxMethod declares ``name`` as a ClassVar, the Method protocol as an instance attribute.
    method: Any = cls(steps=8) if cls is IntegratedGradients else cls()
    async with Explainer(closed=TestModel("Paris."), surrogate=tiny, cache=False, method=method) as ex:
        res = await ex.explain_prompt(build_prompt(QUESTION, CONTEXT, features="sentences"))
    assert res.method == cls.name and res.config["kind"] == cls.name
    assert len(res.coefficients) == 2 and np.isfinite(res.coefficients).all()
    assert sum(res.attributions) == pytest.approx(1.0) or not any(res.coefficients)
    passes = {IntegratedGradients: 8 + 2, Occlusion: 2 + 1, RandomAttribution: 0}.get(cls, 1)
    assert res.counts.surrogate_sequences == passes
    assert Explanation.model_validate_json(res.model_dump_json()) == res

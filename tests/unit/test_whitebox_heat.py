"""HEAT (HETA) on tiny in-process models: the planted dependency, Hessian-vector products against
exact Hessians (a small function and one token block of a real model), the rollout, the
information term against a direct computation, options, errors and the Explainer round trip."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import anyio
import numpy as np
import pytest
import torch

from attribsdk import ConfigError, Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.methods.base import MethodParts
from attribsdk.scoring.capture import ATTENTION_NAME
from attribsdk.scoring.models import LocalModel
from attribsdk.whitebox import answer_logits, embed, prepare_input
from attribsdk.whitebox.heat import (
    Heat,
    attention_rollout,
    block_curvature_hutchinson,
    block_curvature_low_rank,
    eager_attention,
    make_hvp,
    target_graph,
)
from attribsdk.whitebox.heat import _windows as heat_windows
from tests.tiny_models import planted_example, planted_model

#: Held-out planted prompts (the model trained on seeds 0-299), Paris and Berlin alike: deleting
#: the city flips the answer to "Unknown" (tests/unit/test_whitebox_core.py checks it).
PLANTED_SEEDS = [1000, 1001, 1002, 1003, 1004]


@pytest.fixture(scope="module")
def planted() -> LocalModel:
    return planted_model()


def _attribute(method: Heat, lm: LocalModel, prompt: Any, answer: str, seed: int = 0) -> Any:
    return anyio.run(method.attribute, prompt, answer, MethodParts(scorer=lm, seed=seed))


# --------------------------------------------------------------------------------------------------
# planted dependency


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"beta": 1.0, "gamma": 0.0},
        {"beta": 0.0, "gamma": 1.0},
        {"estimator": "low_rank", "rank": 8},
        {"masking": "token"},
        {"window": 4},
        {"normalize": False},
    ],
    ids=["defaults", "curvature-only", "information-only", "low-rank", "token-masking", "windowed", "raw"],
)
def test_planted_city_is_ranked_first(planted: LocalModel, options: dict[str, Any]) -> None:
    """Measured on held-out seeds 1000-1019: the city ranks first on 20/20 with the defaults and
    with ``layers=1`` (the last of 2 layers alone)."""
    method = Heat(**options)
    for seed in PLANTED_SEEDS:
        prompt, answer, city = planted_example(seed)
        result = _attribute(method, planted, prompt, answer, seed=seed)
        coef = result.coefficients
        assert np.isfinite(coef).all() and (coef >= 0).all()
        assert int(np.argmax(coef)) == city, (seed, coef)
        info = np.asarray(result.extras["heat_information"])
        if options.get("masking", "feature") == "feature":  # the dependency itself, re-checked
            assert info[city] > 1.0 and np.delete(info, city).max() < 0.01, info


def test_components_and_counts_are_reported(planted: LocalModel) -> None:
    prompt, answer, city = planted_example(PLANTED_SEEDS[0])
    result = _attribute(Heat(probes=2, colors=3), planted, prompt, answer)
    extras = result.extras
    m = prompt.n_features
    assert extras["heat_hvps"] == 2 * 3 and extras["heat_depth"] == 0 and extras["heat_windows"] == 1
    assert -0.1 < extras["heat_target_logprob"] < 0.0  # the planted answer is near certain
    assert 0.0 < extras["heat_flow_on_features"] < 1.0
    flow = np.asarray(extras["heat_flow"])
    assert flow.shape == (m,) and flow.sum() == pytest.approx(1.0)  # renormalised over the features
    for name in ("heat_flow", "heat_curvature", "heat_information"):
        assert int(np.argmax(extras[name])) == city, name
    # one eager pass + the reference and M masked prompts of the information term
    assert result.surrogate_sequences == 1 + (m + 1)


def test_same_seed_same_scores_and_probes_change_them(planted: LocalModel) -> None:
    prompt, answer, _ = planted_example(PLANTED_SEEDS[1])
    a = _attribute(Heat(colors=2), planted, prompt, answer, seed=3).coefficients
    b = _attribute(Heat(colors=2), planted, prompt, answer, seed=3).coefficients
    c = _attribute(Heat(colors=2), planted, prompt, answer, seed=4).coefficients
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------------------------------
# Hessian-vector products against exact Hessians


def _coupled(x: torch.Tensor) -> torch.Tensor:
    """A smooth scalar of ``x`` ([3 tokens, 2 dims]) with cross-token curvature."""
    cross = torch.sin(x[0] @ x[1]) + (x[1] * x[2]).sum() ** 2 + x[0, 0] ** 2 * x[2, 1]
    return cross + torch.exp(0.3 * x).sum()


def _exact_blocks(fn: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full Hessian [6, 6] and, per token, ``‖H_ii‖_F`` and ``(Σ_j ‖H_ij‖²_F)^½``."""
    full = torch.autograd.functional.hessian(fn, x).reshape(6, 6)  # type: ignore[no-untyped-call]
    blocks = full.reshape(3, 2, 3, 2)
    diag = torch.stack([blocks[i, :, i, :].norm() for i in range(3)])
    row = torch.stack([blocks[i].norm() for i in range(3)])
    return full, diag, row


def test_hvp_equals_the_exact_hessian_times_v() -> None:
    x = torch.tensor([[0.3, -0.7], [1.1, 0.4], [-0.5, 0.9]], dtype=torch.float64, requires_grad=True)
    full, _, _ = _exact_blocks(_coupled, x.detach())
    hvp = make_hvp(_coupled(x), x)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(3, 2, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(hvp(v).reshape(6), full @ v.reshape(6), atol=1e-10, rtol=1e-10)


def test_block_curvature_estimators_against_the_exact_blocks() -> None:
    x = torch.tensor([[0.3, -0.7], [1.1, 0.4], [-0.5, 0.9]], dtype=torch.float64, requires_grad=True)
    _, diag, row = _exact_blocks(_coupled, x.detach())
    hvp = make_hvp(_coupled(x), x)
    tokens = np.arange(3)
    gen = torch.Generator().manual_seed(0)
    assert float(((row - diag) / diag).min()) > 0.25  # the two quantities below are far apart
    # One token per group: the authors' block-restricted probes, unbiased for ‖H_ii‖²_F. (Over 20
    # generator seeds the largest relative error at 500 probes is 7%.)
    est, used = block_curvature_hutchinson(hvp, (3, 2), tokens, probes=500, colors=3, generator=gen)
    assert used == 500 * 3
    torch.testing.assert_close(est.double(), diag, rtol=0.1, atol=0.0)
    # One group for all tokens: the estimate is the whole block row (the bias the docs state).
    est, _ = block_curvature_hutchinson(hvp, (3, 2), tokens, probes=500, colors=1, generator=gen)
    torch.testing.assert_close(est.double(), row, rtol=0.1, atol=0.0)
    # Low rank at full rank is exact; tokens outside the set get 0.
    est, used = block_curvature_low_rank(hvp, (3, 2), tokens, rank=6, generator=gen)
    assert used == 12
    torch.testing.assert_close(est.double(), diag, rtol=1e-5, atol=1e-6)
    est, _ = block_curvature_low_rank(hvp, (3, 2), np.array([0, 2]), rank=4, generator=gen)
    assert est[1] == 0.0


def test_separable_function_is_exact_with_a_single_probe() -> None:
    # Diagonal Hessian, no cross-token terms: ‖H_ii ρ‖² = ‖H_ii‖²_F for every Rademacher ρ.
    coef = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.4], [-0.3, 0.8], [1.0, -0.6]], dtype=torch.float64, requires_grad=True)
    hvp = make_hvp((coef * x**3).sum(), x)
    expected = (6 * coef * x.detach()).norm(dim=-1)
    est, used = block_curvature_hutchinson(
        hvp, (3, 2), np.arange(3), probes=1, colors=1, generator=torch.Generator().manual_seed(1)
    )
    assert used == 1
    torch.testing.assert_close(est.double(), expected, rtol=1e-6, atol=1e-9)


def test_model_hvp_matches_the_hessian_of_one_token_block(planted: LocalModel) -> None:
    """The eager, hooked pass HEAT differentiates gives the model's own target and its exact
    Hessian on one token's 64-dim embedding block (torch.autograd.functional.hessian)."""
    prompt, answer, city = planted_example(PLANTED_SEEDS[0])
    wi = prepare_input(planted, prompt, answer)
    token = int(wi.feature_tokens[city][0])  # type: ignore[index]
    with torch.no_grad():  # the model's own forward, SDPA attention, full-sequence logits
        logits = planted.model(wi.ids.unsqueeze(0)).logits[0, wi.answer_positions].float()
    reference = torch.log_softmax(logits, -1).gather(-1, wi.answer_tensor.view(-1, 1)).mean()
    base = embed(wi).detach()

    def target_of_block(z: torch.Tensor) -> torch.Tensor:
        x = base.clone()
        x[0, token] = z
        out, _ = answer_logits(wi, x)
        return torch.log_softmax(out[0], -1).gather(-1, wi.answer_tensor.view(-1, 1)).mean()

    gen = torch.Generator().manual_seed(0)
    with eager_attention(planted):
        with target_graph(planted, wi.ids, wi.n_prompt, wi.answer_ids, depth=0) as graph:
            assert float(graph.target.detach()) == pytest.approx(float(reference), abs=1e-5)
            torch.testing.assert_close(graph.hidden, base[0])
            assert len(graph.attentions) == planted.n_layers
            for attn in graph.attentions:  # eager weights: causal rows summing to 1
                torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[0]))
                assert float(attn.triu(1).abs().max()) == 0.0
            v = torch.zeros_like(graph.hidden)
            v[token] = torch.randn(v.shape[1], generator=gen)
            hv = graph.hvp(v)
        block = torch.autograd.functional.hessian(  # type: ignore[no-untyped-call]
            target_of_block, base[0, token].clone()
        )
    assert planted.model.config._attn_implementation == ATTENTION_NAME
    torch.testing.assert_close(hv[token], block @ v[token], rtol=1e-3, atol=1e-5)  # fp32 double backward
    assert float(hv[token].norm()) > 0.0


def test_layer_sampling_differentiates_the_residual_stream_of_the_last_layers(planted: LocalModel) -> None:
    prompt, answer, _ = planted_example(PLANTED_SEEDS[0])
    wi = prepare_input(planted, prompt, answer)
    with eager_attention(planted):
        with target_graph(planted, wi.ids, wi.n_prompt, wi.answer_ids, depth=0) as full:
            t0 = float(full.target.detach())
        with target_graph(planted, wi.ids, wi.n_prompt, wi.answer_ids, depth=1) as last:
            assert float(last.target.detach()) == pytest.approx(t0, abs=1e-6)  # same function value
            assert len(last.attentions) == 1
            assert not torch.allclose(last.hidden, embed(wi).detach()[0])  # layer 1's input
        with pytest.raises(ConfigError), target_graph(planted, wi.ids, wi.n_prompt, wi.answer_ids, depth=2):
            pass
    assert planted.model.config._attn_implementation == ATTENTION_NAME
    result = _attribute(Heat(layers=5), planted, prompt, answer)  # clamped to the 2 layers
    assert result.extras["heat_depth"] == 0
    assert _attribute(Heat(layers=1), planted, prompt, answer).extras["heat_depth"] == 1


# --------------------------------------------------------------------------------------------------
# rollout, windows, information


def test_rollout_rows_sum_to_one_and_stay_causal() -> None:
    gen = torch.Generator().manual_seed(0)
    seq, heads = 7, 3
    causal = torch.ones(seq, seq).tril().bool()
    layers = []
    for _ in range(4):
        scores = torch.randn(heads, seq, seq, generator=gen).masked_fill(~causal, float("-inf"))
        layers.append(torch.softmax(scores, -1))
    rows = torch.arange(seq)
    rolled = attention_rollout(layers, rows)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(seq))
    assert float(rolled.min()) >= 0.0 and float(rolled.triu(1).abs().max()) == 0.0
    # the same as multiplying the full residual-mixed, head-averaged matrices bottom-up
    product = torch.eye(seq)
    for attn in layers:
        mixed = 0.5 * attn.mean(0) + 0.5 * torch.eye(seq)
        product = (mixed / mixed.sum(-1, keepdim=True)) @ product
    torch.testing.assert_close(rolled, product)
    torch.testing.assert_close(attention_rollout(layers, torch.tensor([6, 2])), product[[6, 2]])
    with pytest.raises(ConfigError):
        attention_rollout([], rows)


def test_windows_cover_the_feature_span() -> None:
    assert heat_windows(3, 10, None, 0.5) == [(3, 10)]
    assert heat_windows(3, 10, 7, 0.5) == [(3, 10)]
    wins = heat_windows(3, 20, 6, 0.5)
    assert wins[0][0] == 3 and wins[-1][1] == 20
    assert all(hi - lo <= 6 for lo, hi in wins)
    assert all(b[0] - a[0] == 3 for a, b in itertools.pairwise(wins))  # stride 6·(1-0.5)
    covered = set().union(*(range(lo, hi) for lo, hi in wins))
    assert covered == set(range(3, 20))


def test_token_masking_information_equals_a_direct_computation(planted: LocalModel) -> None:
    prompt, answer, city = planted_example(PLANTED_SEEDS[2])
    wi = prepare_input(planted, prompt, answer)
    result = _attribute(Heat(masking="token", batch_size=3), planted, prompt, answer)
    base = embed(wi).detach()
    with torch.no_grad():
        ref = torch.log_softmax(planted.model(inputs_embeds=base).logits[0, wi.answer_positions].float(), -1)
        expected = []
        for idx in wi.feature_tokens:
            total = 0.0
            for token in idx if idx is not None else []:
                x = base.clone()
                x[0, int(token)] = 0.0
                out = planted.model(inputs_embeds=x).logits[0, wi.answer_positions].float()
                lp = torch.log_softmax(out, -1)
                total += max(0.0, float((ref.exp() * (ref - lp)).sum(-1).mean()))
            expected.append(total)
    np.testing.assert_allclose(result.extras["heat_information"], expected, rtol=1e-3, atol=1e-6)
    assert int(np.argmax(expected)) == city


# --------------------------------------------------------------------------------------------------
# options, errors, restoring the model, the Explainer


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 0.0, "gamma": 0.0},
        {"beta": -0.1},
        {"gamma": float("nan")},
        {"probes": 0},
        {"probes": True},
        {"colors": 0},
        {"rank": 0},
        {"estimator": "exact"},
        {"masking": "word"},
        {"layers": 0},
        {"window": 1},
        {"window_overlap": 1.0},
        {"batch_size": 0},
        {"unknown": 1},
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Heat(**options)


def test_feature_masking_needs_the_prompt_and_the_model_is_restored(planted: LocalModel) -> None:
    prompt, answer, _ = planted_example(PLANTED_SEEDS[0])
    wi = dataclasses.replace(prepare_input(planted, prompt, answer), prompt=None)
    with pytest.raises(ConfigError, match="re-renders the prompt"):
        Heat().run(wi, np.random.default_rng(0))
    scores = Heat(masking="token").run(wi, np.random.default_rng(0))
    assert scores.token_scores is not None and scores.token_scores.shape == (wi.n_prompt,)
    assert not scores.token_scores[~wi.feature_mask].any()  # only feature tokens are scored
    assert planted.model.config._attn_implementation == ATTENTION_NAME
    with pytest.raises(RuntimeError, match="boom"), eager_attention(planted):
        raise RuntimeError("boom")
    assert planted.model.config._attn_implementation == ATTENTION_NAME


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_explainer_end_to_end_json_round_trip(planted: LocalModel, anyio_backend: str) -> None:
    prompt, answer, city = planted_example(PLANTED_SEEDS[3])
    method: Any = Heat(colors=4)
    async with Explainer(closed=TestModel("unused"), surrogate=planted, cache=False, method=method) as ex:
        res = await ex.explain_prompt(prompt, answer=answer)
    assert res.method == "heat" and res.config["kind"] == "heat" and res.config["colors"] == 4
    assert len(res.coefficients) == prompt.n_features and int(np.argmax(res.coefficients)) == city
    assert sum(res.attributions) == pytest.approx(1.0)
    assert res.counts.surrogate_sequences == 1 + prompt.n_features + 1
    assert Explanation.model_validate_json(res.model_dump_json()) == res

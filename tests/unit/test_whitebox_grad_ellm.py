"""Grad-ELLM on tiny in-process models: the planted dependency (and why the paper's ReLU misses it),
the value/head layout and the whole map against an independent re-computation, the loosened
attention, options, errors and the Explainer round trip."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
import torch

from attribsdk import ConfigError, Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.methods.base import MethodParts
from attribsdk.scoring.capture import ATTENTION_NAME, recording
from attribsdk.scoring.models import LocalModel
from attribsdk.whitebox import prepare_input
from attribsdk.whitebox.grad_ellm import GradELLM, head_values, loosened_attention, resolve_layers
from tests.tiny_models import planted_example, planted_model

#: Held-out planted prompts (the model trained on seeds 0-299), Paris and Berlin alike: deleting
#: the city flips the answer to "Unknown" (tests/unit/test_whitebox_core.py checks it).
PLANTED_SEEDS = [1000, 1001, 1002, 1003, 1004]


@pytest.fixture(scope="module")
def planted() -> LocalModel:
    return planted_model()


def _attribute(method: GradELLM, lm: LocalModel, prompt: Any, answer: str) -> Any:
    return anyio.run(method.attribute, prompt, answer, MethodParts(scorer=lm))


# --------------------------------------------------------------------------------------------------
# planted dependency


def test_planted_city_carries_the_largest_but_negative_linear_contribution(planted: LocalModel) -> None:
    """Measured on held-out seeds 1000-1019: signed scores (``rectify="none"``) put the city last,
    i.e. most negative, on 20/20; magnitudes (``"abs"``) rank it first on 20/20; the paper's ReLU
    ranks it first on 0/20 (2nd-9th of 9). The answer logit is saturated along the city's attention
    output (module docs), so the gradient sees a negative slope where removing the city flips the
    answer."""
    signed, magnitude, relu = GradELLM(rectify="none"), GradELLM(rectify="abs"), GradELLM()
    for seed in PLANTED_SEEDS:
        prompt, answer, city = planted_example(seed)
        s = _attribute(signed, planted, prompt, answer).coefficients
        assert int(np.argmin(s)) == city and s[city] < 0, (seed, s)
        a = _attribute(magnitude, planted, prompt, answer).coefficients
        assert int(np.argmax(a)) == city, (seed, a)
        r = _attribute(relu, planted, prompt, answer).coefficients
        # the paper's ReLU drops the city's (negative) layer maps: it never comes out on top here
        assert (r >= 0).all() and r[city] < r.max(), (seed, r)


# --------------------------------------------------------------------------------------------------
# numeric checks against independent computations


def _capture(lm: LocalModel, wi: Any) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], Any, Any]:
    """One forward pass with autograd: o_proj inputs and v_proj outputs of every layer, the
    recorder's post-RoPE queries/keys, and the answer tokens' logits ``[T]``."""
    outs: dict[int, torch.Tensor] = {}
    vals: dict[int, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(lm.decoder.layers):
        handles.append(
            block.self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, layer=layer: outs.__setitem__(layer, a[0])
            )
        )
        handles.append(
            block.self_attn.v_proj.register_forward_hook(
                lambda m, a, o, layer=layer: vals.__setitem__(layer, o)
            )
        )
    wanted = {(layer, w) for layer in range(lm.n_layers) for w in ("query", "key")}
    try:
        with torch.enable_grad(), recording(wanted) as rec:  # type: ignore[arg-type]
            logits = lm.model(wi.ids.unsqueeze(0)).logits[0, wi.answer_positions].float()
            picked = logits.gather(-1, wi.answer_tensor.view(-1, 1)).squeeze(-1)
    finally:
        for h in handles:
            h.remove()
    return outs, vals, rec, picked


def test_attention_output_decomposes_over_head_values(planted: LocalModel) -> None:
    """``o_t[h·D + d] = Σ_i softmax(q k·scaling)_h[t, i] · head_values(v)[h, i, d]``: the layout
    Grad-ELLM's channel sum relies on (grouped-query heads included: 4 query / 2 KV heads)."""
    prompt, answer, _ = planted_example(PLANTED_SEEDS[0])
    wi = prepare_input(planted, prompt, answer)
    outs, vals, rec, _ = _capture(planted, wi)
    for layer, block in enumerate(planted.decoder.layers):
        q, k = rec.tensors[(layer, "query")][0].detach(), rec.tensors[(layer, "key")][0].detach()
        heads, kv, dim = q.shape[0], k.shape[0], q.shape[-1]
        keys = k.repeat_interleave(heads // kv, 0)
        scores = q @ keys.transpose(1, 2) * block.self_attn.scaling
        causal = torch.ones(scores.shape[-1], scores.shape[-1]).tril().bool()
        attn = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)  # [H, S, S]
        values = head_values(vals[layer][0].detach(), kv, heads)  # [H, S, D]
        rebuilt = torch.einsum("hts,hsd->thd", attn, values).reshape(-1, heads * dim)
        torch.testing.assert_close(rebuilt, outs[layer][0].detach(), atol=1e-5, rtol=1e-4)


def test_map_equals_an_independent_recomputation(planted: LocalModel) -> None:
    """Plain per-step gradients, per-head loops and explicit min-max cosine maps reproduce the
    method's vectorised computation (both layers, both answer tokens, default options)."""
    prompt, answer, _ = planted_example(PLANTED_SEEDS[1])
    wi = prepare_input(planted, prompt, answer)
    outs, vals, rec, picked = _capture(planted, wi)
    n = wi.n_prompt
    total = torch.zeros(n, dtype=torch.float64)
    for t, p in enumerate(wi.answer_positions.tolist()):
        grads = torch.autograd.grad(picked[t], [outs[0], outs[1]], retain_graph=True)
        step = torch.zeros(n, dtype=torch.float64)
        for layer, grad in enumerate(grads):
            q, k = rec.tensors[(layer, "query")][0].detach(), rec.tensors[(layer, "key")][0].detach()
            heads, kv, dim = q.shape[0], k.shape[0], q.shape[-1]
            v = vals[layer][0].detach().view(-1, kv, dim)  # [S, kv, D]
            w = grad[0, p].view(heads, dim)
            layer_map = torch.zeros(n, dtype=torch.float64)
            for h in range(heads):
                kh = k[h // (heads // kv), : p + 1]
                cos = (kh @ q[h, p]) / (kh.norm(dim=-1) * q[h, p].norm())
                lam = (cos - cos.min()) / (cos.max() - cos.min())
                for i in range(n):
                    layer_map[i] += float(lam[i] * (w[h] @ v[i, h // (heads // kv)]))
            step += layer_map.clamp_min(0.0)
        total += step / step.abs().sum()
    expected = (total / wi.n_answer).numpy()
    scores = GradELLM(backward_batch=1).run(wi, np.random.default_rng(0)).token_scores
    assert scores is not None
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-7)
    batched = GradELLM(backward_batch=8).run(wi, np.random.default_rng(0)).token_scores
    assert batched is not None
    np.testing.assert_allclose(batched, scores, rtol=1e-6, atol=1e-9)
    assert scores.sum() == pytest.approx(1.0) and (scores >= 0).all()


def test_loosened_attention_is_a_per_head_min_max_over_visible_keys() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 8, generator=gen), torch.randn(3, 10, 8, generator=gen)
    lam = loosened_attention(q, k, 6, kind="cosine")
    assert lam.shape == (3, 10) and float(lam[:, 7:].abs().max()) == 0.0  # causal
    torch.testing.assert_close(lam[:, :7].amin(-1), torch.zeros(3))
    torch.testing.assert_close(lam[:, :7].amax(-1), torch.ones(3))
    # cosine ignores key norms, raw scores do not
    scaled = k * torch.rand(3, 10, 1, generator=gen).add(0.5)
    torch.testing.assert_close(loosened_attention(q, scaled, 6), lam)
    assert not torch.allclose(
        loosened_attention(q, scaled, 6, kind="scores"), loosened_attention(q, k, 6, kind="scores")
    )
    windowed = loosened_attention(q, k, 6, kind="scores", window=3)  # keys 4, 5, 6
    assert float(windowed[:, :4].abs().max()) == 0.0 and float(windowed[:, 4:7].amax(-1).min()) == 1.0
    flat = loosened_attention(torch.ones(1, 2), torch.ones(1, 4, 2), 2)
    torch.testing.assert_close(flat, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ConfigError):
        loosened_attention(q, k, 6, kind="softmax")


# --------------------------------------------------------------------------------------------------
# options and errors


def test_resolve_layers() -> None:
    assert resolve_layers(4, None, 2) == [0, 1]
    assert resolve_layers(2, None, 30) == [28, 29]
    assert resolve_layers(4, (-1, 0), 30) == [0, 29]
    with pytest.raises(ConfigError):
        resolve_layers(4, (30,), 30)
    with pytest.raises(ConfigError):
        resolve_layers(4, (-1, 29), 30)  # the same layer twice


@pytest.mark.parametrize(
    "options",
    [
        {"n_layers": 0},
        {"layers": ()},
        {"layers": (0, 0)},
        {"layers": (True,)},
        {"spatial": "softmax"},
        {"rectify": "square"},
        {"backward_batch": 0},
        {"unknown": 1},
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GradELLM(**options)


def test_layers_outside_the_model_raise_config_error_and_leave_no_hooks(planted: LocalModel) -> None:
    prompt, answer, _ = planted_example(PLANTED_SEEDS[0])
    with pytest.raises(ConfigError, match="out of range"):
        _attribute(GradELLM(layers=(5,)), planted, prompt, answer)
    result = _attribute(GradELLM(layers=(-1,), spatial="scores"), planted, prompt, answer)
    assert result.extras["grad_ellm_layers"] == "1" and np.isfinite(result.coefficients).all()
    for block in planted.decoder.layers:
        assert not block.self_attn.o_proj._forward_pre_hooks and not block.self_attn.v_proj._forward_hooks
    assert planted.model.config._attn_implementation == ATTENTION_NAME


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_explainer_end_to_end_json_round_trip(planted: LocalModel, anyio_backend: str) -> None:
    prompt, answer, _ = planted_example(PLANTED_SEEDS[2])
    method: Any = GradELLM(rectify="abs")
    async with Explainer(closed=TestModel("unused"), surrogate=planted, cache=False, method=method) as ex:
        res = await ex.explain_prompt(prompt, answer=answer)
    assert res.method == "grad-ellm" and res.config["kind"] == "grad-ellm" and res.config["rectify"] == "abs"
    assert len(res.coefficients) == prompt.n_features and min(res.coefficients) >= 0.0
    assert sum(res.attributions) == pytest.approx(1.0) and res.counts.surrogate_sequences == 1
    assert Explanation.model_validate_json(res.model_dump_json()) == res

"""GiLOT: the transport solvers against exact small cases, the batched marginals against a naive
forward pass per prefix, the planted dependency, option checks and an Explanation end to end."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ot
import pytest
import torch

from attribsdk import ConfigError, Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.errors import ContextWindowError, InputError
from attribsdk.prompt import build_prompt
from attribsdk.scoring.engine import BatchLimits
from attribsdk.scoring.models import LocalModel
from attribsdk.whitebox import aggregate, prepare_input
from attribsdk.whitebox.gilot import (
    Distance,
    GiLOT,
    PrefixTree,
    _Input,
    _Marginals,
    beam_prefixes,
    cosine_cost,
    distribution_distance,
    ipot,
    sinkhorn,
)
from tests.tiny_models import (
    PLANTED_QUESTION,
    planted_example,
    planted_model,
    tiny_gemma3,
    tiny_local_model,
    tiny_tokenizer,
)

# --------------------------------------------------------------------------------------------------
# the transport solvers

LINE = np.array([0.0, 1.0, 3.0])
LINE_COST = np.abs(LINE[:, None] - LINE[None, :])
TWO_COST = np.array([[0.0, 0.8], [0.8, 0.0]])

#: (a, b, cost, exact transport cost worked out by hand)
HAND_CASES = [
    # two points 0.8 apart: 0.3 of the mass has to move
    (np.array([0.7, 0.3]), np.array([0.4, 0.6]), TWO_COST, 0.3 * 0.8),
    # points at 0, 1, 3: W1 = ∫ |F_a - F_b| = 0.5 * 1 + 0.5 * 2
    (np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]), LINE_COST, 1.5),
    # all the mass from 0 to 3
    (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]), LINE_COST, 3.0),
]


def _batch(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(x, dtype=np.float64))[None] for x in arrays]


@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_solvers_match_hand_computed_transport_costs(case: int) -> None:
    a, b, cost, exact = HAND_CASES[case]
    assert distribution_distance(a, b, cost, "emd") == pytest.approx(exact, abs=1e-12)
    assert distribution_distance(a, b, cost, "ipot") == pytest.approx(exact, abs=1e-5)
    # entropic OT with a small ε is close to the exact cost, and equals POT's Sinkhorn
    assert distribution_distance(a, b, cost, "sinkhorn", reg=0.01) == pytest.approx(exact, abs=1e-3)
    # (POT needs positive masses: give it the same problem without the zero-mass points)
    rows, cols = a > 0, b > 0
    for reg in (0.01, 0.1):
        ours = float(sinkhorn(*_batch(cost, a, b), reg=reg, tol=1e-12, max_iter=5000)[0])
        pot = float(ot.sinkhorn2(a[rows], b[cols], cost[rows][:, cols], reg, stopThr=1e-12, numItermax=5000))
        assert ours == pytest.approx(pot, rel=1e-6)


def test_batched_solvers_handle_padding_and_match_exact_ot() -> None:
    # the three hand cases padded into one batch (zero mass on the padding points)
    n = 3
    costs, a_s, b_s = np.zeros((3, n, n)), np.zeros((3, n)), np.zeros((3, n))
    for i, (a, b, cost, _) in enumerate(HAND_CASES):
        k = len(a)
        costs[i, :k, :k], a_s[i, :k], b_s[i, :k] = cost, a, b
    c_t, a_t, b_t = (torch.from_numpy(x) for x in (costs, a_s, b_s))
    exact = np.array([case[3] for case in HAND_CASES])
    np.testing.assert_allclose(ipot(c_t, a_t, b_t).numpy(), exact, atol=1e-5)
    assert torch.isfinite(sinkhorn(c_t, a_t, b_t, reg=0.01)).all()

    # random 30-point problems with a cosine cost: IPOT reaches POT's exact network simplex
    rng = np.random.default_rng(0)
    costs = np.stack([cosine_cost(rng.normal(size=(30, 8))) for _ in range(4)])
    a_s = rng.dirichlet(np.ones(30), size=4)
    b_s = rng.dirichlet(np.ones(30), size=4)
    exact = np.array([ot.emd2(a_s[i], b_s[i], costs[i]) for i in range(4)])
    got = ipot(*(torch.from_numpy(x) for x in (costs, a_s, b_s)), tol=1e-10, max_iter=5000).numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    with pytest.raises(InputError):
        ipot(torch.zeros(2, 3, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_distance_is_zero_for_identical_distributions_and_symmetric_for_transport() -> None:
    rng = np.random.default_rng(1)
    cost = cosine_cost(rng.normal(size=(12, 16)))
    a, b = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12) * 0.3)
    exact: tuple[Distance, ...] = ("emd", "ipot", "kl")
    for distance in exact:
        assert distribution_distance(a, a, cost, distance) == pytest.approx(0.0, abs=1e-8)
    # entropic OT blurs even a distribution onto itself: small, positive, bounded by ε·log(n²)
    blur = distribution_distance(a, a, cost, "sinkhorn", reg=0.05)
    assert 0.0 < blur < 0.05 * math.log(12 * 12)
    transport: tuple[Distance, ...] = ("emd", "ipot", "sinkhorn")
    for distance in transport:
        ab = distribution_distance(a, b, cost, distance, tol=1e-10, max_iter=5000)
        ba = distribution_distance(b, a, cost, distance, tol=1e-10, max_iter=5000)
        assert ab == pytest.approx(ba, rel=1e-6) and ab > 0.01
    # KL is a divergence, not a distance
    assert abs(distribution_distance(a, b, cost, "kl") - distribution_distance(b, a, cost, "kl")) > 1e-3
    with pytest.raises(InputError):
        distribution_distance(a, b[:5], cost)
    with pytest.raises(InputError):
        distribution_distance(-a, b, cost)


def test_cosine_cost() -> None:
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    cost = cosine_cost(emb)
    assert cost.shape == (5, 5) and np.all(np.diag(cost) == 0.0)
    assert cost[0, 1] == pytest.approx(0.0) and cost[0, 2] == pytest.approx(2.0)
    assert cost[0, 3] == pytest.approx(1.0) and cost[4, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(cost, cost.T)


# --------------------------------------------------------------------------------------------------
# prefixes and batched marginals


def _naive_marginals(
    lm: LocalModel, ids: list[int], tree: PrefixTree, n_positions: int, ref_logp: dict[int, float] | None
) -> tuple[torch.Tensor, dict[int, float]]:
    """One full forward pass per prefix node, no batching, no cache: ``[J, V]`` float64 and each
    node's log-probability given ``ids``."""
    logps: dict[int, torch.Tensor] = {}
    for node in range(tree.n_nodes):
        tokens: list[int] = []
        m = node
        while m > 0:
            tokens.append(tree.token[m])
            m = tree.parent[m]
        with torch.no_grad():
            logits = lm.model(torch.tensor([ids + tokens[::-1]])).logits[0, -1].double()
        logps[node] = torch.log_softmax(logits, -1)
    node_logp = {0: 0.0}
    for node in range(1, tree.n_nodes):
        node_logp[node] = node_logp[tree.parent[node]] + float(logps[tree.parent[node]][tree.token[node]])
    out = torch.zeros(n_positions, lm.vocab_size, dtype=torch.float64)
    for depth in range(n_positions):
        nodes = [n for n in range(tree.n_nodes) if tree.depth[n] == depth]
        weights = torch.softmax(torch.tensor([(ref_logp or node_logp)[n] for n in nodes]), 0)
        for w, n in zip(weights, nodes, strict=True):
            out[depth] += w * logps[n].exp()
    return out, node_logp


@pytest.mark.parametrize("family", ["llama", "gemma3-sliding"])
@pytest.mark.parametrize("weights", ["masked", "reference"])
def test_batched_marginals_match_one_forward_per_prefix(family: str, weights: str) -> None:
    if family == "llama":
        lm = tiny_local_model(seed=1)
    else:  # a sliding window shorter than the prompt: the cached block must keep true distances
        tok = tiny_tokenizer()
        lm = LocalModel(tiny_gemma3(len(tok), sliding_window=8), tok, name="tiny-gemma3")
    lm.batch_limits = BatchLimits(max_sequences=3, max_tokens=120)  # several micro-batches
    prompt = build_prompt("Capital?", "Paris is in France. Berlin is in Germany.", features="words")
    wi = prepare_input(lm, prompt, "Paris.")
    ids = wi.ids[: wi.n_prompt].tolist()
    with torch.inference_mode():
        tree = beam_prefixes(lm, ids, beams=4, depth=3)
    assert tree.max_depth == 3 and all(tree.depth.count(d) == 4 for d in (1, 2, 3))
    assert not {lm.tokenizer.eos_token_id} & set(tree.token)
    assert len(tree.paths()) > 1  # several prefix rows share each masked prompt's cache
    # depth 1 holds the 4 most likely first tokens
    with torch.no_grad():
        first = lm.model(torch.tensor([ids])).logits[0, -1]
    first[lm.tokenizer.eos_token_id] = -math.inf
    depth1 = {t for t, d in zip(tree.token, tree.depth, strict=True) if d == 1}
    assert depth1 == set(first.topk(4).indices.tolist())

    n_positions = 4
    runner = _Marginals(lm, tree, n_positions, weights)
    got: dict[int, torch.Tensor] = {}
    masked = []
    for u, idx in enumerate(wi.feature_tokens):
        keep = np.ones(len(ids), dtype=bool)
        keep[idx] = False
        masked.append(_Input(unit=u, ids=[t for t, k in zip(ids, keep, strict=True) if k]))
    with torch.inference_mode():
        runner.run([_Input(unit=-1, ids=ids)], lambda inp, p: got.__setitem__(inp.unit, p))
        runner.run(masked, lambda inp, p: got.__setitem__(inp.unit, p))
    expected, ref_logp = _naive_marginals(lm, ids, tree, n_positions, None)
    torch.testing.assert_close(got[-1].double(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(runner.ref_logp[1:], [ref_logp[n] for n in range(1, tree.n_nodes)], atol=1e-4)
    for inp in masked:
        expected, _ = _naive_marginals(
            lm, inp.ids, tree, n_positions, ref_logp if weights == "reference" else None
        )
        torch.testing.assert_close(got[inp.unit].double(), expected, atol=1e-5, rtol=0)


def test_prefix_tree_chain_and_paths() -> None:
    chain = PrefixTree.chain([5, 6, 7])
    assert chain.n_nodes == 4 and chain.max_depth == 3 and chain.paths() == [[1, 2, 3]]
    tree = PrefixTree()
    a = tree.add(0, 1)
    tree.add(a, 2)
    tree.add(a, 3)
    tree.add(0, 4)
    assert tree.paths() == [[1, 2], [1, 3], [4]]
    assert PrefixTree().paths() == []


# --------------------------------------------------------------------------------------------------
# the method on the planted model


@pytest.fixture(scope="module")
def planted() -> LocalModel:
    return planted_model()


# Measured on held-out planted_example seeds 1000-1019 (the model trained on seeds 0-299), city
# ranked first: answer prefixes 20/20; beam with positions=2 20/20; beam with the paper's
# positions=10, beams=10 and the reference's prefix weights 20/20.
PLANTED_CONFIGS: dict[str, dict[str, Any]] = {
    "answer": {},
    "beam": {"prefixes": "beam", "positions": 2},
    "beam-paper-reference-weights": {"prefixes": "beam", "prefix_weights": "reference"},
}


@pytest.mark.parametrize("name", list(PLANTED_CONFIGS))
def test_planted_city_word_ranks_first(planted: LocalModel, name: str) -> None:
    method = GiLOT(**PLANTED_CONFIGS[name])
    for seed in range(1000, 1005):
        prompt, answer, city = planted_example(seed)
        wi = prepare_input(planted, prompt, answer)
        scores = method.run(wi, np.random.default_rng(0))
        assert scores.feature_scores is not None and (scores.feature_scores >= 0).all()
        assert int(np.argmax(scores.feature_scores)) == city, (seed, scores.feature_scores)


def test_token_granularity_agrees_with_features_on_one_token_features(planted: LocalModel) -> None:
    base, answer, _ = planted_example(1001)
    # planted words are one token each; "Zebrafinch" is several, so token units outnumber features
    prompt = build_prompt(PLANTED_QUESTION, "Zebrafinch " + base.documents[0].text, features="words")
    wi = prepare_input(planted, prompt, answer)
    by_feature = GiLOT().run(wi, np.random.default_rng(0))
    by_token = GiLOT(granularity="token").run(wi, np.random.default_rng(0))
    assert by_feature.feature_scores is not None and by_token.token_scores is not None
    tokens = by_token.token_scores
    assert tokens.shape == (wi.n_prompt,) and np.all(tokens[~wi.feature_mask] == 0)
    assert by_token.extras["units"] == int(wi.feature_mask.sum()) > by_feature.extras["units"]
    single = [m for m, idx in enumerate(wi.feature_tokens) if idx is not None and len(idx) == 1]
    assert single  # deleting a one-token feature is the same deletion at both granularities
    summed = aggregate(tokens, wi.feature_tokens)
    np.testing.assert_allclose(summed[single], by_feature.feature_scores[single], rtol=1e-3, atol=1e-9)
    # answer prefixes: J = min(positions, answer tokens)
    assert by_feature.extras["positions"] == min(10, wi.n_answer)
    assert by_feature.extras["transport_problems"] == len(prompt.features) * wi.n_answer


def test_options_are_checked() -> None:
    for bad in (
        {"beams": 0},
        {"positions": 0},
        {"top_k": 0},
        {"distance": "wasserstein"},
        {"granularity": "word"},
        {"prefixes": "sample"},
        {"prefix_weights": "uniform"},
        {"reg": 0.0},
        {"ipot_beta": float("nan")},
        {"tol": -1.0},
        {"beam_width": 10},
    ):
        with pytest.raises(ConfigError):
            GiLOT(**bad)
    assert GiLOT().config() == {
        "kind": "gilot",
        "granularity": "feature",
        "prefixes": "answer",
        "beams": 10,
        "positions": 10,
        "top_k": 100,
        "distance": "emd",
        "prefix_weights": "masked",
        "reg": 0.05,
        "ipot_beta": 1.0,
        "max_iter": 1000,
        "tol": 1e-6,
    }


def test_beam_prefixes_must_fit_the_context_window() -> None:
    lm = tiny_local_model(context=64)
    prompt = build_prompt("Capital?", "Paris is in France.", features="words")
    wi = prepare_input(lm, prompt, "Paris.")
    fits = 64 - wi.n_prompt + 1  # prompt + (positions - 1) beam tokens = 64
    assert (
        GiLOT(prefixes="beam", positions=fits, beams=2).run(wi, np.random.default_rng(0)).extras["positions"]
        == fits
    )
    with pytest.raises(ContextWindowError):
        GiLOT(prefixes="beam", positions=fits + 1, beams=2).run(wi, np.random.default_rng(0))


@pytest.mark.anyio
async def test_explanation_end_to_end_and_json_round_trip(planted: LocalModel) -> None:
    prompt, answer, city = planted_example(1002)
    method = GiLOT(prefixes="beam", positions=2, beams=4, distance="ipot")
    async with Explainer(closed=TestModel("unused"), surrogate=planted, method=method, cache=False) as ex:
        res = await ex.explain_prompt(prompt, answer=answer)
    m = prompt.n_features
    assert res.method == "gilot" and res.config["prefixes"] == "beam" and res.config["distance"] == "ipot"
    assert len(res.attributions) == m and abs(sum(res.attributions) - 1) < 1e-9
    assert int(np.argmax(res.attributions)) == city and min(res.coefficients) >= 0
    assert res.counts.closed_calls == 0 and res.counts.surrogate_sequences == m + 2  # + reference, search
    assert res.engine["positions"] == 2 and res.engine["units"] == m
    assert res.engine["transport_problems"] == 2 * m and res.engine["prefix_rows"] > 1
    assert Explanation.model_validate_json(res.model_dump_json()) == res

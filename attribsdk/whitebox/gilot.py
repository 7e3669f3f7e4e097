"""GiLOT: how far the output distribution moves, in optimal-transport distance, when a unit is deleted.

GiLOT (Li, Chen, Chai & Xiong, "GiLOT: Interpreting Generative Language Models via Optimal
Transport", ICML 2024; code at github.com/holyseven/GiLOT) scores input unit ``a`` by

    score(a) = (1/J) Σ_{j=1..J} D( p(Y_j | x), p(Y_j | x without a) )

where ``p(Y_j)`` is the distribution of the ``j``-th output token marginalised over a set of
prefixes ``y_<j``, and ``D`` is an optimal-transport distance whose ground cost between two tokens
is ``1 - cos`` of their embeddings, so moving probability to a near-synonym costs little. Scores
are non-negative (a distance says how much the output depends on a unit, not in which direction);
a larger score means a more important unit.

How each step is implemented here, including what the paper leaves open:

**Prefixes** (``prefixes=``). attribsdk explains a *fixed* answer, often from a closed model.

* ``"answer"`` (default): the answer's own prefixes, teacher forced. ``p(Y_j) = p(· | x, a_<j)``
  for ``j = 1..J`` with ``J = min(positions, answer tokens)``; one prefix per position, weight 1.
* ``"beam"`` (the paper's): beam search of width ``b = beams`` for ``J - 1 = positions - 1``
  steps on the *unmasked* input. The ``≤ b`` hypotheses of length ``j - 1`` are the prefixes of
  position ``j``, and ``p(Y_j) = Σ_s w(s) p(Y_j | x, s)`` with ``w(s) = p(s | x) / Σ_s' p(s' | x)``
  (normalised sequence probabilities). Hypotheses never contain an end-of-sequence token (such
  continuations leave the beam; the next-token distributions still include the EOS mass). Beam
  mode explains the surrogate's own continuations: the fixed answer is not used.

**Prefix weights under the masked input** (``prefix_weights=``). The masked input is scored on the
*same* prefixes (one forward pass per masked input serves all of them). With ``"masked"``
(default) the weights are re-computed from the masked input's own sequence probabilities,
``w_a(s) ∝ p(s | x without a)``, renormalised over the same prefix set: both marginals are then
the same estimator, so a unit that makes the model abandon its preferred continuations moves
``p(Y_j)`` even when each continuation's next-token distribution barely changes -- and it costs
nothing, since ``p(s | x without a)`` comes out of the same forward pass. This matches the
authors' released ``interpreter.py`` (sequence probabilities of the masked run, normalised by their
sum); unlike it, the prefixes are not searched again for every masked input (that would cost a
beam search per unit). ``"reference"`` keeps the unmasked run's weights for both, as the authors'
``reproduce/`` scripts do, so only the conditional distributions change. With
``prefixes="answer"`` there is one prefix per position and the two options coincide.

**Deleting a unit.** A unit's prompt tokens are removed from the token sequence; the chat
template, the other tokens and the prefixes stay, and positions close up (RoPE positions are
those of the shorter prompt). ``granularity="feature"`` deletes all tokens of one of the prompt's
features (words, sentences... whatever the prompt was built with); ``"token"`` deletes each token
inside the features alone, and :func:`~attribsdk.whitebox.aggregate` sums token scores into
features. This is the token-level counterpart of :meth:`Prompt.render(keep)
<attribsdk.prompt.Prompt.render>`: re-rendering the text and re-tokenising gives the same tokens
except where whitespace next to the deleted unit tokenises differently (measured on 10 HotpotQA
examples with SmolLM2: identical ids for 73% of sentence deletions and 94% of word deletions; the
others differ by a leading space). The authors' code instead sets the token to id 0 and masks it
out of attention, keeping the positions.

**Batching and memory.** One forward pass per masked input covers every prefix. With a single
prefix chain (``"answer"``) prompt and chain run as one row; with a beam tree the masked prompt runs
once, its keys/values are kept, and every root-to-leaf path of the tree runs as a row on top of
them (right-aligned cache block, explicit positions: exact with sliding-window attention too).
Rows of several masked inputs share micro-batches bounded by ``lm.batch_limits``. The LM head runs
only on the positions whose next-token distribution is needed, never over the whole sequence;
each masked input's marginals are accumulated in a ``[J, V]`` float32 block (log-sum-exp
stabilised weights) and reduced to the small supports below as soon as its rows are done.

**Distance** (``distance=``). For each position the support is the union of the top-``k``
tokens of the two distributions (``k = top_k``; the authors' ``_topk_intersection`` with
``if_or``); both are renormalised on it. The ground cost is ``1 - cos`` of the model's *input*
token embeddings (as the authors use ``embed_tokens.weight``; for tied models input and output
embeddings are the same), clipped to ``[0, 2]``; the authors' reproduction scripts divide it by
2, which rescales every score alike.

* ``"emd"`` (default): the exact transport cost (POT's network simplex, ``ot.emd2``), about 2 ms
  per problem for ``k = 100`` on CPU -- faster than the iterative solvers there, and exact when
  the two distributions differ very little (most deletions), where iterative solvers struggle.
* ``"ipot"``: the inexact proximal point method of Xie et al. (UAI 2019/2020), the authors'
  solver, batched in torch (float64): ``T ← diag(u) (exp(-C/β) ⊙ T) diag(v)`` with one Sinkhorn
  step per proximal step (``β = ipot_beta``), started from ``T = a bᵀ``, until the cost changes by
  less than ``tol`` over 10 steps and the marginals match to ``tol`` (or ``max_iter``). It
  converges to the exact cost; its error is about ``tol`` (absolute), so distributions that differ
  by less than that are not resolved (and run to ``max_iter``). POT 0.9.7 has a batched proximal
  solver (``ot.batch.solve_batch(method="proximal")``) but it flips the sign of ``log T`` and does
  not converge to the exact cost (PythonOT/POT#842), so it is not used.
* ``"sinkhorn"``: entropic OT (Cuturi 2013) with ``ε = reg``, batched in torch (float64); the
  value is the linear cost ``<T_ε, C>`` of the entropic plan, what ``ot.sinkhorn2`` returns (the
  tests check both agree). It is biased upwards by the entropic blur: not exactly 0 for identical
  distributions.
* ``"kl"``: ``KL(p(Y_j | x) ‖ p(Y_j | x without a))`` on the same renormalised support (as the
  authors' scripts compute it), ignoring token similarity.

Cost: ``1 + units`` masked inputs (``units`` = features or feature tokens) plus, in beam mode, the
beam search (``J - 1`` incremental steps); then ``units × J`` transport problems of at most
``2k`` points. Measured on one HotpotQA example (5 sentence features, 220-token prompt, 7-token
answer) with SmolLM2 in float32 on 2 shared CPU cores: 5.0 s with the defaults (the engine's
leave-one-out re-scoring of the same prompts: 4.8 s), 18.7 s with ``prefixes="beam"`` (b = J =
10: 29 prefix rows per masked input). ``"ipot"`` takes 11.6 s and ``"sinkhorn"`` 3.5 s for the 35
transport problems that ``"emd"`` solves in 0.1 s; IPOT's scores are within 2e-4 of the exact
ones, Sinkhorn's (ε = 0.05) up to 0.004 higher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import ot
import torch
from pydantic import Field

from ..errors import InputError, ScoringError
from ..scoring.engine import LayerKV, head_logprobs, pack_batches, prefixed_forward
from ..scoring.models import LocalModel
from ._core import WhiteboxInput
from ._method import WhiteboxConfig, WhiteboxMethod, WhiteboxScores

__all__ = [
    "Distance",
    "GiLOT",
    "GiLOTConfig",
    "PrefixTree",
    "beam_prefixes",
    "cosine_cost",
    "distribution_distance",
    "ipot",
    "sinkhorn",
]

#: The distance between the distributions with and without a unit (see the module docs).
Distance = Literal["emd", "ipot", "sinkhorn", "kl"]

#: Elements of one ``[B, n, n]`` float64 block of the batched iterative solvers (32 MB).
_OT_BLOCK_ELEMENTS = 1 << 22
#: Smallest probability used in a KL denominator (float64).
_TINY = 1e-300


# --------------------------------------------------------------------------------------------------
# optimal transport


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``num > 0``, else 0 (zero-mass points are padding or carry no mass)."""
    return torch.where(num > 0, num / den.clamp_min(_TINY), torch.zeros_like(num))


def _check_problems(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if cost.ndim != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise InputError(
            f"expected cost [B, n, m], a [B, n], b [B, m]; got {tuple(cost.shape)}, "
            f"{tuple(a.shape)}, {tuple(b.shape)}"
        )


def _row_error(plan: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``[B]`` L1 distance between the plan's row sums and ``a``."""
    return (plan.sum(2) - a).abs().sum(1)


def ipot(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    beta: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Exact optimal-transport costs of a batch of problems by the inexact proximal point method
    (IPOT; Xie, Wang, Wang & Zha, UAI 2019/2020), one Sinkhorn step per proximal step.

    ``cost`` is ``[B, n, m]``; ``a`` (``[B, n]``) and ``b`` (``[B, m]``) are non-negative and each
    sums to 1 -- zero entries are allowed (padding of problems with fewer points). ``beta`` is the
    proximal step in cost units; any ``beta > 0`` converges to the exact cost. Stops when every
    problem's cost changed by less than ``tol`` over 10 steps and its row marginals match ``a`` to
    ``tol`` (L1), or after ``max_iter`` steps. Returns the ``[B]`` costs ``<T, C>`` in the dtype of
    ``cost`` (use float64).
    """
    _check_problems(cost, a, b)
    kernel = torch.exp(-cost / beta)
    plan = a[:, :, None] * b[:, None, :]
    v = (b > 0).to(cost.dtype)
    previous = (plan * cost).sum((1, 2))
    for step in range(1, max_iter + 1):
        q = kernel * plan
        u = _safe_div(a, torch.bmm(q, v[:, :, None])[:, :, 0])
        v = _safe_div(b, torch.bmm(q.transpose(1, 2), u[:, :, None])[:, :, 0])
        plan = u[:, :, None] * q * v[:, None, :]
        if step % 10 == 0:
            value = (plan * cost).sum((1, 2))
            converged = (value - previous).abs().max() < tol and _row_error(plan, a).max() < tol
            previous = value
            if converged:
                break
    return (plan * cost).sum((1, 2))


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    reg: float = 0.05,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Entropic optimal transport (Sinkhorn-Knopp; Cuturi 2013) of a batch of problems.

    Shapes and zero-mass padding as :func:`ipot`; ``reg`` is ε in cost units. Iterates until every
    problem's row marginals match ``a`` to ``tol`` (L1) or ``max_iter``. Returns the ``[B]`` linear
    costs ``<T_ε, C>`` of the entropic plans -- what ``ot.sinkhorn2`` returns -- which exceed the
    exact cost by the entropic blur.
    """
    _check_problems(cost, a, b)
    kernel = torch.exp(-cost / reg)
    u = (a > 0).to(cost.dtype)
    v = (b > 0).to(cost.dtype)
    for step in range(1, max_iter + 1):
        u = _safe_div(a, torch.bmm(kernel, v[:, :, None])[:, :, 0])
        v = _safe_div(b, torch.bmm(kernel.transpose(1, 2), u[:, :, None])[:, :, 0])
        if step % 10 == 0 and _row_error(u[:, :, None] * kernel * v[:, None, :], a).max() < tol:
            break
    plan = u[:, :, None] * kernel * v[:, None, :]
    return (plan * cost).sum((1, 2))


def cosine_cost(embeddings: np.ndarray) -> np.ndarray:
    """``[n, n]`` float64 ground cost ``1 - cos`` between the rows of ``embeddings`` (``[n, H]``),
    clipped to ``[0, 2]`` with an exact zero diagonal. Zero rows get cost 1 to everything else."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    cost: np.ndarray = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(cost, 0.0)
    return cost


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    support = a > 0
    return float(np.sum(a[support] * (np.log(a[support]) - np.log(np.maximum(b[support], _TINY)))))


def distribution_distance(
    a: np.ndarray,
    b: np.ndarray,
    cost: np.ndarray,
    distance: Distance = "emd",
    *,
    reg: float = 0.05,
    beta: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> float:
    """The distance between two distributions ``a`` and ``b`` on the same ``n`` points (each
    renormalised to sum 1) under the ``[n, n]`` ground ``cost``: ``"emd"`` (exact, ``ot.emd2``),
    ``"ipot"`` (:func:`ipot`), ``"sinkhorn"`` (:func:`sinkhorn`) or ``"kl"`` (``KL(a ‖ b)``,
    ``cost`` unused). One problem at a time; GiLOT batches them."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    c64 = np.ascontiguousarray(cost, dtype=np.float64)
    n = a64.shape[0]
    if a64.shape != (n,) or b64.shape != (n,) or c64.shape != (n, n):
        raise InputError(f"expected a [n], b [n], cost [n, n]; got {a64.shape}, {b64.shape}, {c64.shape}")
    if (a64 < 0).any() or (b64 < 0).any() or a64.sum() <= 0 or b64.sum() <= 0:
        raise InputError("a and b must be non-negative with positive mass")
    a64 = a64 / a64.sum()
    b64 = b64 / b64.sum()
    if distance == "kl":
        return _kl(a64, b64)
    if distance == "emd":
        return float(ot.emd2(a64, b64, c64))
    ct, at, bt = (torch.from_numpy(x)[None] for x in (c64, a64, b64))
    if distance == "ipot":
        return float(ipot(ct, at, bt, beta=beta, max_iter=max_iter, tol=tol)[0])
    if distance == "sinkhorn":
        return float(sinkhorn(ct, at, bt, reg=reg, max_iter=max_iter, tol=tol)[0])
    raise InputError(f"unknown distance {distance!r}; use 'emd', 'ipot', 'sinkhorn' or 'kl'")


@dataclass
class _Problem:
    """One transport problem: the support's token ids and the two distributions on it (float64,
    each summing to 1): ``a`` with the unit, ``b`` without it."""

    tokens: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _solver_device(lm: LocalModel) -> torch.device:
    # float64 is fast on CUDA and missing on MPS: solve on the GPU only when it is a CUDA one.
    return lm.torch_device if lm.torch_device.type == "cuda" else torch.device("cpu")


def _distances(problems: Sequence[_Problem], lm: LocalModel, cfg: GiLOTConfig) -> np.ndarray:
    """``[len(problems)]`` distances, the iterative solvers batched over problems of similar size."""
    out = np.zeros(len(problems), dtype=np.float64)
    if not problems:
        return out
    if cfg.distance == "kl":
        for i, p in enumerate(problems):
            out[i] = _kl(p.a, p.b)
        return out
    vocab = np.unique(np.concatenate([p.tokens for p in problems]))
    weight = lm.model.get_input_embeddings().weight
    dev = _solver_device(lm)
    with torch.no_grad():
        rows = weight[torch.as_tensor(vocab, device=weight.device)].to(device=dev, dtype=torch.float64)
        rows = torch.nn.functional.normalize(rows, dim=-1, eps=1e-12)
    local = [np.searchsorted(vocab, p.tokens) for p in problems]
    if cfg.distance == "emd":
        rows_np = rows.cpu().numpy()
        for i, p in enumerate(problems):
            out[i] = float(ot.emd2(p.a, p.b, cosine_cost(rows_np[local[i]])))
        return out

    order = np.argsort([len(p.tokens) for p in problems], kind="stable")
    start = 0
    while start < len(order):
        n = len(problems[order[start]].tokens)
        stop = start + 1
        while stop < len(order):
            width = len(problems[order[stop]].tokens)
            if (stop - start + 1) * width * width > _OT_BLOCK_ELEMENTS:
                break
            n = width
            stop += 1
        chunk = order[start:stop]
        size = len(chunk)
        index = torch.zeros((size, n), dtype=torch.long)
        a = torch.zeros((size, n), dtype=torch.float64)
        b = torch.zeros((size, n), dtype=torch.float64)
        valid = torch.zeros((size, n), dtype=torch.bool)
        for r, i in enumerate(chunk):
            k = len(problems[i].tokens)
            index[r, :k] = torch.from_numpy(local[i])
            a[r, :k] = torch.from_numpy(problems[i].a)
            b[r, :k] = torch.from_numpy(problems[i].b)
            valid[r, :k] = True
        index, a, b, valid = index.to(dev), a.to(dev), b.to(dev), valid.to(dev)
        emb = rows[index]  # [size, n, H], unit norm
        cost = (1.0 - torch.bmm(emb, emb.transpose(1, 2))).clamp(0.0, 2.0)
        cost = cost * (valid[:, :, None] & valid[:, None, :])
        cost.diagonal(dim1=1, dim2=2).zero_()
        if cfg.distance == "ipot":
            values = ipot(cost, a, b, beta=cfg.ipot_beta, max_iter=cfg.max_iter, tol=cfg.tol)
        else:
            values = sinkhorn(cost, a, b, reg=cfg.reg, max_iter=cfg.max_iter, tol=cfg.tol)
        if not torch.isfinite(values).all():
            raise ScoringError(
                f"the {cfg.distance} solver produced non-finite costs; use distance='emd' "
                f"or a larger {'ipot_beta' if cfg.distance == 'ipot' else 'reg'}"
            )
        out[chunk] = values.cpu().numpy()
        start = stop
    return out


# --------------------------------------------------------------------------------------------------
# prefixes


@dataclass
class PrefixTree:
    """The prefixes whose next-token distributions are marginalised, as a tree of token ids.

    Node 0 is the empty prefix; node ``n > 0`` extends ``parent[n]`` by ``token[n]`` and is
    ``depth[n]`` tokens long. The prefixes of output position ``j`` are the nodes of depth
    ``j - 1``.
    """

    parent: list[int] = field(default_factory=lambda: [-1])
    token: list[int] = field(default_factory=lambda: [-1])
    depth: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> PrefixTree:
        """One prefix per depth: the prefixes of ``tokens`` (teacher forcing)."""
        tree = cls()
        node = 0
        for t in tokens:
            node = tree.add(node, int(t))
        return tree

    def add(self, parent: int, token: int) -> int:
        self.parent.append(parent)
        self.token.append(token)
        self.depth.append(self.depth[parent] + 1)
        return len(self.parent) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    def paths(self) -> list[list[int]]:
        """The node path (depth 1 first, root excluded) of every node without children."""
        has_child = [False] * self.n_nodes
        for p in self.parent[1:]:
            has_child[p] = True
        out: list[list[int]] = []
        for n in range(1, self.n_nodes):
            if has_child[n]:
                continue
            path = [n]
            while self.parent[path[-1]] > 0:
                path.append(self.parent[path[-1]])
            out.append(path[::-1])
        return out


def beam_prefixes(lm: LocalModel, prompt_ids: Sequence[int], beams: int, depth: int) -> PrefixTree:
    """Beam search of width ``beams`` for ``depth`` tokens after ``prompt_ids`` (incremental, with
    the model's KV cache); every hypothesis kept at every length becomes a node. Hypotheses never
    contain an end-of-sequence token. Call under ``torch.inference_mode()`` with the model's lock."""
    from transformers import DynamicCache

    tree = PrefixTree()
    if depth <= 0:
        return tree
    dev = lm.torch_device
    vocab = lm.vocab_size
    # LocalModel's end-of-sequence ids: the tokenizer's and the generation config's (chat turn ends)
    ends = sorted(i for i in lm.eos_ids() if 0 <= i < vocab)
    eos = torch.tensor(ends, dtype=torch.long, device=dev)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=dev)
    out = lm.decoder(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    cache = out.past_key_values
    logp = head_logprobs(lm, out[0][:, -1]).double()  # [hypotheses, V]
    scores = torch.zeros(1, dtype=torch.float64, device=dev)  # log p(hypothesis | prompt)
    nodes = [0]
    for step in range(1, depth + 1):
        candidates = scores[:, None] + logp
        if eos.numel():
            candidates[:, eos] = -math.inf
        flat = candidates.flatten()
        k = min(beams, int(torch.isfinite(flat).sum()))
        if k == 0:
            break
        top = torch.topk(flat, k)
        source = top.indices // vocab
        tokens = top.indices % vocab
        nodes = [tree.add(nodes[s], t) for s, t in zip(source.tolist(), tokens.tolist(), strict=True)]
        if step == depth:
            break
        cache.reorder_cache(source)
        positions = torch.full((k, 1), len(prompt_ids) + step - 1, dtype=torch.long, device=dev)
        out = lm.decoder(
            input_ids=tokens[:, None], position_ids=positions, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        logp = head_logprobs(lm, out[0][:, -1]).double()
        scores = top.values
    return tree


# --------------------------------------------------------------------------------------------------
# marginal next-token distributions of many masked inputs


KV = LayerKV


@dataclass
class _Input:
    """One (possibly masked) prompt while its prefixes are scored."""

    unit: int  # -1: the unmasked reference
    ids: list[int]
    acc: torch.Tensor | None = None  # [J, V] float32, Σ_s exp(lw_s - shift_j) p(· | s)
    shift: list[float] = field(default_factory=list)
    root_logp: torch.Tensor | None = None  # [V] float32 log p(Y_1 | prompt)
    kv: KV | None = None
    rows_left: int = 0


class _Marginals:
    """Accumulates ``p(Y_j | prompt)`` for ``j = 1..J`` over a :class:`PrefixTree` for many
    prompts, batched, and hands each finished ``[J, V]`` marginal to a callback."""

    def __init__(self, lm: LocalModel, tree: PrefixTree, n_positions: int, weights: str) -> None:
        self.lm = lm
        self.tree = tree
        self.n_positions = n_positions
        self.weights = weights
        self.paths = tree.paths()
        seen: set[int] = set()
        self.owned: list[list[bool]] = []  # owned[r][τ]: path r contributes node path[r][τ]
        for path in self.paths:
            self.owned.append([n not in seen for n in path])
            seen.update(path)
        self.ref_logp = np.full(tree.n_nodes, -math.inf)  # log p(prefix | unmasked prompt)
        self.rows = 0
        self.tokens = 0

    def run(self, inputs: Sequence[_Input], done: Callable[[_Input, torch.Tensor], None]) -> None:
        limits = self.lm.batch_limits
        if len(self.paths) <= 1:
            # One row per prompt: prompt + the prefix chain, no cache needed.
            path = self.paths[0] if self.paths else []
            chain = [self.tree.token[n] for n in path]
            order = sorted(inputs, key=lambda i: len(i.ids))
            for batch in pack_batches([len(i.ids) + len(chain) for i in order], limits):
                members = [order[i] for i in batch]
                hidden, _, _ = prefixed_forward(self.lm, [m.ids + chain for m in members])
                self._count(len(members), sum(len(m.ids) + len(chain) for m in members))
                for b, inp in enumerate(members):
                    n = len(inp.ids)
                    logp = head_logprobs(self.lm, hidden[b, n - 1 : n + len(chain)])
                    self._root(inp, logp[0])
                    if path:
                        self._path(inp, 0, logp[1:])
                    self._finish(inp, done)
            return

        # Several prefix paths: each prompt runs once (its keys/values kept), then every
        # (prompt, path) row feeds only the path's tokens on top of the cached prompt.
        order = sorted(inputs, key=lambda i: len(i.ids))
        for group in pack_batches([len(i.ids) for i in order], limits):
            members = [order[i] for i in group]
            roots = [m.ids for m in members]
            hidden, kept, _ = prefixed_forward(self.lm, roots, keep=[len(r) for r in roots])
            assert kept is not None
            self._count(len(members), sum(len(m.ids) for m in members))
            for b, inp in enumerate(members):
                inp.kv = kept[b]
                inp.rows_left = len(self.paths)
                self._root(inp, head_logprobs(self.lm, hidden[b, len(inp.ids) - 1]))
            del hidden, kept
            pairs = [(inp, r) for inp in members for r in range(len(self.paths))]
            pairs.sort(key=lambda pair: len(pair[0].ids) + len(self.paths[pair[1]]))
            lengths = [len(inp.ids) + len(self.paths[r]) for inp, r in pairs]
            for batch in pack_batches(lengths, limits):
                chunk = [pairs[i] for i in batch]
                fed = [[self.tree.token[n] for n in self.paths[r]] for _, r in chunk]
                prefix: list[KV] = []
                for inp, _ in chunk:
                    assert inp.kv is not None
                    prefix.append(inp.kv)
                hidden, _, _ = prefixed_forward(self.lm, fed, prefix)
                self._count(len(chunk), sum(len(f) for f in fed))
                for b, (inp, r) in enumerate(chunk):
                    self._path(inp, r, head_logprobs(self.lm, hidden[b, : len(fed[b])]))
                    inp.rows_left -= 1
                    if inp.rows_left == 0:
                        inp.kv = None
                        self._finish(inp, done)

    def _count(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens

    def _add(self, inp: _Input, position: int, log_weight: float, logp: torch.Tensor) -> None:
        """Add ``exp(log_weight) · exp(logp)`` to position ``position``'s accumulator, keeping the
        largest log-weight seen as the common shift (no under/overflow)."""
        assert inp.acc is not None
        if log_weight == -math.inf:
            return
        shift = inp.shift[position]
        row = inp.acc[position]
        if log_weight > shift:
            if shift > -math.inf:
                row.mul_(math.exp(shift - log_weight))
            row.add_(torch.exp(logp))
            inp.shift[position] = log_weight
        else:
            row.add_(torch.exp(logp + (log_weight - shift)))

    def _root(self, inp: _Input, logp: torch.Tensor) -> None:
        """Start ``inp``'s accumulators (only while its rows run: memory stays bounded by the
        micro-batch) with the empty prefix's distribution ``logp`` (``[V]``)."""
        inp.acc = torch.zeros((self.n_positions, logp.shape[-1]), dtype=torch.float32, device=logp.device)
        inp.shift = [-math.inf] * self.n_positions
        inp.root_logp = logp
        self._add(inp, 0, 0.0, logp)

    def _path(self, inp: _Input, r: int, logp: torch.Tensor) -> None:
        """``logp`` is ``[m, V]``: row τ is the next-token distribution after node ``path[τ]``."""
        assert inp.root_logp is not None
        path = self.paths[r]
        tokens = torch.tensor([self.tree.token[n] for n in path], dtype=torch.long, device=logp.device)
        picks = torch.cat([inp.root_logp[tokens[:1]], logp[torch.arange(len(path) - 1), tokens[1:]]])
        cumulative = picks.double().cumsum(0).tolist()  # log p(prefix | this prompt)
        for tau, node in enumerate(path):
            if inp.unit < 0:
                self.ref_logp[node] = cumulative[tau]
            if not self.owned[r][tau] or tau + 1 >= self.n_positions:
                continue
            own = inp.unit < 0 or self.weights == "masked"
            self._add(inp, tau + 1, cumulative[tau] if own else float(self.ref_logp[node]), logp[tau])

    def _finish(self, inp: _Input, done: Callable[[_Input, torch.Tensor], None]) -> None:
        assert inp.acc is not None
        marginal = inp.acc / inp.acc.sum(-1, keepdim=True)
        inp.acc = inp.root_logp = None
        done(inp, marginal)


# --------------------------------------------------------------------------------------------------
# the method


class GiLOTConfig(WhiteboxConfig):
    """GiLOT options (see the module docs). Defaults follow the paper where it fixes a value
    (``beams = 10``, ``positions = 10``, ``top_k = 100``)."""

    #: ``"feature"``: delete each feature's tokens; ``"token"``: each feature token alone, summed.
    granularity: Literal["feature", "token"] = "feature"
    #: ``"answer"``: the fixed answer's prefixes (teacher forced); ``"beam"``: the paper's beam search.
    prefixes: Literal["answer", "beam"] = "answer"
    #: Beam width ``b`` (``prefixes="beam"`` only).
    beams: int = Field(default=10, ge=1, le=1000)
    #: Output positions ``J`` (``"answer"``: at most the answer's length).
    positions: int = Field(default=10, ge=1, le=1000)
    #: ``k``: the support is the union of both distributions' top-``k`` tokens.
    top_k: int = Field(default=100, ge=1)
    distance: Distance = "emd"
    #: Prefix weights of the masked input: its own (``"masked"``) or the unmasked run's.
    prefix_weights: Literal["masked", "reference"] = "masked"
    #: Sinkhorn's ε in cost units (``distance="sinkhorn"``).
    reg: float = Field(default=0.05, ge=1e-3, allow_inf_nan=False)
    #: IPOT's proximal step β in cost units (``distance="ipot"``).
    ipot_beta: float = Field(default=1.0, ge=1e-3, allow_inf_nan=False)
    #: Iteration cap and tolerance of the iterative solvers.
    max_iter: int = Field(default=1000, ge=1)
    tol: float = Field(default=1e-6, gt=0, allow_inf_nan=False)


class GiLOT(WhiteboxMethod):
    """GiLOT (Li et al., ICML 2024): a unit's score is the mean over output positions ``j ≤ J`` of
    the optimal-transport distance between the marginal next-token distributions with and without
    the unit (module docs for every detail). Non-negative scores; larger = more important.

    >>> GiLOT()                                         # answer prefixes, exact OT, features
    >>> GiLOT(prefixes="beam", beams=10, positions=10)  # the paper's beam-search marginal
    >>> GiLOT(granularity="token", distance="ipot")     # the authors' solver, per token
    """

    name = "gilot"
    Config: ClassVar[type[WhiteboxConfig]] = GiLOTConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        cfg = self.cfg
        assert isinstance(cfg, GiLOTConfig)
        lm = wi.lm
        t0 = time.perf_counter()
        prompt = [int(t) for t in wi.ids[: wi.n_prompt].tolist()]
        units = _units(wi, cfg.granularity)
        inputs: list[_Input] = []
        for u, idx in enumerate(units):
            keep = np.ones(wi.n_prompt, dtype=bool)
            keep[idx] = False
            if not keep.any():
                raise InputError(
                    f"deleting {cfg.granularity} unit {u} leaves no prompt token to predict from; "
                    "use a chat template or a finer granularity"
                )
            inputs.append(_Input(unit=u, ids=[t for t, k in zip(prompt, keep, strict=True) if k]))

        with torch.inference_mode():
            if cfg.prefixes == "answer":
                n_positions = min(cfg.positions, wi.n_answer)
                tree = PrefixTree.chain(wi.answer_ids[: n_positions - 1])
            else:
                lm.check_fits(
                    wi.n_prompt + cfg.positions - 1, f"the prompt plus {cfg.positions - 1} beam tokens"
                )
                tree = beam_prefixes(lm, prompt, cfg.beams, cfg.positions - 1)
                n_positions = tree.max_depth + 1
            marginals = _Marginals(lm, tree, n_positions, cfg.prefix_weights)

            reference: list[torch.Tensor] = []
            marginals.run([_Input(unit=-1, ids=prompt)], lambda _, p: reference.append(p))
            p_ref = reference[0]  # [J, V]
            k = min(cfg.top_k, lm.vocab_size)
            ref_top = p_ref.topk(k, dim=-1).indices
            problems: list[list[_Problem]] = [[] for _ in units]

            def reduce(inp: _Input, p: torch.Tensor) -> None:
                support = torch.zeros_like(p, dtype=torch.bool)
                support.scatter_(1, ref_top, True)
                support.scatter_(1, p.topk(k, dim=-1).indices, True)
                rows, cols = support.nonzero(as_tuple=True)  # row-major: grouped by position
                a = p_ref[rows, cols].double().cpu().numpy()
                b = p[rows, cols].double().cpu().numpy()
                tokens = cols.cpu().numpy()
                bounds = np.cumsum(support.sum(1).cpu().numpy())[:-1]
                for ta, pa, pb in zip(
                    np.split(tokens, bounds), np.split(a, bounds), np.split(b, bounds), strict=True
                ):
                    problems[inp.unit].append(_Problem(tokens=ta, a=pa / pa.sum(), b=pb / pb.sum()))

            marginals.run(inputs, reduce)
        t1 = time.perf_counter()

        flat = [p for per_unit in problems for p in per_unit]
        per_unit = _distances(flat, lm, cfg).reshape(len(units), n_positions).mean(axis=1)
        t2 = time.perf_counter()

        extras: dict[str, Any] = {
            "positions": n_positions,
            "units": len(units),
            "prefix_nodes": tree.n_nodes,
            "prefix_rows": max(1, len(marginals.paths)),
            "rows": marginals.rows,
            "tokens_fed": marginals.tokens,
            "transport_problems": len(flat),
            "support_mean": float(np.mean([len(p.tokens) for p in flat])) if flat else 0.0,
            "seconds_forward": t1 - t0,
            "seconds_transport": t2 - t1,
        }
        passes = 1 + len(units) + (1 if cfg.prefixes == "beam" else 0)
        if cfg.granularity == "token":
            token_scores = np.zeros(wi.n_prompt, dtype=np.float64)
            token_scores[np.concatenate(units)] = per_unit
            return WhiteboxScores(token_scores=token_scores, forward_passes=passes, extras=extras)
        feature_scores = np.zeros(len(wi.feature_tokens), dtype=np.float64)
        present = [m for m, idx in enumerate(wi.feature_tokens) if idx is not None and len(idx)]
        feature_scores[present] = per_unit
        return WhiteboxScores(feature_scores=feature_scores, forward_passes=passes, extras=extras)


def _units(wi: WhiteboxInput, granularity: str) -> list[np.ndarray]:
    """Prompt-token index sets deleted one at a time: each feature's tokens (features without
    tokens are skipped and score 0), or each feature token alone."""
    if granularity == "token":
        return [np.array([i], dtype=np.int64) for i in np.nonzero(wi.feature_mask)[0]]
    return [np.asarray(idx, dtype=np.int64) for idx in wi.feature_tokens if idx is not None and len(idx)]

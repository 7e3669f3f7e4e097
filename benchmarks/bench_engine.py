"""Surrogate-scoring throughput: attribsdk against a naive loop, Captum and ContextCite.

What is measured. Every system explains the same HotpotQA examples (``report`` split, paper and
full-context protocols) with the same surrogate model object (the shipped SmolLM2-135M-Instruct,
``load_model("smollm2")``, fp32 by default), the same fixed answer (the dataset's reference
answer, so no generation happens anywhere), the same rendered prompts and the same number of
scored sequences, in one process, one after the other:

* ``attribsdk-sparsek`` / ``attribsdk-loo`` -- RoPE-LIME through the public API
  (``Explainer.explain_prompt(..., method=RopeLime(sampler=...))``): sampling, batched scoring with
  post-RoPE capture, RWMD locality, weighted least squares. N = the sampler's row count (row 0, the
  unmasked prompt, included).
* ``naive`` / ``naive-loo`` -- attribsdk's exact masks, one perturbation per forward pass with full
  logits over the whole sequence. Scoring only (no regression); its KL targets are checked against
  attribsdk's (``parity`` in the output).
* ``captum-lime`` / ``captum-loo`` -- Captum ``LLMAttribution`` + ``Lime`` (n_samples = N) /
  ``FeatureAblation`` (M + 1 forwards), Captum's defaults (token-by-token, KV-cached; see patch 1
  in benchmarks/_competitors.py). ``captum-lime-seq`` / ``captum-loo-seq``: Captum's one-forward
  mode (``forward_in_tokens=False``).
* ``contextcite`` -- ContextCite ``ContextCiter`` with num_ablations = N (Sparse-K's N), Lasso.

Competitor details, patches and partition differences: benchmarks/_competitors.py.

Figures per system (table columns):

* ``s/expl`` -- wall clock around the whole call per explanation (attribsdk: sampling + scoring +
  locality + regression; its scoring stage alone is printed below the table).
* ``seq/s``; ``tok/s`` = tokens of the scored sequences (prompt + answer, tokenised as attribsdk
  does, from the masks each system actually scored) per second -- the same definition for every
  system, so it measures how fast each gets the same answer-under-perturbation work done.
* ``fed tokens`` -- non-padding tokens that really went through the decoder stack, counted by a
  forward pre-hook on it (so every caller is counted the same way). Fewer than ``seq tokens`` when
  a system reuses a shared prefix (attribsdk) or never feeds the last answer token (Captum's
  token-by-token mode).
* ``GFLOP/s run`` and ``% bound`` -- FLOPs of the fed tokens (formula below) per second, against
  the machine's fp32 dense-matmul throughput: how well the hardware is used.
  ``GFLOP/s eff.`` -- FLOPs that running every scored sequence from scratch would take, per second:
  work avoided (prefix reuse) shows up here and can exceed the bound.
* ratios against attribsdk on the examples both completed (Sparse-K family against
  ``attribsdk-sparsek``, LOO family against ``attribsdk-loo``): ``× time`` = system seconds /
  attribsdk seconds (> 1: attribsdk is faster); ``attribsdk tok/s ÷ system``.
* ``AUROC`` of the attributions against HotpotQA's supporting facts: a sanity check only at these
  sample sizes (and not comparable across families: different masks).

FLOP formula. For a decoder call that feeds q new tokens to a row with ``past`` tokens already
cached, with L layers, H query heads of size d, hidden size h, vocabulary V and N_ne
non-embedding parameters (all weights except the token embedding / tied LM head)::

    linear    = 2 * N_ne * q                                  (every matmul weight, once per token)
    attention = 4 * L * H * d * sum_{i=1..q} (past + i)        (QK^T and AV, causal keys only)
    head      = 2 * h * V * T   per scored sequence            (LM head on the T answer positions)

Work beyond this (padding, logits over the whole sequence, recomputation) is not counted, so
FLOP/s is comparable across systems. The bound is the best of ``--matmul-reps`` fp32
``torch.matmul`` calls on ``--matmul-size``-square matrices with the same thread count
(2 n^3 FLOPs each), measured before and after the systems; the higher of the two is used.

Memory: ``rss_peak_delta_mib`` = the highest resident set size sampled every 10 ms during the
system's runs minus the RSS when it started (what the system needed on top of the loaded model);
``maxrss_delta_mib`` = growth of the process high-water mark ``getrusage(RUSAGE_SELF).ru_maxrss``
across the system (0 when it stayed below an earlier system's peak); ``maxrss_mib`` = that
high-water mark after the system.

Each system is warmed up once (untimed) on the cheapest example before it is timed. A system that
fails on an example records the error and the run goes on.

Run on an otherwise idle machine (defaults: 5 paper + 2 full-context examples, all systems; on
2 cores expect 1-2 h, dominated by the full-context examples, M ~ 40, N ~ 100 sequences of ~1.5k
tokens each): ``.venv/bin/python benchmarks/bench_engine.py``. Subset: ``--systems attribsdk-sparsek
naive captum-lime-seq``. Quick check: ``--n-paper 1 --n-full 0 --matmul-size 1024``.
Competitors: ``pip install captum==0.9.0 context-cite==0.0.4`` (changes no pinned package).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import math
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, stratified, write_json
from _competitors import (
    CompetitorResult,
    Family,
    Workload,
    captum_parity,
    prompt_ids,
    run_captum,
    run_contextcite,
    run_naive,
)

from attribsdk import Explainer
from attribsdk.eval.datasets import load_dataset
from attribsdk.eval.metrics import auroc
from attribsdk.methods.rope_lime import RopeLime
from attribsdk.scoring.models import LocalModel, load_model

MIB = 1024 * 1024


# -- systems ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """A measured system: its name, sampler family, the attribsdk system it is compared with."""

    name: str
    family: Family
    baseline: str
    about: str


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("attribsdk-sparsek", "sparse-k", "attribsdk-sparsek", "RopeLime, Sparse-K, Explainer API"),
        System("attribsdk-loo", "loo", "attribsdk-loo", "RopeLime, LOO sampler, Explainer API"),
        System("naive", "sparse-k", "attribsdk-sparsek", "1 seq/forward, full logits, Sparse-K masks"),
        System("naive-loo", "loo", "attribsdk-loo", "1 seq/forward, full logits, LOO masks"),
        System("captum-lime", "sparse-k", "attribsdk-sparsek", "Captum Lime, token-by-token + KV cache"),
        System("captum-lime-seq", "sparse-k", "attribsdk-sparsek", "Captum Lime, forward_in_tokens=False"),
        System("captum-loo", "loo", "attribsdk-loo", "Captum FeatureAblation, token-by-token + KV"),
        System("captum-loo-seq", "loo", "attribsdk-loo", "Captum FeatureAblation, forward_in_tokens=False"),
        System("contextcite", "sparse-k", "attribsdk-sparsek", "ContextCiter, Lasso, batch_size 1"),
    )
}


class AttribsdkRunner:
    """attribsdk through the public async-first API, driven synchronously (``Explainer`` portal)."""

    def __init__(self, lm: LocalModel, seed: int) -> None:
        self.seed = seed
        self.explainer = Explainer(surrogate=lm, seed=seed)
        self.explainer.__enter__()

    def close(self) -> None:
        self.explainer.__exit__(None, None, None)

    def __call__(self, lm: LocalModel, work: Workload, family: Family) -> CompetitorResult:
        method = RopeLime(sampler=family)
        res = self.explainer.explain_prompt_sync(
            work.prompt, answer=work.answer, method=method, seed=self.seed
        )
        masks = np.asarray(res.samples.masks if res.samples else [], dtype=bool)
        return CompetitorResult(
            sequences=res.counts.surrogate_sequences,
            masks=masks.tolist(),
            attributions=list(res.attributions),
            extras={
                "scoring_s": res.timings.scoring,
                "timings": res.timings.model_dump(),
                "engine_tokens": res.counts.surrogate_tokens,
                "masks_match_workload": bool(np.array_equal(masks, work.masks[family])),
                "targets": list(res.samples.targets) if res.samples else [],
                "answer_tokens": len(res.answer_tokens),
            },
        )


def make_runner(name: str, attribsdk: AttribsdkRunner, cc_batch: int, seed: int) -> Any:
    if name.startswith("attribsdk"):
        return attribsdk
    if name.startswith("naive"):
        return run_naive
    if name.startswith("captum"):
        in_tokens = not name.endswith("-seq")
        return lambda lm, w, f: run_captum(lm, w, f, forward_in_tokens=in_tokens, seed=seed)
    if name == "contextcite":
        return lambda lm, w, f: run_contextcite(lm, w, f, batch_size=cc_batch)
    raise KeyError(name)


# -- measurement ------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    """What the FLOP formula needs (module docs)."""

    layers: int
    heads: int
    head_dim: int
    hidden: int
    vocab: int
    non_embedding_params: int

    @classmethod
    def of(cls, lm: LocalModel) -> ModelShape:
        model = lm.model
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = int(cfg.num_attention_heads)
        hidden = int(cfg.hidden_size)
        head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
        embed_ids = {id(p) for p in model.get_input_embeddings().parameters()}
        embed_ids |= {id(p) for p in model.get_output_embeddings().parameters()}
        non_embedding = sum(p.numel() for p in model.parameters() if id(p) not in embed_ids)
        return cls(int(cfg.num_hidden_layers), heads, head_dim, hidden, lm.vocab_size, int(non_embedding))

    def flops(self, tokens: int, attn_pairs: int, sequences: int, answer_tokens: int) -> float:
        """FLOPs of feeding ``tokens`` with ``attn_pairs`` causal (query, key) pairs, plus the LM head
        on ``answer_tokens`` positions of each of ``sequences`` sequences (module docs)."""
        linear = 2.0 * self.non_embedding_params * tokens
        attention = 4.0 * self.layers * self.heads * self.head_dim * attn_pairs
        head = 2.0 * self.hidden * self.vocab * answer_tokens * sequences
        return linear + attention + head

    def sequence_flops(self, lengths: list[int], answer_tokens: int) -> float:
        """FLOPs of running each whole sequence (lengths S, answer included) from scratch."""
        pairs = sum(n * (n + 1) // 2 for n in lengths)
        return self.flops(sum(lengths), pairs, len(lengths), answer_tokens)


class ForwardCounter:
    """Counts what goes through the decoder stack: calls, rows, non-padding tokens and causal
    (query, key) pairs, from a forward pre-hook (so every caller is counted the same way)."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.calls = self.rows = self.tokens = self.attn_pairs = 0
        self.active = False
        self._handle = decoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def reset(self) -> None:
        self.calls = self.rows = self.tokens = self.attn_pairs = 0

    def close(self) -> None:
        self._handle.remove()

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        batch, q = int(ids.shape[0]), int(ids.shape[1])
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        cached = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= q:
            # A 2D mask spans [cached | fed]: its last q columns are the fed tokens (padding = 0),
            # the columns before them the cached keys this row may attend to.
            m = mask.detach().to("cpu", torch.long)
            new = m[:, m.shape[1] - q :].sum(-1)
            past = m[:, : m.shape[1] - q].sum(-1)
        else:
            new = torch.full((batch,), q, dtype=torch.long)
            past = torch.full((batch,), cached, dtype=torch.long)
        self.calls += 1
        self.rows += batch
        self.tokens += int(new.sum())
        self.attn_pairs += int((new * past + new * (new + 1) // 2).sum())


def _current_rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024  # bytes


@dataclass
class RssWatch:
    """Sampled RSS peak (``/proc/self/statm`` every ``interval`` s) and ``ru_maxrss`` around a block."""

    interval: float = 0.01
    start: int = 0
    peak: int = 0
    maxrss_before: int = 0
    maxrss_after: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def watch(self) -> Iterator[RssWatch]:
        self.start = self.peak = _current_rss() or 0
        self.maxrss_before = _maxrss()
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, _current_rss() or 0)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, _current_rss() or 0)
            self.maxrss_after = _maxrss()


def matmul_bound(size: int, reps: int, device: torch.device) -> dict[str, Any]:
    """Best fp32 dense-matmul throughput (FLOP/s) of ``reps`` ``size``-square products."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b, out=out)  # warm-up
    sync()
    times: list[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "size": size,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "best_s": best,
        "median_s": float(np.median(times)),
        "flops_per_s": 2.0 * size**3 / best,
        "median_flops_per_s": 2.0 * size**3 / float(np.median(times)),
    }


# -- workloads --------------------------------------------------------------------------------------


class SequenceLengths:
    """Length S (prompt tokens + T answer tokens) of the sequence a keep-mask gives, tokenised as
    attribsdk does; cached, and computed after the timed call, never inside it."""

    def __init__(self, lm: LocalModel) -> None:
        self.lm = lm
        self._cache: dict[tuple[str, tuple[bool, ...]], int] = {}

    def sequences(self, work: Workload, masks: list[list[bool]]) -> list[int]:
        out: list[int] = []
        for row in masks:
            key = (work.example_id, tuple(bool(k) for k in row))
            if key not in self._cache:
                self._cache[key] = len(prompt_ids(self.lm, work.prompt, list(key[1])))
            out.append(self._cache[key] + len(work.answer_ids))
        return out


def build_workloads(lm: LocalModel, protocol: str, n: int, split: str, seed: int) -> list[Workload]:
    if n <= 0:
        return []
    examples = stratified(load_dataset(f"hotpotqa-{protocol}", split=split), n)  # type: ignore[arg-type]
    out: list[Workload] = []
    for ex in examples:
        answer = (ex.reference_answer or "").strip()
        if not answer:
            continue
        ids = tuple(int(i) for i in lm.tokenizer(answer, add_special_tokens=False)["input_ids"])
        masks = {
            family: RopeLime(sampler=family).cfg.sampler.sample(ex.n_features, np.random.default_rng(seed))
            for family in ("sparse-k", "loo")
        }
        out.append(Workload(ex.id, protocol, ex.prompt, answer, ids, tuple(ex.gold), masks))
    return out


# -- running ----------------------------------------------------------------------------------------


def run_system(
    name: str,
    runner: Callable[[LocalModel, Workload, Family], CompetitorResult],
    lm: LocalModel,
    workloads: list[Workload],
    warmup: Workload | None,
    counter: ForwardCounter,
    shape: ModelShape,
    lengths_of: SequenceLengths,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Warm ``name`` up once, then time it on every workload. Returns rows and memory figures."""
    family = SYSTEMS[name].family
    warm_error = None
    if warmup is not None:
        try:
            runner(lm, warmup, family)
        except Exception as exc:
            warm_error = f"{type(exc).__name__}: {exc}"
    rows: list[dict[str, Any]] = []
    rss = RssWatch()
    with rss.watch():
        for work in workloads:
            row: dict[str, Any] = {
                "system": name,
                "family": family,
                "protocol": work.protocol,
                "id": work.example_id,
                "m": work.n_features,
                "answer_tokens": len(work.answer_ids),
                "planned_sequences": work.n_rows(family),
            }
            counter.reset()
            counter.active = True
            t0 = time.perf_counter()
            try:
                result = runner(lm, work, family)
            except Exception as exc:
                row["seconds"] = time.perf_counter() - t0
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc(limit=6)
                rows.append(row)
                continue
            finally:
                counter.active = False
            seconds = time.perf_counter() - t0
            n_answer = len(work.answer_ids)
            flops = shape.flops(counter.tokens, counter.attn_pairs, result.sequences, n_answer)
            lengths = lengths_of.sequences(work, result.masks) if result.masks is not None else []
            score = float("nan")
            if result.attributions is not None and len(result.attributions) == work.n_features:
                score = auroc(result.attributions, work.gold)
            row.update(
                seconds=seconds,
                sequences=result.sequences,
                seq_tokens=sum(lengths),
                fed_tokens=counter.tokens,
                decoder_calls=counter.calls,
                decoder_rows=counter.rows,
                attn_pairs=counter.attn_pairs,
                flops_run=flops,
                flops_seq=shape.sequence_flops(lengths, n_answer),
                masks=result.masks,
                auroc=score,
                attributions=result.attributions,
                extras=result.extras,
            )
            rows.append(row)
    memory = {
        "rss_start_mib": rss.start / MIB,
        "rss_peak_delta_mib": (rss.peak - rss.start) / MIB,
        "maxrss_delta_mib": (rss.maxrss_after - rss.maxrss_before) / MIB,
        "maxrss_mib": rss.maxrss_after / MIB,
        "warmup_error": warm_error,
        "threads_after": torch.get_num_threads(),
    }
    return rows, memory


def summarize(
    rows: list[dict[str, Any]], memory: dict[str, dict[str, Any]], bound: float, systems: list[str]
) -> list[dict[str, Any]]:
    """One summary per (protocol, system), for each protocol and, with two, ``all`` too.

    Ratios compare a system with its attribsdk baseline on the examples both completed.
    """
    out: list[dict[str, Any]] = []
    protocols = sorted({r["protocol"] for r in rows})
    for protocol in [*protocols, "all"] if len(protocols) > 1 else protocols:
        sel = [r for r in rows if protocol == "all" or r["protocol"] == protocol]
        ok_by = {s: {r["id"]: r for r in sel if r["system"] == s and "error" not in r} for s in systems}
        for name in systems:
            ok = list(ok_by[name].values())
            seconds = sum(r["seconds"] for r in ok)

            def rate(key: str, rows_: list[dict[str, Any]] = ok, secs: float = seconds) -> float:
                return sum(r[key] for r in rows_) / secs if secs else math.nan

            summary: dict[str, Any] = {
                "protocol": protocol,
                "system": name,
                "family": SYSTEMS[name].family,
                "n": len(ok),
                "errors": [r["error"] for r in sel if r["system"] == name and "error" in r],
                "sequences": sum(r["sequences"] for r in ok),
                "seq_tokens": sum(r["seq_tokens"] for r in ok),
                "fed_tokens": sum(r["fed_tokens"] for r in ok),
                "seconds": seconds,
                "s_per_expl": seconds / len(ok) if ok else math.nan,
                "seq_per_s": rate("sequences"),
                "tok_per_s": rate("seq_tokens"),
                "fed_tok_per_s": rate("fed_tokens"),
                "flops_per_s": rate("flops_run"),
                "effective_flops_per_s": rate("flops_seq"),
                "auroc": _nanmean([r["auroc"] for r in ok]),
                **memory.get(name, {}),
            }
            summary["pct_of_bound"] = 100.0 * summary["flops_per_s"] / bound if bound else math.nan
            scoring = [r["extras"]["scoring_s"] for r in ok if "scoring_s" in r["extras"]]
            if scoring and len(scoring) == len(ok):
                summary["scoring_s_per_expl"] = sum(scoring) / len(scoring)
                summary["scoring_flops_per_s"] = sum(r["flops_run"] for r in ok) / sum(scoring)
                summary["scoring_pct_of_bound"] = 100.0 * summary["scoring_flops_per_s"] / bound
            base = SYSTEMS[name].baseline
            shared = [i for i in ok_by[name] if i in ok_by.get(base, {})]
            if shared:
                mine, theirs = [ok_by[name][i] for i in shared], [ok_by[base][i] for i in shared]
                s_sys, s_base = sum(r["seconds"] for r in mine), sum(r["seconds"] for r in theirs)
                summary["time_ratio_vs_attribsdk"] = s_sys / s_base
                summary["tokps_ratio_attribsdk_over_system"] = rate("seq_tokens", theirs, s_base) / rate(
                    "seq_tokens", mine, s_sys
                )
            out.append(summary)
    return out


def _nanmean(xs: list[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return float(np.mean(vals)) if vals else math.nan


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


#: Table columns: header and how a summary fills it.
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("protocol", lambda s: s["protocol"]),
    ("system", lambda s: s["system"] + (f" ({len(s['errors'])} failed)" if s["errors"] else "")),
    ("n", lambda s: str(s["n"])),
    ("seq", lambda s: str(s["sequences"])),
    ("seq tokens", lambda s: str(s["seq_tokens"])),
    ("fed tokens", lambda s: str(s["fed_tokens"])),
    ("s/expl", lambda s: _fmt(s["s_per_expl"])),
    ("seq/s", lambda s: _fmt(s["seq_per_s"])),
    ("tok/s", lambda s: _fmt(s["tok_per_s"], 0)),
    ("GFLOP/s run", lambda s: _fmt(s["flops_per_s"] / 1e9, 1)),
    ("% bound", lambda s: _fmt(s["pct_of_bound"], 1)),
    ("GFLOP/s eff.", lambda s: _fmt(s["effective_flops_per_s"] / 1e9, 1)),
    (
        "× time vs attribsdk",
        lambda s: "1 (baseline)" if _is_baseline(s) else _fmt(s.get("time_ratio_vs_attribsdk")),
    ),
    (
        "attribsdk tok/s ÷ system",
        lambda s: "1" if _is_baseline(s) else _fmt(s.get("tokps_ratio_attribsdk_over_system")),
    ),
    ("RSS peak Δ MiB", lambda s: _fmt(s.get("rss_peak_delta_mib"), 0)),
    ("maxrss Δ MiB", lambda s: _fmt(s.get("maxrss_delta_mib"), 0)),
    ("AUROC", lambda s: _fmt(s["auroc"], 3)),
]


def _is_baseline(summary: dict[str, Any]) -> bool:
    return bool(summary["system"] == SYSTEMS[summary["system"]].baseline)


def render_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table of the summaries; a system with no completed example shows its first error."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in summaries:
        if s["n"] == 0:
            err = (s["errors"][0] if s["errors"] else "not run").replace("|", "/").replace("\n", " ")
            cells = [s["protocol"], s["system"], "0", f"ERROR: {err[:200]}"] + [""] * (len(COLUMNS) - 4)
        else:
            cells = [fill(s) for _, fill in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parity_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Checks that the systems did the same work (targets, prompts, answer tokens, masks)."""
    notes: list[str] = []
    by = {(r["system"], r["id"]): r for r in rows if "error" not in r}
    for (system, ex_id), row in sorted(by.items()):
        extras = row.get("extras", {})
        if system.startswith("naive"):
            base = by.get(("attribsdk-loo" if system == "naive-loo" else "attribsdk-sparsek", ex_id))
            if base is not None and base["extras"].get("targets"):
                diff = float(np.max(np.abs(np.subtract(extras["targets"], base["extras"]["targets"]))))
                notes.append(f"{system} {ex_id}: max |KL target - attribsdk's| = {diff:.2e} nats")
        for key in (
            "masks_match_workload",
            "prompt_matches_attribsdk",
            "answer_tokens_match_attribsdk",
        ):
            if key in extras and not extras[key]:
                notes.append(f"{system} {ex_id}: {key} is False")
        if "engine_tokens" in extras and extras["engine_tokens"] != row["seq_tokens"]:
            notes.append(
                f"{system} {ex_id}: engine counts {extras['engine_tokens']} tokens, "
                f"its masks give {row['seq_tokens']}"
            )
        if row["sequences"] != row["planned_sequences"]:
            notes.append(
                f"{system} {ex_id}: {row['sequences']} sequences, planned {row['planned_sequences']}"
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-paper", type=int, default=5, help="HotpotQA paper-protocol examples (default 5)")
    p.add_argument("--n-full", type=int, default=2, help="HotpotQA full-context examples (default 2)")
    p.add_argument("--split", choices=["tune", "report", "all"], default="report")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--lanes", type=int, default=None, help="attribsdk scoring lanes (default: the model's)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, choices=[0, 1], default=1, help="warm each system up (1) or not")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--cc-batch-size", type=int, default=1, help="ContextCite's batch_size (its default 1)")
    p.add_argument("--json-out", default="benchmarks/results/engine.json")
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    systems: list[str] = list(dict.fromkeys(args.systems))

    t_load = time.perf_counter()
    lm = load_model("smollm2", device=args.device, dtype=args.dtype, lanes=args.lanes)
    print(
        f"loaded {lm!r} in {time.perf_counter() - t_load:.1f} s; {threads} threads, "
        f"{lm.lanes} scoring lane(s) for attribsdk",
        flush=True,
    )
    shape = ModelShape.of(lm)
    workloads = build_workloads(lm, "paper", args.n_paper, args.split, args.seed)
    workloads += build_workloads(lm, "full", args.n_full, args.split, args.seed)
    if not workloads:
        print("no examples selected", file=sys.stderr)
        return 2
    # Warm up on a small paper-protocol example (never on a full-context one: that would double
    # the run for no gain).
    small = build_workloads(lm, "paper", 1, args.split, args.seed) or workloads
    cheapest = min(small, key=lambda w: w.n_rows("sparse-k") * len(chat_len_proxy(w)))
    warmup = cheapest if args.warmup else None

    bound_start = matmul_bound(args.matmul_size, args.matmul_reps, lm.torch_device)
    print(
        f"fp32 matmul: {bound_start['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({args.matmul_size}², best of {args.matmul_reps}; measured again at the end)",
        flush=True,
    )

    counter = ForwardCounter(lm.decoder)
    lengths_of = SequenceLengths(lm)
    attribsdk = AttribsdkRunner(lm, args.seed)
    rows: list[dict[str, Any]] = []
    memory: dict[str, dict[str, Any]] = {}
    try:
        for name in systems:
            t0 = time.perf_counter()
            runner = make_runner(name, attribsdk, args.cc_batch_size, args.seed)
            sys_rows, memory[name] = run_system(
                name, runner, lm, workloads, warmup, counter, shape, lengths_of
            )
            rows.extend(sys_rows)
            failed = sum("error" in r for r in sys_rows)
            print(
                f"  {name}: {len(sys_rows) - failed}/{len(sys_rows)} ok, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    finally:
        counter.close()
        attribsdk.close()

    captum_checks: dict[str, Any] | None = None
    if any(s.startswith("captum") for s in systems):
        try:
            captum_checks = {"example": cheapest.example_id, **captum_parity(lm, cheapest)}
        except Exception as exc:
            captum_checks = {"example": cheapest.example_id, "error": f"{type(exc).__name__}: {exc}"}

    bound_end = matmul_bound(args.matmul_size, args.matmul_reps, lm.torch_device)
    bound = {
        "flops_per_s": max(bound_start["flops_per_s"], bound_end["flops_per_s"]),
        "start": bound_start,
        "end": bound_end,
    }
    summaries = summarize(rows, memory, bound["flops_per_s"], systems)
    table = render_table(summaries)
    notes = parity_notes(rows)
    if captum_checks is not None:
        notes.append(f"captum checks (patch 1: cached vs uncached answer log-probs, nats): {captum_checks}")
    print(
        f"\nHotpotQA {args.split} split: {args.n_paper} paper + {args.n_full} full-context examples; "
        f"surrogate {lm.name} {lm.dtype} on {lm.device}, {threads} threads; "
        f"bound {bound['flops_per_s'] / 1e9:.1f} GFLOP/s (fp32 matmul)\n"
    )
    print(table)
    for s in summaries:
        if "scoring_s_per_expl" in s:
            print(
                f"  {s['protocol']} {s['system']} scoring stage only: {s['scoring_s_per_expl']:.2f} s/expl, "
                f"{s['scoring_flops_per_s'] / 1e9:.1f} GFLOP/s run "
                f"({s['scoring_pct_of_bound']:.1f} % of bound)"
            )
    if notes:
        print("\nparity:\n  " + "\n  ".join(notes))
    write_json(
        Path(args.json_out),
        {
            "args": vars(args),
            "machine": machine(),
            "bound": bound,
            "model": {"name": lm.name, "dtype": lm.dtype, "device": lm.device, **vars(shape)},
            "flop_formula": (
                "2*N_ne*tokens + 4*L*H*d*sum(past+i over fed tokens) + 2*h*V*T*sequences "
                "(see bench_engine.py docstring)"
            ),
            "systems": {n: SYSTEMS[n].about for n in systems},
            "summaries": summaries,
            "parity": notes,
            "captum_checks": captum_checks,
            "rows": rows,
            "table": table,
        },
    )
    print(f"\nwrote {args.json_out}")
    return 0


def chat_len_proxy(work: Workload) -> str:
    """The unmasked user message (a cheap proxy for prompt length when picking the warm-up example)."""
    return work.prompt.render().messages[-1].content


if __name__ == "__main__":
    raise SystemExit(main())

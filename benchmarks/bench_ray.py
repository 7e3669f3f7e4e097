"""Throughput of the Ray engine from 1 to N local actors, and what a multi-GPU cluster would give.

Explains ``--n`` HotpotQA paper-protocol examples (report split, spread over the buckets of M,
the dataset's reference answers, so no closed calls) with RoPE-LIME and the SmolLM2 surrogate
(float32, 1 torch thread per actor), first in-process (the local engine, 1 thread), then on a
local Ray cluster with 1, 2, ... actors (``--actors``), ``--per-actor`` examples in flight per
actor. Every pool is warmed with one example per actor before the clock starts; model loading is
reported apart. Figures: examples/s, surrogate sequences/s and tokens/s, speed-up and efficiency
against one actor, and the driver's own CPU seconds per example (sampling, regression, Ray
serialisation: what one driver process can feed at most).

The multi-GPU lines are ARITHMETIC, not measurements: N workers give at most N × one worker's
throughput, and never more than one driver can feed (1 / driver CPU s per example). A GPU
worker's own throughput must be measured on a GPU; none is used here.

Writes ``benchmarks/results/ray.json`` and prints a markdown table. Run:
    python benchmarks/bench_ray.py --n 8 --actors 1 2
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
from _common import machine, stratified, write_json  # type: ignore[import-not-found]

from attribsdk import Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.eval.datasets import LabeledExample, load_dataset
from attribsdk.prompt import Example


def _examples(items: list[LabeledExample]) -> list[Example]:
    return [Example(prompt=e.prompt, answer=e.reference_answer, id=e.id) for e in items]


async def _measure(
    ex: Explainer, warm: list[Example], timed: list[Example], concurrency: int
) -> dict[str, Any]:
    await ex.explain_many(warm, concurrency=len(warm))
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await ex.explain_many(timed, concurrency=concurrency)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if isinstance(r, Explanation)]
    if len(ok) != len(timed):
        raise RuntimeError(f"{len(timed) - len(ok)} explanations failed: {results}")
    seqs = sum(r.counts.surrogate_sequences for r in ok)
    toks = sum(int(r.engine.get("computed_tokens", r.counts.surrogate_tokens)) for r in ok)
    return {
        "examples": len(ok),
        "wall_s": wall,
        "examples_per_s": len(ok) / wall,
        "sequences_per_s": seqs / wall,
        "computed_tokens_per_s": toks / wall,
        "sequences": seqs,
        "driver_cpu_s_per_example": cpu / len(ok),
        "median_s_per_example": statistics.median(r.timings.total for r in ok),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from attribsdk.scoring.ray import RayScorer

    need = args.n + max(args.actors)
    items = stratified(load_dataset("hotpotqa-paper", split="report"), need)
    timed, warm_pool = _examples(items[: args.n]), _examples(items[args.n :])
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine()}
    out["machine"]["cores"] = os.cpu_count()
    out["examples"] = [e.id for e in items[: args.n]]
    closed = TestModel("unused")  # reference answers are given: no closed call is made

    async with Explainer(
        closed=closed, surrogate="smollm2", device="cpu", dtype="float32", cache=False
    ) as ex:
        import torch

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        await ex.scorer()
        local = await _measure(ex, warm_pool[:1], timed, args.per_actor)
        local["load_and_warm_s"] = time.perf_counter() - t0 - local["wall_s"]
    out["local_1_thread"] = local
    print(f"local engine, 1 thread: {local['examples_per_s']:.3f} examples/s", flush=True)

    ray.init(
        num_cpus=max(args.actors), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    runs = []
    try:
        for k in args.actors:
            t0 = time.perf_counter()
            pool = RayScorer("smollm2", num_actors=k, device="cpu", dtype="float32", threads=1)
            load = time.perf_counter() - t0
            try:
                async with Explainer(closed=closed, surrogate=pool, cache=False) as ex:
                    row = await _measure(ex, warm_pool[:k], timed, args.per_actor * k)
                row.update(actors=k, pool_start_s=load, per_actor_requests=list(pool.stats.per_actor))
            finally:
                pool.close()
            runs.append(row)
            print(f"{k} actor(s): {row['examples_per_s']:.3f} examples/s", flush=True)
    finally:
        ray.shutdown()
    base = runs[0]["examples_per_s"]
    for row in runs:
        row["speedup"] = row["examples_per_s"] / base
        row["efficiency"] = row["speedup"] / row["actors"]
    out["ray"] = runs

    one = runs[0]
    driver_cap = 1.0 / max(r["driver_cpu_s_per_example"] for r in runs)
    out["projection"] = {
        "kind": "arithmetic, not measured",
        "formula": "examples/s(N) = min(N × one worker's examples/s, 1 / driver CPU s per example)",
        "driver_cap_examples_per_s": driver_cap,
        "cpu_workers_like_this_one": {
            str(n): min(n * one["examples_per_s"], driver_cap) for n in (1, 2, 4, 8, 16)
        },
        "gpu_note": "no GPU was measured here: put one GPU worker's measured examples/s in the formula",
    }
    out["table"] = _table(out)
    return out


def _table(out: dict[str, Any]) -> str:
    lines = [
        "| engine | actors | examples/s | sequences/s | tokens/s | speed-up | efficiency | driver CPU s/ex |",
        "|---|---|---|---|---|---|---|---|",
    ]
    loc = out["local_1_thread"]
    lines.append(
        f"| local (1 thread) | – | {loc['examples_per_s']:.3f} | {loc['sequences_per_s']:.1f} | "
        f"{loc['computed_tokens_per_s']:.0f} | – | – | {loc['driver_cpu_s_per_example']:.2f} |"
    )
    for r in out["ray"]:
        lines.append(
            f"| ray | {r['actors']} | {r['examples_per_s']:.3f} | {r['sequences_per_s']:.1f} | "
            f"{r['computed_tokens_per_s']:.0f} | {r['speedup']:.2f}× | {r['efficiency']:.0%} | "
            f"{r['driver_cpu_s_per_example']:.2f} |"
        )
    p = out["projection"]
    proj = ", ".join(f"{n}: {v:.2f}" for n, v in p["cpu_workers_like_this_one"].items())
    lines += [
        "",
        f"Projection ({p['kind']}): {p['formula']}. One driver feeds at most "
        f"{p['driver_cap_examples_per_s']:.1f} examples/s. Workers like this one → examples/s: {proj}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="timed examples")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--per-actor", type=int, default=2, help="examples in flight per actor")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ray.json"))
    args = ap.parse_args()
    out = anyio.run(run, args)
    write_json(args.out, out)
    print(out["table"])


if __name__ == "__main__":
    main()

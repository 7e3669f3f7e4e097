"""Choose RoPE-LIME's defaults by measurement on the `tune` split of the HotpotQA dev data.

Sweeps, one factor at a time from the current defaults:
  * the layer whose post-RoPE keys build span embeddings,
  * whether Sparse-K's k counts masked or kept features,
  * (k, c) per bucket of M over the paper's grid,
  * c for large M on the full-context protocol (`--sweep c-large`): each example is explained once
    with c = M, then refitted on the first N' rows for every smaller c of the paper's grid. Sparse-K
    draws rows greedily, so those rows are exactly what SparseK(c=...) draws with the same seed (the
    script asserts it), and one scoring pass prices every c. LOO runs beside it for reference.
Reports mean AUROC / IoU per setting and bucket. The chosen values are written into the code
(`DEFAULT_LAYER` in attribsdk/methods/rope_lime.py, `DEFAULT_SCHEDULE` in attribsdk/sampling.py)
by hand, and the figures go into the README. Never run this on the `report` split.

Run: `.venv/bin/python benchmarks/choose_defaults.py --sweep layer --n 40`
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from _common import BUCKET_ORDER, stratified, write_json

from attribsdk import Explainer, RopeLime
from attribsdk.eval.datasets import load_hotpotqa
from attribsdk.eval.metrics import auroc, iou_at_k
from attribsdk.locality import RWMDKernel
from attribsdk.regression import normalize_attributions
from attribsdk.sampling import CRule, KRule, SparseK

K_RULES: list[KRule] = ["sqrt", "2sqrt", "4sqrt"]
C_RULES: list[CRule] = ["min(M,16k)", "M", "min(M,8k)", "0.5M", "0.25M", "min(M,4k)"]


def settings(sweep: str, n_layers: int) -> dict[str, dict[str, Any]]:
    if sweep == "layer":
        layers = sorted({1, 2, 4, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
        return {f"layer={layer}": {"layer": layer} for layer in layers}
    if sweep == "mode":
        return {f"mode={m}": {"sampler": SparseK(mode=m)} for m in ("mask", "keep")}
    if sweep == "kernel":
        return {f"kernel={k}": {"kernel": k} for k in ("rwmd", "cosine", "none")}
    if sweep == "kc":
        return {f"k={k},c={c}": {"sampler": SparseK(k=k, c=c)} for k in K_RULES for c in C_RULES}
    if sweep == "kc-small":
        small: list[CRule] = ["M", "0.5M"]
        return {f"k={k},c={c}": {"sampler": SparseK(k=k, c=c)} for k in K_RULES for c in small}
    if sweep == "target":
        return {f"target={t}": {"target": t} for t in ("kl", "delta_nll")}
    raise SystemExit(f"unknown sweep {sweep}")


def _refit(masks: np.ndarray, targets: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """RoPE-LIME's fit on a subset of rows: the default RWMD kernel's weights for those rows'
    stored distances (bandwidth from those rows), then its weighted least squares."""
    cfg = RopeLime().cfg
    assert isinstance(cfg.kernel, RWMDKernel)
    weights = cfg.kernel.from_distances(distances).weights
    fit = cfg.solver.fit(masks.astype(np.float64), -targets, weights)
    return normalize_attributions(fit.coef)


async def c_large(args: argparse.Namespace) -> None:
    pool = (
        e for e in load_hotpotqa(protocol="full", split="tune") if args.min_m <= e.n_features <= args.max_m
    )
    examples = list(itertools.islice(pool, args.n))
    out = Path(f"benchmarks/results/choose_c-large-{args.mode}-{args.k}.json")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    async with Explainer() as ex:
        for i, item in enumerate(examples):
            res = await ex.explain_prompt(
                item.prompt, method=RopeLime(sampler=SparseK(k=args.k, c="M", mode=args.mode))
            )
            assert res.samples is not None
            masks = np.asarray(res.samples.masks, dtype=bool)
            targets = np.asarray(res.samples.targets)
            distances = np.asarray(res.samples.distances)
            m = item.n_features
            for c in C_RULES:
                sampler = SparseK(k=args.k, c=c, mode=args.mode)
                n_rows = sampler.n_rows(m)
                if n_rows > len(masks):
                    continue
                drawn = sampler.sample(m, np.random.default_rng(res.seed))
                assert np.array_equal(drawn, masks[:n_rows]), "row prefix differs from a fresh draw"
                attr = _refit(masks[:n_rows], targets[:n_rows], distances[:n_rows])
                rows.append(
                    {
                        "setting": f"{args.mode},k={args.k},c={c}",
                        "id": item.id,
                        "m": m,
                        "auroc": auroc(attr, item.gold),
                        "iou": iou_at_k(attr, item.gold),
                        "sequences": n_rows,
                        # Scoring time of the c = M run, pro rata by rows (rows are alike in length).
                        "seconds": res.timings.scoring * (n_rows - 1) / (len(masks) - 1),
                    }
                )
            if args.no_loo:
                print(f"  {i + 1}/{len(examples)} M={m} ({time.perf_counter() - t0:.0f} s)", flush=True)
                write_json(out, {"args": vars(args), "rows": rows})
                continue
            loo = await ex.explain_prompt(item.prompt, answer=res.answer, method=RopeLime(sampler="loo"))
            rows.append(
                {
                    "setting": "loo",
                    "id": item.id,
                    "m": m,
                    "auroc": auroc(loo.attributions, item.gold),
                    "iou": iou_at_k(loo.attributions, item.gold),
                    "sequences": loo.counts.surrogate_sequences,
                    "seconds": loo.timings.scoring,
                }
            )
            print(f"  {i + 1}/{len(examples)} M={m} ({time.perf_counter() - t0:.0f} s)", flush=True)
            write_json(out, {"args": vars(args), "rows": rows})
    print(f"\nsweep c-large on {len(examples)} full-context tune examples: mean AUROC / IoU / sequences / s")
    print("| setting | AUROC | IoU | sequences | scoring s |\n|---|---|---|---|---|")
    for name in [*(f"{args.mode},k={args.k},c={c}" for c in C_RULES), "loo"]:
        sel = [r for r in rows if r["setting"] == name]
        if sel:
            au = statistics.fmean(r["auroc"] for r in sel if r["auroc"] == r["auroc"])
            io = statistics.fmean(r["iou"] for r in sel)
            sq = statistics.fmean(r["sequences"] for r in sel)
            sec = statistics.fmean(r["seconds"] for r in sel)
            print(f"| {name} | {au:.3f} | {io:.3f} | {sq:.0f} | {sec:.1f} |")


async def main(args: argparse.Namespace) -> None:
    if args.sweep == "c-large":
        await c_large(args)
        return
    pool = (e for e in load_hotpotqa(protocol="paper", split="tune") if e.n_features <= args.max_m)
    examples = stratified(pool, args.n)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    async with Explainer() as ex:
        scorer: Any = await ex.scorer()
        grid = settings(args.sweep, int(scorer.n_layers))
        answers: dict[str, str] = {}
        for i, item in enumerate(examples):
            for name, kw in grid.items():
                res = await ex.explain_prompt(item.prompt, answer=answers.get(item.id), method=RopeLime(**kw))
                answers[item.id] = res.answer
                rows.append(
                    {
                        "setting": name,
                        "bucket": item.bucket,
                        "m": item.n_features,
                        "auroc": auroc(res.attributions, item.gold),
                        "iou": iou_at_k(res.attributions, item.gold),
                        "sequences": res.counts.surrogate_sequences,
                        "seconds": res.timings.total,
                    }
                )
            print(f"  {i + 1}/{len(examples)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["setting"], r["bucket"])].append(r)
        by[(r["setting"], "all")].append(r)
    print(f"\nsweep {args.sweep} on {len(examples)} tune examples: mean AUROC / IoU / sequences")
    header = "| setting | " + " | ".join([*BUCKET_ORDER, "all"]) + " |"
    print(header + "\n|" + "---|" * (len(BUCKET_ORDER) + 2))
    for name in grid:
        cells = []
        for b in [*BUCKET_ORDER, "all"]:
            sel = by.get((name, b), [])
            if not sel:
                cells.append("-")
                continue
            au = statistics.fmean(r["auroc"] for r in sel if r["auroc"] == r["auroc"])
            io = statistics.fmean(r["iou"] for r in sel)
            sq = statistics.fmean(r["sequences"] for r in sel)
            cells.append(f"{au:.3f} / {io:.3f} / {sq:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    write_json(Path(f"benchmarks/results/choose_{args.sweep}.json"), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    sweeps = ["layer", "mode", "kernel", "kc", "kc-small", "target", "c-large"]
    p.add_argument("--sweep", choices=sweeps, required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--max-m", type=int, default=10**9, help="only examples with at most this many features")
    p.add_argument("--min-m", type=int, default=1, help="only examples with at least this many features")
    p.add_argument("--mode", choices=["mask", "keep"], default="mask", help="Sparse-K mode (c-large sweep)")
    p.add_argument("--k", choices=K_RULES, default="2sqrt", help="Sparse-K k rule (c-large sweep)")
    p.add_argument("--no-loo", action="store_true", help="skip the LOO reference (c-large sweep)")
    anyio.run(main, p.parse_args())

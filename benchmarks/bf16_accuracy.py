"""What bfloat16 costs in accuracy: the same RoPE-LIME scoring requests in float32 and bfloat16.

Scores Sparse-K requests of HotpotQA paper-protocol examples (``tune`` split, fixed reference
answers) with the shipped SmolLM2 in both dtypes and prints, per example and overall, the largest
absolute and relative difference of the KL targets, the largest difference of the answer
log-probabilities, and the Spearman correlation of the attributions' rankings. Speed is printed too
(on CPUs without native bf16 units, bf16 is emulated and much slower).

    .venv/bin/python benchmarks/bf16_accuracy.py --n 3
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
from scipy.stats import spearmanr

from attribsdk.eval.datasets import load_dataset
from attribsdk.locality import make_kernel, polar_pool
from attribsdk.regression import make_solver
from attribsdk.sampling import make_sampler
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from attribsdk.scoring.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3, help="examples")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        models = {d: load_model("smollm2", device=args.device, dtype=d) for d in ("float32", "bfloat16")}
    kernel, solver = make_kernel("rwmd"), make_solver("wls")
    rows = []
    for ex in itertools.islice(load_dataset("hotpotqa-paper", split="tune"), args.n):
        masks = make_sampler("sparse-k").sample(ex.prompt.n_features, np.random.default_rng(0))
        assert ex.reference_answer
        request = ScoringRequest(
            prompts=[ex.prompt.render(m) for m in masks],
            answer=ex.reference_answer,
            capture=CaptureSpec(layer=0.1, pool=polar_pool),
        )
        out, secs, attr = {}, {}, {}
        for dtype, lm in models.items():
            t0 = time.perf_counter()
            out[dtype] = lm.score(request)
            secs[dtype] = time.perf_counter() - t0
            w = kernel.weights(masks, out[dtype].spans).weights
            attr[dtype] = solver.fit(masks.astype(float), -out[dtype].targets, w).coef
        a, b = out["float32"], out["bfloat16"]
        d = np.abs(a.targets - b.targets)
        rel = float((d[1:] / np.maximum(np.abs(a.targets[1:]), 1e-9)).max()) if len(d) > 1 else 0.0
        rho = (
            float(spearmanr(attr["float32"], attr["bfloat16"]).statistic)
            if len(masks[0]) > 2
            else float("nan")
        )
        rows.append((float(d.max()), rel, float(np.abs(a.answer_logprobs - b.answer_logprobs).max()), rho))
        print(
            f"{ex.id[:10]} M={ex.prompt.n_features:2d} N={len(masks):2d}  max|ΔKL| {d.max():.2e} nats "
            f"(rel {rel:.1%})  max|Δ log p| {rows[-1][2]:.3f}  rank corr {rho:.3f}  "
            f"fp32 {secs['float32']:.1f} s  bf16 {secs['bfloat16']:.1f} s"
        )
    arr = np.array(rows)
    print(
        f"overall ({len(rows)} examples): max|ΔKL| {arr[:, 0].max():.2e} nats, "
        f"median rel {np.median(arr[:, 1]):.1%}, "
        f"max|Δ log p| {arr[:, 2].max():.3f}, mean rank corr {np.nanmean(arr[:, 3]):.3f}"
    )


if __name__ == "__main__":
    main()

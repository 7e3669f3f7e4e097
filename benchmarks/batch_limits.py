"""Micro-batch bounds sweep: which ``BatchLimits`` score RoPE-LIME requests fastest on this machine.

Builds the default Sparse-K scoring requests (post-RoPE capture on) for HotpotQA paper-protocol and
full-context examples (``tune`` split, reference answers), then scores all of them under each
``(max_sequences, max_tokens)`` pair with the shipped SmolLM2 and prints fed tokens per second
(tokens that really went through the model), scored-sequence tokens per second and padding.

    .venv/bin/python benchmarks/batch_limits.py --n-paper 6 --n-full 1
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from attribsdk.eval.datasets import load_dataset
from attribsdk.locality import polar_pool
from attribsdk.sampling import make_sampler
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from attribsdk.scoring.engine import BatchLimits
from attribsdk.scoring.models import load_model

GRID = [(4, 1200), (8, 1200), (8, 2500), (16, 2500), (8, 4000), (16, 4000), (32, 8000)]


def requests(dataset: str, n: int) -> list[ScoringRequest]:
    out = []
    for ex in itertools.islice(load_dataset(dataset, split="tune"), n):
        masks = make_sampler("sparse-k").sample(ex.prompt.n_features, np.random.default_rng(0))
        assert ex.reference_answer
        out.append(
            ScoringRequest(
                prompts=[ex.prompt.render(m) for m in masks],
                answer=ex.reference_answer,
                capture=CaptureSpec(layer=0.1, pool=polar_pool),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-paper", type=int, default=6)
    parser.add_argument("--n-full", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    lm = load_model("smollm2", device="cpu", dtype="float32", threads=args.threads)
    work = {"paper": requests("hotpotqa-paper", args.n_paper), "full": requests("hotpotqa-full", args.n_full)}
    lm.score(work["paper"][0])  # warm-up
    print(
        f"{torch.get_num_threads()} threads; rows: "
        + ", ".join(f"{k} {sum(len(r.prompts) for r in v)}" for k, v in work.items())
    )
    print("| protocol | max_sequences | max_tokens | s | fed tok/s | seq tok/s | padding |")
    print("|---|---|---|---|---|---|---|")
    for name, reqs in work.items():
        if not reqs:
            continue
        for seqs, toks in GRID:
            lm.batch_limits = BatchLimits(max_sequences=seqs, max_tokens=toks)
            t0 = time.perf_counter()
            results = [lm.score(r) for r in reqs]
            secs = time.perf_counter() - t0
            fed = sum(r.extras["computed_tokens"] for r in results)
            nominal = sum(r.n_tokens for r in results)
            pad = float(np.mean([r.extras["padding_fraction"] for r in results]))
            print(
                f"| {name} | {seqs} | {toks} | {secs:.1f} | {fed / secs:.0f} | {nominal / secs:.0f} "
                f"| {pad:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

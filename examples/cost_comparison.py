"""What RoPE-LIME saves: RoPE-LIME (Sparse-K), RoPE-LIME (LOO) and gSMILE on a few HotpotQA examples.

Runs offline: the "closed" model is the packaged SmolLM2 running locally, and every call is priced
as if gpt-4o-mini had answered it (the table says so). To measure real calls and real dollars,
change ONE line -- the closed model -- and set your key:

    closed="openai:gpt-4o-mini"               # OPENAI_API_KEY
    closed="anthropic:claude-3-5-haiku-latest"  # ANTHROPIC_API_KEY
    (and drop price_as)

Run:  python examples/cost_comparison.py [N]     (outputs in results/cost_comparison/: JSON, PNG, HTML)
"""

from __future__ import annotations

import sys
from pathlib import Path

from attribsdk.compare import CompareConfig, compare, format_table
from attribsdk.eval.datasets import data_dir

# The shared HotpotQA dev file when it is there, else the repository's small test slice.
SHARED = data_dir() / "hotpotqa_dev_distractor.dev.jsonl"
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hotpotqa_slice.jsonl"

config = CompareConfig(
    dataset="hotpotqa-paper",
    data_path=None if SHARED.is_file() else str(FIXTURE),
    split="report" if SHARED.is_file() else "all",
    n_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 3,
    methods=("rope-lime", "rope-lime-loo", "gsmile"),
    closed="local:smollm2",  # ← the one line to change: "openai:gpt-4o-mini", "anthropic:..."
    price_as="openai:gpt-4o-mini",
)

if __name__ == "__main__":
    report = compare(config, "results/cost_comparison")
    print(format_table(report))
    print("\nJSON, plot and page: results/cost_comparison/compare.json, compare.png, compare.html")

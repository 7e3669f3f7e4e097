"""The examples in examples/ run offline on the embedded defaults and print what they promise.

Each runs as a subprocess (the way a user runs it), in a temporary working directory so its
outputs land there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run_example(name: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_async_app_explains_concurrently_within_a_budget(tmp_path: Path) -> None:
    out = _run_example("async_app.py", str(tmp_path / "out"), cwd=tmp_path)
    assert out.count("\nQ: ") == 3 and out.count("-> most supporting sentence: ") == 3
    assert sorted(line.split()[1] for line in out.splitlines() if line.startswith("  request ")) == [
        "1",
        "2",
        "3",
    ]
    for line in out.splitlines():
        if line.startswith("Answer: "):
            assert line.removeprefix("Answer: ").strip()
    # the fourth request is refused by the shared budget, before any call is made
    assert "refused, nothing sent: budget: max_calls=3 reached" in out
    report = out.split("cost report: ", 1)[1]
    assert report.startswith("3 closed calls") and "user prices for local:smollm2" in report
    page = (tmp_path / "out" / "explanations.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count('<section class="expl"') == 3
    assert page.count('<span class="feat') == 9  # three sentences per context, each highlighted once


def test_cost_comparison_example_prints_the_table_and_writes_the_plot(tmp_path: Path) -> None:
    out = _run_example("cost_comparison.py", "1", cwd=tmp_path)
    methods = ("rope-lime", "rope-lime-loo", "gsmile")
    rows = {cells[0]: cells for cells in map(str.split, out.splitlines()) if cells and cells[0] in methods}
    assert tuple(rows) == methods
    calls = {m: int(r[1]) for m, r in rows.items()}
    assert calls["rope-lime"] == calls["rope-lime-loo"] == 1 < calls["gsmile"]
    assert "priced AS IF openai:gpt-4o-mini had answered" in out
    folder = tmp_path / "results" / "cost_comparison"
    report = json.loads((folder / "compare.json").read_text())
    assert len(report["examples"]) == 1 and [m["method"] for m in report["methods"]] == list(rows)
    png = (folder / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rag_citations_example_cites_retrieved_sentences(tmp_path: Path) -> None:
    out = _run_example("rag_citations.py", "2", cwd=tmp_path)
    blocks = out.split("Question: ")[1:]
    assert len(blocks) == 2
    cited_any = 0
    for block in blocks:
        lines = block.splitlines()
        assert lines[1].startswith("Retrieved: ")
        assert lines[2].startswith("Answer: ") and lines[2].removeprefix("Answer: ").strip()
        citations = [line.strip() for line in lines if line.startswith("    [")]
        for cite_line in citations:  # '[<paragraph title>] "<sentence>"  (confidence 0.xx)'
            assert cite_line[1 : cite_line.index("] ")] in lines[1]  # a retrieved paragraph
            confidence = float(cite_line.rsplit("(confidence ", 1)[1].rstrip(")"))
            assert 0.5 <= confidence < 1.0 or cite_line.endswith("(confidence 1.00)")
        cited_any += bool(citations)
        assert "surrogate sequences, no LLM call" in block
    # the second question's answer names the Secretary of State: that paragraph is cited
    assert cited_any >= 1 and "[Secretary of State for Constitutional Affairs]" in blocks[1]
    assert "LLM calls: 2 (local:smollm2), cost $0.000000" in out

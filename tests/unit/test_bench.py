"""The benchmark runner, report and CLI, end to end with a tiny in-process surrogate."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from attribsdk.adapters.wrappers import TestModel
from attribsdk.errors import ConfigError, InputError
from attribsdk.eval.bench import (
    C_RULES,
    K_RULES,
    BenchConfig,
    MethodSpec,
    _append,
    parse_method_specs,
    row_key,
    run_benchmark,
    select_examples,
    sparse_k_sweep,
)
from attribsdk.eval.cli import app
from attribsdk.eval.datasets import load_hotpotqa, load_jsonl
from attribsdk.eval.faithfulness import FaithfulnessConfig
from attribsdk.eval.reference import ReferencePoint, ReferenceTable, load_reference
from attribsdk.eval.report import (
    aggregate_rows,
    load_rows,
    markdown_report,
    paired_rows,
    with_groups,
    write_report,
)
from attribsdk.explainer import placement_applies
from attribsdk.regression import UnderdeterminedFitWarning
from tests.tiny_models import tiny_local_model

pytestmark = pytest.mark.filterwarnings("ignore::attribsdk.cost.UnknownPriceWarning")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOTPOT = FIXTURES / "hotpotqa_slice.jsonl"
USER = FIXTURES / "user_examples.jsonl"


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=3, context=2048)


# -- method specs ----------------------------------------------------------------------------------


def test_parse_method_specs() -> None:
    labels = ["rope-lime", "rope-lime-loo", "rope-lime:k=2sqrt,c=min(M,16k),layer=4", "rope-lime:c=2.5"]
    specs = parse_method_specs([*labels, "rope-lime"])
    assert [s.label for s in specs] == labels
    assert specs[2].options == {"sampler": {"kind": "sparse_k", "k": "2sqrt", "c": "min(M,16k)"}, "layer": 4}
    assert specs[3].options == {"sampler": {"kind": "sparse_k", "c": 2.5}}
    assert specs[2].build().config()["layer"] == 4
    with pytest.raises(ConfigError, match="key=value"):
        parse_method_specs(["rope-lime:k"])
    with pytest.raises(ConfigError, match="sparse-k"):
        parse_method_specs(["rope-lime:sampler=loo,k=3"])
    with pytest.raises(ConfigError, match="unknown method"):
        MethodSpec(label="x", method="nope").build()
    with pytest.raises(ConfigError):
        parse_method_specs([" "])


def test_sparse_k_sweep_is_the_papers_grid() -> None:
    assert K_RULES == ("sqrt", "2sqrt", "4sqrt")
    assert C_RULES == ("min(M,16k)", "M", "min(M,8k)", "0.5M", "0.25M", "min(M,4k)")
    sweep = sparse_k_sweep()
    assert len(sweep) == 18 and len({s.config_hash() for s in sweep}) == 18
    assert sweep[0].label == "rope-lime:k=sqrt,c=min(M,16k)"
    assert [s.label for s in parse_method_specs(["sparse-k-sweep"])] == [s.label for s in sweep]
    # the hash follows the configuration, not the label
    a = MethodSpec(label="a", options={"sampler": {"kind": "sparse_k", "k": "sqrt", "c": "M"}})
    b = MethodSpec(label="b", options={"sampler": {"kind": "sparse_k", "k": "sqrt", "c": "M"}})
    assert a.config_hash() == b.config_hash() != MethodSpec(label="c").config_hash()


def test_two_labels_for_one_configuration_are_refused(tmp_path: Path) -> None:
    specs = parse_method_specs(["rope-lime", "rope-lime:mode=mask"])
    assert specs[0].config_hash() == specs[1].config_hash()
    with pytest.raises(ConfigError, match="'rope-lime' and 'rope-lime:mode=mask' are the same configuration"):
        run_benchmark(_config(methods=tuple(specs)), tmp_path, examples=list(load_hotpotqa(HOTPOT)))
    assert not (tmp_path / "rows.jsonl").exists()


def test_bench_config_validation() -> None:
    spec = MethodSpec(label="rope-lime")
    with pytest.raises(ConfigError, match="at least one method"):
        BenchConfig(dataset="jsonl", methods=())
    with pytest.raises(ConfigError, match="unique"):
        BenchConfig(dataset="jsonl", methods=(spec, spec))
    with pytest.raises(ConfigError, match="unknown buckets"):
        BenchConfig(dataset="jsonl", methods=(spec,), buckets=("7-9",))
    with pytest.raises(ConfigError):
        BenchConfig(dataset="jsonl", methods=(spec,), split="dev")  # type: ignore[arg-type]


def test_select_examples_per_bucket_and_round_robin() -> None:
    examples = list(load_hotpotqa(HOTPOT))
    buckets = [e.bucket for e in examples]
    assert sorted(buckets) == ["2-3", "4-5", "4-5"]
    per = select_examples(examples, n_per_bucket=1)
    assert [e.bucket for e in per] == ["2-3", "4-5"] and per[1].id == examples[buckets.index("4-5")].id
    assert [e.bucket for e in select_examples(examples, max_examples=2)] == ["2-3", "4-5"]
    assert [e.bucket for e in select_examples(examples, buckets=["4-5"])] == ["4-5", "4-5"]
    with pytest.raises(InputError, match="duplicate"):
        select_examples([examples[0], examples[0]])


# -- running ---------------------------------------------------------------------------------------


def _config(**kw: Any) -> BenchConfig:
    base: dict[str, Any] = {
        "dataset": "hotpotqa-paper",
        "split": "all",
        "surrogates": ("tiny",),
        "concurrency": 2,
        "methods": tuple(parse_method_specs(["rope-lime", "rope-lime-loo"])),
    }
    return BenchConfig(**{**base, **kw})


def test_run_writes_rows_shares_answers_and_resumes(tiny: Any, tmp_path: Path) -> None:
    examples = list(load_hotpotqa(HOTPOT))
    closed = TestModel("Paris is the capital.")
    out = tmp_path / "run"
    first = run_benchmark(
        _config(methods=(parse_method_specs(["rope-lime-loo"])[0],)),
        out,
        closed=closed,
        surrogates={"tiny": tiny},
        examples=examples,
        report=False,
    )
    assert first.computed == 3 and first.skipped == 0 and not first.errors
    assert len(closed.calls) == 3  # one closed call per example

    # resume with one more method: only the new method runs, answers are reused
    seen: list[str] = []
    second = run_benchmark(
        _config(),
        out,
        closed=closed,
        surrogates={"tiny": tiny},
        examples=examples,
        resume=True,
        on_row=lambda r: seen.append(r["method"]),
    )
    assert second.computed == 3 and second.skipped == 3 and seen == ["rope-lime"] * 3
    assert len(closed.calls) == 3 and len(second.rows) == 6
    rows = load_rows(out)
    keys = {r["key"] for r in rows}
    assert len(keys) == 6
    row = next(r for r in rows if r["method"] == "rope-lime")
    assert row["key"] == row_key(row["id"], row["method_hash"], 0, "tiny")
    assert set(row["metrics"]) == {"iou", "f1", "auroc"} and row["answer"] == "Paris is the capital."
    assert len(row["attributions"]) == row["m"] and row["sequences"] > 0 and row["closed"] == "test:model"

    # nothing left: a third resume computes nothing; a torn last line is ignored
    with (out / "rows.jsonl").open("a") as fh:
        fh.write('{"key": "torn')
    third = run_benchmark(
        _config(), out, closed=closed, surrogates={"tiny": tiny}, examples=examples, resume=True, report=False
    )
    assert third.computed == 0 and third.skipped == 6 and len(closed.calls) == 3
    # a row appended after the torn line is kept (it starts a line of its own)
    _append(out / "rows.jsonl", {**row, "key": "after-torn"})
    assert [r["key"] for r in load_rows(out)][-1] == "after-torn" and len(load_rows(out)) == 7
    with pytest.raises(ConfigError, match="already holds results"):
        run_benchmark(_config(), out, closed=closed, surrogates={"tiny": tiny}, examples=examples)
    # resuming under settings that change the numbers is refused, and nothing is computed
    other_settings: list[tuple[dict[str, Any], str]] = [
        ({"plausibility_scores": "coefficients"}, "plausibility_scores"),
        ({"faithfulness": FaithfulnessConfig(metrics=("topk",))}, "faithfulness"),
        ({"max_answer_tokens": 32}, "max_answer_tokens"),
        ({"dataset": "hotpotqa-full"}, "dataset"),
        ({"methods": (MethodSpec(label="rope-lime", options={"layer": 1}),)}, "method 'rope-lime'"),
        # the same configuration under a new label: "sparse-k" rows are stored as "rope-lime"
        ({"methods": (MethodSpec(label="sparse-k"),)}, "method 'sparse-k': its configuration's rows"),
    ]
    for change, named in other_settings:
        with pytest.raises(ConfigError, match=f"other settings \\({named}"):
            run_benchmark(
                _config(**change),
                out,
                closed=closed,
                surrogates={"tiny": tiny},
                examples=examples,
                resume=True,
            )
    with pytest.raises(ConfigError, match="closed: 'test:model' -> 'other:model'"):
        run_benchmark(
            _config(),
            out,
            closed=TestModel(answer="Paris is the capital.", name="other:model"),
            surrogates={"tiny": tiny},
            examples=examples,
            resume=True,
        )
    assert len(closed.calls) == 3 and len(load_rows(out)) == 7

    # the report: tables, strict JSON, plots
    assert second.report is not None
    md = second.report.markdown.read_text()
    assert "| 4-5 | rope-lime-loo | 2 |" in md and "| all | rope-lime | 3 |" in md and "Median [q1, q3]" in md
    data = json.loads(second.report.json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert len(data["rows"]) == 6 and {a["bucket"] for a in data["aggregates"]} == {"2-3", "4-5", "all"}
    assert data["methods"] == ["rope-lime", "rope-lime-loo"]
    assert {p.name for p in second.report.plots} >= {"hotpotqa-paper__tiny__auroc.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in second.report.plots)


def test_rows_record_the_fit_rank_and_the_sweep_does_not_warn(tiny: Any, tmp_path: Path) -> None:
    # The paper's c = 0.25M draws fewer samples than features: every fit is underdetermined.
    methods = tuple(parse_method_specs(["rope-lime:k=sqrt,c=0.25M", "rope-lime-loo"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedFitWarning)
        result = run_benchmark(
            _config(methods=methods),
            tmp_path,
            closed=TestModel("Paris."),
            surrogates={"tiny": tiny},
            examples=list(load_hotpotqa(HOTPOT)),
            report=False,
        )
    assert not result.errors and len(result.rows) == 6
    for row in result.rows:
        if row["method"] == "rope-lime-loo":
            assert row["fit_rank"] == row["m"]
        else:
            assert row["m"] > 1 and 1 <= row["fit_rank"] < row["m"]


def test_resume_refuses_rows_of_another_surrogate_load_and_answers_of_other_settings(
    tiny: Any, tmp_path: Path
) -> None:
    examples = list(load_hotpotqa(HOTPOT))[:2]
    closed = TestModel("Paris is the capital.")
    out = tmp_path / "run"
    loo = _config(methods=(parse_method_specs(["rope-lime-loo"])[0],))
    run_benchmark(loo, out, closed=closed, surrogates={"tiny": tiny}, examples=examples, report=False)
    rows = load_rows(out)
    runtime = {"surrogate_model": tiny.name, "device": "cpu", "dtype": "float32"}
    assert all(r["runtime"] == runtime for r in rows)
    assert json.loads((out / "config.json").read_text())["surrogate_runtime"] == {"tiny": runtime}

    # the stored rows came from a bfloat16 load (as "auto" gives on a GPU): adding a method here
    # would put float32 rows beside them in one table, so it is refused before anything runs
    stored = [{**r, "runtime": {**runtime, "dtype": "bfloat16"}} for r in rows]
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))

    def resume() -> Any:
        options: dict[str, Any] = {"closed": closed, "surrogates": {"tiny": tiny}, "examples": examples}
        return run_benchmark(_config(), out, **options, resume=True, report=False)

    with pytest.raises(ConfigError, match="dtype: 'bfloat16' -> 'float32'"):
        resume()
    assert len(load_rows(out)) == 2 and len(closed.calls) == 2
    # rows written before runtimes were recorded carry none: they are not compared
    legacy = [{k: v for k, v in r.items() if k != "runtime"} for r in rows]
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    again = resume()
    assert again.computed == 2 and all(r["runtime"] == runtime for r in again.rows[2:])

    # stored answers alone (the rows were deleted to recompute) still hold their settings
    (out / "rows.jsonl").unlink()
    with pytest.raises(ConfigError, match="other settings \\(max_answer_tokens"):
        run_benchmark(
            _config(max_answer_tokens=32), out, closed=closed, surrogates={"tiny": tiny}, examples=examples
        )
    assert len(closed.calls) == 2


def test_resume_refuses_examples_the_dataset_now_gives_differently(tiny: Any, tmp_path: Path) -> None:
    examples = list(load_hotpotqa(HOTPOT))[:2]
    closed = TestModel("Paris is the capital.")
    out = tmp_path / "run"
    loo = _config(methods=(parse_method_specs(["rope-lime-loo"])[0],))
    options: dict[str, Any] = {"closed": closed, "surrogates": {"tiny": tiny}, "report": False}
    run_benchmark(loo, out, examples=examples, **options)
    rows = load_rows(out)
    want = {e.id: e.fingerprint for e in examples}
    assert {r["id"]: r["example_sha"] for r in rows} == want and len(rows) == 2  # rows land as they finish
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert {a["id"]: a["example_sha"] for a in answers} == want and len(answers) == 2

    # the loader now renders the second example differently (another template): resuming would
    # pair rows of the old prompt with rows of the new one, so it is refused before any call
    changed = examples[1].prompt.model_copy(update={"template": examples[1].prompt.template + "\n"})
    edited = [examples[0], examples[1].model_copy(update={"prompt": changed})]
    with pytest.raises(ConfigError, match=f"1 example\\(s\\) \\('{examples[1].id}'\\)"):
        run_benchmark(_config(), out, examples=edited, resume=True, **options)
    assert len(load_rows(out)) == 2 and len(closed.calls) == 2

    # the stored answers alone still know which prompt they answered
    (out / "rows.jsonl").unlink()
    with pytest.raises(ConfigError, match="prompt or gold labels differ"):
        run_benchmark(loo, out, examples=edited, **options)
    assert len(closed.calls) == 2

    # records written before fingerprints were kept carry none and are not compared
    legacy = [{k: v for k, v in a.items() if k != "example_sha"} for a in answers]
    (out / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in legacy))
    again = run_benchmark(loo, out, examples=edited, **options)
    assert again.computed == 2 and len(closed.calls) == 2


def test_a_raising_on_row_stops_nothing(tiny: Any, tmp_path: Path) -> None:
    def on_row(row: dict[str, Any]) -> None:
        raise ValueError("user bug")

    with pytest.raises(ConfigError, match=r"on_row raised ValueError: user bug \(3 of 3 calls\)") as info:
        run_benchmark(
            _config(methods=(parse_method_specs(["rope-lime-loo"])[0],)),
            tmp_path,
            closed=TestModel("Paris."),
            surrogates={"tiny": tiny},
            examples=list(load_hotpotqa(HOTPOT)),
            on_row=on_row,
        )
    result = info.value.partial["result"]
    assert result.computed == 3 and len(load_rows(tmp_path)) == 3 and result.report is not None


def test_run_with_faithfulness_and_reference_answers(tiny: Any, tmp_path: Path) -> None:
    examples = list(load_jsonl(USER))  # u2 has no reference answer
    faith = FaithfulnessConfig(metrics=("abpc", "topk", "lds"), lds_masks=4, topk=(1,))
    cfg = _config(
        dataset="jsonl",
        answer_source="reference",
        faithfulness=faith,
        methods=(parse_method_specs(["rope-lime-loo"])[0],),
    )
    closed = TestModel("unused")
    result = run_benchmark(cfg, tmp_path / "f", closed=closed, surrogates={"tiny": tiny}, examples=examples)
    assert closed.calls == [] and result.computed == 2
    assert [e["id"] for e in result.errors] == ["u2"] and result.errors[0]["error"] == "InputError"
    assert all({"abpc", "topk_drop@1", "lds"} <= set(r["metrics"]) for r in result.rows)
    assert all(r["closed"] == "reference" for r in result.rows)
    errors = (tmp_path / "f" / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["id"] == "u2"


def test_a_failing_faithfulness_metric_keeps_the_row(tiny: Any, tmp_path: Path) -> None:
    examples = list(load_jsonl(USER))[:1]
    faith = FaithfulnessConfig(metrics=("abpc",), fractions=(0.0, 0.5, 1.0))
    cfg = _config(
        dataset="jsonl",
        answer_source="reference",
        faithfulness=faith,
        methods=(parse_method_specs(["rope-lime-loo"])[0],),
    )
    ok = run_benchmark(cfg, tmp_path / "ok", surrogates={"tiny": tiny}, examples=examples, report=False)
    assert ok.rows[0]["faithfulness_error"] is None and "abpc" in ok.rows[0]["metrics"]
    broken = cfg.model_copy(
        update={"faithfulness": FaithfulnessConfig(metrics=("abpc",), fractions=(0.5, 0.2))}
    )
    bad = run_benchmark(broken, tmp_path / "bad", surrogates={"tiny": tiny}, examples=examples, report=False)
    row = bad.rows[0]
    assert not bad.errors and "increasing" in row["faithfulness_error"] and "abpc" not in row["metrics"]
    assert row["metrics"]["iou"] == ok.rows[0]["metrics"]["iou"]


def test_report_with_reference_points_and_groups(tiny: Any, tmp_path: Path) -> None:
    out = tmp_path / "r"
    run_benchmark(
        _config(methods=(parse_method_specs(["rope-lime-loo"])[0],), n_per_bucket=1),
        out,
        closed=TestModel("Paris."),
        surrogates={"tiny": tiny},
        examples=list(load_hotpotqa(HOTPOT)),
        report=False,
    )
    refs = ReferenceTable(
        [
            ReferencePoint(
                dataset="hotpotqa-paper",
                bucket="4-5",
                method="rope-lime",
                metric="auroc",
                value=0.5,
                citation="Test (2026), Table 2",
            )
        ]
    )
    paths = write_report(out, reference=refs)
    md = paths.markdown.read_text()
    assert "Published reference points" in md and "Test (2026), Table 2" in md
    assert json.loads(paths.json.read_text())["reference"][0]["value"] == 0.5
    # a dataset whose rows share one bucket is grouped by quantiles of M
    rows = [{"dataset": "d", "bucket": "12+", "m": m, "id": str(m)} for m in (13, 20, 30, 60)]
    assert [r["group"] for r in with_groups(rows)] == ["13-19", "20-29", "30-60", "30-60"]
    assert [r["group"] for r in with_groups(rows, n_bins=2)] == ["13-29", "13-29", "30-60", "30-60"]
    # the quantiles are over examples, not distinct values: six examples at M = 13 fill a bin
    many = [
        {"dataset": "d", "bucket": "12+", "m": m, "id": f"e{i}"}
        for i, m in enumerate([13] * 6 + [20, 30, 60])
    ]
    assert [r["group"] for r in with_groups(many)] == ["13-19"] * 6 + ["20-60"] * 3
    mixed = [
        {"dataset": "d", "bucket": "2-3", "m": 2, "id": "a"},
        {"dataset": "d", "bucket": "12+", "m": 14, "id": "b"},
    ]
    assert [r["group"] for r in with_groups(mixed)] == ["2-3", "12+"]


def test_seeds_of_one_example_are_averaged_before_the_statistics() -> None:
    def row(example: str, seed: int, iou: float | None, auroc: float | None) -> dict[str, Any]:
        return {
            "dataset": "d", "surrogate": "s", "method": "m", "bucket": "4-5", "m": 4,
            "id": example, "seed": seed, "metrics": {"iou": iou, "auroc": auroc},
            "seconds": 2.0 + seed, "sequences": 10,
        }  # fmt: skip

    rows = [row("a", 0, 0.2, 0.5), row("a", 1, 0.4, None), row("b", 0, 1.0, None), row("b", 1, 0.8, None)]
    (agg,) = [a for a in aggregate_rows(rows) if a["bucket"] == "all"]
    assert agg["n"] == 2  # examples, not (example, seed) rows
    iou = agg["metrics"]["iou"]
    assert iou.n == 2 and iou.mean == pytest.approx(0.6) and iou.std == pytest.approx(math.sqrt(0.18))
    auroc = agg["metrics"]["auroc"]
    assert auroc.n == 1 and auroc.n_missing == 1 and auroc.mean == 0.5
    assert agg["seconds"].mean == pytest.approx(2.5)
    md = markdown_report(rows)
    assert "| all | m | 2 | 0.600 ± 0.424 | 0.500 (n=1) | 2.50 | 10.0 |" in md
    # a single-feature example (a user's JSONL) is bucket "1": listed first, not after "12+"
    single = {**row("c", 0, 1.0, None), "bucket": "1", "m": 1}
    many = {**row("d", 0, 0.0, None), "bucket": "12+", "m": 14}
    lines = [ln.split(" | ")[0] for ln in markdown_report([*rows, single, many]).splitlines()]
    firsts = [ln for ln in lines if ln in ("| 1", "| 4-5", "| 12+", "| all")]
    assert firsts[:4] == ["| 1", "| 4-5", "| 12+", "| all"]


def test_reports_compare_methods_on_the_examples_all_of_them_finished(tmp_path: Path) -> None:
    def row(example: str, method: str, iou: float) -> dict[str, Any]:
        return {
            "dataset": "d", "surrogate": "s", "method": method, "bucket": "4-5", "m": 4,
            "id": example, "seed": 0, "metrics": {"iou": iou}, "seconds": 1.0, "sequences": 10,
        }  # fmt: skip

    # "b" is still running on the last example (as in a run interrupted or still going)
    rows = [row("e1", "a", 0.2), row("e1", "b", 0.4), row("e2", "a", 0.6), row("e2", "b", 0.8)]
    rows += [row("e3", "a", 1.0), row("other", "c", 0.0)]  # another surrogate's rows pair on their own
    rows[-1]["surrogate"] = "t"
    kept, left_out = paired_rows(rows)
    assert left_out == 1 and [r["id"] for r in kept] == ["e1", "e1", "e2", "e2", "other"]
    # seeds pair too: "a" finished seed 1 on e1 only, so e2 would compare a's two seeds with b's one
    seeded = [*rows, {**row("e1", "a", 0.3), "seed": 1}, {**row("e1", "b", 0.5), "seed": 1}]
    kept, left_out = paired_rows([*seeded, {**row("e2", "a", 0.7), "seed": 1}])
    assert left_out == 2 and sorted({r["id"] for r in kept}) == ["e1", "other"]

    out = tmp_path / "run"
    out.mkdir()
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(out, plots=False)
    md = (out / "results.md").read_text()
    assert "| all | a | 2 | 0.400 ± 0.283 |" in md and "| all | b | 2 | 0.600 ± 0.283 |" in md
    assert "Paired: 1 example that not every method has finished" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["left_out_examples"] == 1 and len(saved["rows"]) == 6  # every row stays on record

    result = CliRunner().invoke(app, ["report", str(out), "--unpaired", "--no-plots"])
    assert result.exit_code == 0, result.output
    md = (out / "results.md").read_text()
    assert "| all | a | 3 | 0.600 ± 0.400 |" in md and "Paired:" not in md


def test_reference_loader(tmp_path: Path) -> None:
    assert len(load_reference()) == 0  # the paper's values are pending: nothing is invented
    path = tmp_path / "ref.json"
    point = {
        "dataset": "mmlu-words",
        "bucket": "all",
        "method": "rope-lime",
        "metric": "iou",
        "value": 0.4,
        "citation": "X (2026)",
    }
    path.write_text(json.dumps({"points": [point]}))
    table = load_reference(path)
    assert len(table) == 1 and table.select(metric="iou")[0].value == 0.4 and not table.select(metric="f1")
    path.write_text(json.dumps([{**point, "value": "high"}]))
    with pytest.raises(InputError, match="reference point 0"):
        load_reference(path)
    with pytest.raises(InputError, match="cannot read"):
        load_reference(tmp_path / "missing.json")


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_run_and_report(tmp_path: Path) -> None:
    lm = tiny_local_model(seed=3)
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "cli"
    runner = CliRunner()
    args = [
        "run",
        "--dataset",
        "jsonl",
        "--data",
        str(USER),
        "--split",
        "all",
        "--answers",
        "reference",
        "--surrogate",
        str(model_dir),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        "--methods",
        "rope-lime-loo",
        "rope-lime:k=sqrt,c=M",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 rows computed, 0 already done, 1 failed" in result.output  # u2: no reference answer
    methods = {r["method"] for r in load_rows(out)}
    assert methods == {"rope-lime-loo", "rope-lime:k=sqrt,c=M"}
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0 and "0 rows computed, 4 already done" in again.output
    exists = runner.invoke(app, args)
    assert exists.exit_code == 2 and "already holds results" in exists.output
    steps = [*args[: args.index("--out")], "--out", str(tmp_path / "steps"), "--no-progress"]
    steps += ["--methods", "rope-lime-loo", "--faithfulness", "abpc", "--deletion-steps", "2"]
    stepped = runner.invoke(app, steps)
    assert stepped.exit_code == 0, stepped.output
    saved = json.loads((tmp_path / "steps" / "config.json").read_text())
    assert saved["faithfulness"]["fractions"] == [0.0, 0.5, 1.0]
    assert all("abpc" in r["metrics"] for r in load_rows(tmp_path / "steps"))
    rep = runner.invoke(app, ["report", str(out), "--no-plots"])
    assert rep.exit_code == 0 and "0 plots" in rep.output
    # a run where every row failed exits 1, for scripts and CI
    no_answers = tmp_path / "no_answers.jsonl"
    no_answers.write_text(
        "".join(line + "\n" for line in USER.read_text().splitlines() if '"u2"' in line), encoding="utf-8"
    )
    none = [*args[: args.index("--data")], "--data", str(no_answers), *args[args.index("--split") :]]
    none[none.index("--out") + 1] = str(tmp_path / "none")
    failed = runner.invoke(app, none)
    assert failed.exit_code == 1, failed.output
    assert "every row failed; first: InputError" in failed.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = runner.invoke(
        app,
        [
            "run",
            "--dataset",
            "jsonl",
            "--data",
            str(USER),
            "--out",
            str(tmp_path / "b"),
            "--methods",
            "rope-lime:k",
        ],
    )
    assert bad.exit_code == 2 and "key=value" in bad.output
    # options that only apply with another one are refused, not silently ignored
    for extra, needs in (
        (["--deletion-steps", "2"], "--faithfulness"),
        (["--ray-actors", "2"], "--ray-address"),
    ):
        at = args.index("--out")
        lone = runner.invoke(app, [*args[:at], "--out", str(tmp_path / "lone"), *extra, *args[at + 2 :]])
        assert lone.exit_code == 2 and needs in lone.output and not (tmp_path / "lone").exists()


def test_a_ready_scorer_keeps_its_placement_under_device_options(tiny: Any, tmp_path: Path) -> None:
    # A ready scorer (as the CLI builds for --ray-address) was placed when it was built: the run's
    # device/dtype reach only models loaded by name, and do not make the explainer refuse it.
    examples = list(load_hotpotqa(HOTPOT))[:1]
    cfg = _config(methods=(parse_method_specs(["rope-lime-loo"])[0],), device="cpu", dtype="float32")
    result = run_benchmark(
        cfg,
        tmp_path / "r",
        closed=TestModel("Paris."),
        surrogates={"tiny": tiny},
        examples=examples,
        report=False,
    )
    assert result.computed == 1 and not result.errors
    assert placement_applies("local:smollm2", tiny) and placement_applies(TestModel("x"), "smollm2")
    assert not placement_applies(TestModel("x"), tiny) and not placement_applies("openai:gpt-4o", tiny)

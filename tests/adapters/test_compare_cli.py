"""`attribsdk compare` end to end: a real CLI run against the loopback server, with a surrogate
loaded from a model directory. The report's counts must match the server's request log."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribsdk.cli import app
from attribsdk.compare import CompareReport
from tests.tiny_models import tiny_llama, tiny_tokenizer

from .fakeserver import FakeLLMServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-surrogate")
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=5).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_compare_cli_counts_match_the_server_log(
    server: FakeLLMServer, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "compare", "--out", str(out), "--dataset", "jsonl", "--data", str(FIXTURES / "user_examples.jsonl"),
        "--n", "2", "-m", "rope-lime", "-m", "gsmile",
        "--closed", f"openai-compatible:my-model@{server.openai_base_url}",
        "--surrogate", str(tiny_dir), "--price-as", "openai:gpt-4o-mini", "--split", "all",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = CompareReport.model_validate_json((out / "compare.json").read_text())
    assert (out / "compare.png").stat().st_size > 1000
    assert "<td>gsmile</td>" in (out / "compare.html").read_text(encoding="utf-8")
    assert "gpt-4o-mini" in report.pricing_note  # the as-if price is labelled
    upstream = server.calls("/v1/chat/completions")
    assert upstream > 2  # gSMILE regenerated answers for its perturbations
    # every request the server saw is accounted for in the report, and nothing more
    by_method = {m.method: m for m in report.methods}
    assert sum(m.closed_calls for m in report.methods) == upstream
    assert sum(m.http_attempts for m in report.methods) == upstream
    assert by_method["rope-lime"].closed_calls == 2  # one call per example
    assert by_method["gsmile"].closed_calls > by_method["rope-lime"].closed_calls
    assert by_method["gsmile"].cost_usd is not None and by_method["gsmile"].cost_usd > 0
    assert "rope-lime" in result.output and "gsmile" in result.output


def test_a_misspelt_method_fails_before_any_call(
    server: FakeLLMServer, tiny_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "compare", "--out", str(out), "--dataset", "jsonl", "--data", str(FIXTURES / "user_examples.jsonl"),
        "--n", "1", "-m", "rope-lime", "-m", "gsmlie",
        "--closed", f"openai-compatible:my-model@{server.openai_base_url}",
        "--surrogate", str(tiny_dir), "--split", "all",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "unknown method 'gsmlie'" in result.output and "Traceback" not in result.output
    assert server.calls() == 0 and not out.exists()
    lone = CliRunner().invoke(app, ["compare", "--out", str(out), "--ray-actors", "2"])
    assert lone.exit_code == 2 and "--ray-address" in lone.output and not out.exists()


def test_a_method_that_explains_nothing_fails_the_run(
    server: FakeLLMServer, tiny_dir: Path, tmp_path: Path
) -> None:
    server.api_key = "sk-needed"  # the compare run sends none: every closed call is refused
    out = tmp_path / "out"
    args = [
        "compare", "--out", str(out), "--dataset", "jsonl", "--data", str(FIXTURES / "user_examples.jsonl"),
        "--n", "2", "-m", "rope-lime",
        "--closed", f"openai-compatible:my-model@{server.openai_base_url}",
        "--surrogate", str(tiny_dir), "--split", "all",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "rope-lime explained none of the 2 examples (AuthenticationError" in result.output
    report = CompareReport.model_validate_json((out / "compare.json").read_text())  # still written
    assert report.methods[0].n_failed == 2 and "Traceback" not in result.output

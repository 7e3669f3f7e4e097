"""CLI: errors print one clear line (no traceback) and exit non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attribsdk.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["explain", "Q?", "-c", "Some text.", "--features", "letters"],
            "FeatureError: unknown feature granularity",
        ),
        (
            ["explain", "Q?", "-c", "Some text.", "--closed", "nope:model"],
            "ConfigError: unknown model provider 'nope'",
        ),
        (["explain", "Q?", "-c", "Some text.", "--method", "magic"], "ConfigError: unknown method 'magic'"),
        (["explain", "Q?", "-f", "/nonexistent/file.txt"], "cannot read /nonexistent/file.txt"),
        (["explain", "   "], "InputError: the question/prompt must be a non-empty string"),
    ],
)
def test_errors_are_one_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and expected in err
    assert "\n" not in err and "Traceback" not in result.output


def test_option_and_file_errors(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    result = runner.invoke(app, ["explain", "Q?", "-f", str(latin1)])
    assert result.exit_code == 2 and f"cannot read {latin1}: not UTF-8 text" in result.stderr
    result = runner.invoke(app, ["explain", "Q?", "-c", "Some text.", "--top", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--top'" in result.stderr  # refused by the option, no model loaded
    result = runner.invoke(app, ["explain", "Q?", "-c", "Some text.", "--top", "2", "--json"])
    assert result.exit_code == 2 and "--json prints the whole Explanation" in result.stderr


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("explain", "demo", "cache", "bench", "compare"):
        assert cmd in result.output


def test_explain_help_names_every_method() -> None:
    from attribsdk.methods import METHODS

    result = runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert all(name in text for name in METHODS), [n for n in METHODS if n not in text]


@pytest.mark.parametrize("command", [["compare"], ["bench", "run"]])
def test_help_keeps_square_brackets(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "'attribsdk[ray]'" in result.output  # not eaten as rich markup

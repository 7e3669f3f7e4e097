"""CLI: errors print one clear line (no traceback) and exit non-zero."""

from __future__ import annotations

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


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("explain", "demo"):
        assert cmd in result.output

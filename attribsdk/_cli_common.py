"""What every ``attribsdk`` sub-command shares: errors print one line, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import typer

from .errors import AttribError

__all__ = ["fail", "guard"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], Any], *, debug: bool = False, interrupted: str | None = None) -> None:
    """Run ``fn``; an :class:`AttribError` or unexpected error becomes one line (``debug``:
    re-raise for a traceback). ``interrupted`` is the message for Ctrl-C (exit 130)."""
    try:
        fn()
    except typer.Exit:
        raise
    except AttribError as exc:
        if debug:
            raise
        fail(f"{type(exc).__name__}: {exc.message}")
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        fail(interrupted, code=130)
    except Exception as exc:
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)", code=1)

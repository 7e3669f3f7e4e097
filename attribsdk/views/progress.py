"""Progress bars for long runs (many examples, large budgets)."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled(progress: bool | None) -> bool:
    """Resolve a ``progress`` option: ``None`` (auto) means on when stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    total: int | None, enabled: bool | None, *, description: str, stderr: bool = False
) -> Callable[..., None]:
    """A rich progress bar advanced by ``bar(n)``; ``bar(0, close=True)`` stops it.

    ``enabled`` is resolved by :func:`progress_enabled` (``None``: auto). ``total=None`` shows a
    bar of unknown length (count and elapsed time only). Disabled (or ``total == 0``): a no-op
    with the same signature.
    """
    if not progress_enabled(enabled) or total == 0:
        return lambda n, close=False: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True) if stderr else None,
    )
    task = prog.add_task(description, total=total)
    prog.start()

    def advance(n: int, close: bool = False) -> None:
        if n:
            prog.advance(task, n)
        if close:
            prog.stop()

    return advance

"""Progress bars for long runs (many examples, large budgets)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["progress_bar"]


def progress_bar(total: int, enabled: bool, *, description: str, stderr: bool = False) -> Callable[..., None]:
    """A rich progress bar advanced by ``bar(n)``; ``bar(0, close=True)`` stops it.

    Disabled (or ``total == 0``): a no-op with the same signature.
    """
    if not enabled or total == 0:
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

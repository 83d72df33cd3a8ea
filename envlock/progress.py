"""Progress on long work (capture's probe and hashes, `verify --deep`, build), on stderr, for a person only.

`bar(label, total)` yields a function to call with each step done. It draws a rich progress bar when stderr is a
terminal that wants one (not NO_COLOR, not TERM=dumb) and the caller did not ask for quiet; otherwise it draws
nothing and rich is never imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def wanted(*, quiet: bool = False) -> bool:
    """Whether progress should be drawn: stderr is a terminal, and nobody asked for quiet or plain output."""
    isatty = getattr(sys.stderr, "isatty", None)
    return (not quiet and bool(isatty and isatty()) and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb")


@contextmanager
def bar(label: str, total: float, *, enabled: bool, unit: str = "") -> Iterator[Callable[[float], None]]:
    """A progress bar of `total` steps (bytes when `unit` is "B") while the block runs; the bar goes away after."""
    if not enabled or total <= 0:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(),
               DownloadColumn() if unit == "B" else TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.advance(task, done)

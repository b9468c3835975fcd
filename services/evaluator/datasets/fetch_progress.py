"""A rich progress bar for downloads (the download module's Progress protocol)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class RichDownloadProgress:
    """One bar per file; a resumed file starts at the bytes it already had."""

    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self._bars.start()
        self._task: TaskID | None = None

    def start(self, name: str, total: int | None, done: int) -> None:
        self._task = self._bars.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bars.advance(self._task, n)

    def finish(self) -> None:
        if self._task is not None:
            self._bars.stop_task(self._task)
            self._task = None

    def close(self) -> None:
        self._bars.stop()

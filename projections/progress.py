"""A rich progress bar with events/s and ETA, shown only on a terminal."""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from projections.fold import Counters
    from projections.sources import Source, SourceBatch


class BatchProgress:
    """Progress of a run over a source: bytes of a file, or events of a table."""

    def __init__(self, console: Console, source: Source, *, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.source = source
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._label = label
        self._console = console

    def __enter__(self) -> BatchProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} events/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            total = _total_bytes(self.source)
            self._task = self._progress.add_task(self._label, total=total, rate="-")
        return self

    def update(self, batch: SourceBatch, counters: Counters) -> None:
        """Move the bar to the batch's end."""
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{counters.read / elapsed:,.0f}" if elapsed > 0 else "-"
        done = batch.state.get("offset", batch.position)
        self._progress.update(self._task, completed=done, rate=rate)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _total_bytes(source: Source) -> int | None:
    path = getattr(source, "path", None)
    if path is None or getattr(source, "gzipped", False):
        return source.head()
    return os.path.getsize(path)


class ImportProgress:
    """Progress of an import over a file's bytes."""

    def __init__(self, console: Console, path: os.PathLike[str], *, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._console = console
        self._path = path
        self.enabled = enabled

    def __enter__(self) -> ImportProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]import"),
                BarColumn(),
                TextColumn("{task.fields[lines]} lines"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            gzipped = str(self._path).endswith(".gz")
            total = None if gzipped else os.path.getsize(self._path)
            self._task = self._progress.add_task("import", total=total, lines=0)
        return self

    def update(self, offset: int, lines: int) -> None:
        """Move the bar to a byte offset."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=offset, lines=f"{lines:,}")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

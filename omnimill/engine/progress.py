"""A progress bar for labelling: samples done/total, samples/s, ETA, errors, and the dashboard link."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, dashboard: str | None = None, enabled: bool = True, verb: str = "labelling"):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.dashboard = dashboard
        self.errors = 0
        self.bar = RichProgress(
            TextColumn(verb), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("[red]{task.fields[errors]} errors"),
            console=self.console, disable=not enabled, transient=False,
            auto_refresh=sys.stderr.isatty(),
        )
        self.task = self.bar.add_task("label", total=total, rate="", errors=0)

    def __enter__(self):
        if self.enabled and self.dashboard:
            self.console.print(f"Dask dashboard: {self.dashboard}")
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.refresh()
        self.bar.__exit__(*exc)

    def advance(self, samples: int, errors: int = 0) -> None:
        self.errors += errors
        self.bar.update(self.task, advance=samples, errors=self.errors)
        speed = self.bar.tasks[0].speed
        self.bar.update(self.task, rate=f"{speed:7.1f} samples/s" if speed else "")

    def extend(self, samples: int) -> None:
        """More work than planned (units labelled again): grow the bar's total."""
        self.bar.update(self.task, total=self.bar.tasks[0].total + samples)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]{message}")

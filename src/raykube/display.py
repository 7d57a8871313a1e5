"""The local run's live display: a rich progress bar and one table row per epoch.

It is a ``RunObserver`` (``raykube.events``), fed by the driver exactly like the
Kubernetes status reporter is on a cluster.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from raykube.spec import TrainingRun


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else ("-" if v is None else str(v))


class RichDisplay:
    """Live per-epoch progress on a terminal (a RunObserver)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = 0.0
        self.epochs = 0
        self.last_epoch: int | None = None

    def on_start(self, run: TrainingRun) -> None:
        s = run.spec
        self.epochs = s.train.epochs
        self.started = time.monotonic()
        self.console.print(
            f"[bold]{run.name}[/]: {s.model.name} on {s.data.dataset}, {s.scaling.workers} "
            f"worker(s) x {s.scaling.cpus_per_worker:g} CPU"
            + (f" + {s.scaling.gpus_per_worker:g} GPU" if s.scaling.gpus_per_worker else "")
            + f", {s.train.epochs} epochs, batch {s.train.batch_size}, "
            f"{s.train.optimizer.name} lr={s.train.optimizer.lr:g}")
        # Redrawn once a second (rich's default is 10): it shows whole seconds and epochs,
        # and each redraw is Python on the driver, beside the workers, for the whole run.
        self.progress = Progress(TextColumn("[progress.description]{task.description}"),
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True, refresh_per_second=1)
        self.progress.start()
        self.task = self.progress.add_task("starting Ray Train workers", total=self.epochs)

    def on_epoch(self, metrics: dict[str, Any], checkpoint: str | None, trial: str | None) -> None:
        epoch = metrics.get("epoch")
        prefix = escape(f"[{trial}] ") if trial else ""  # not a markup tag
        if not trial and isinstance(epoch, int):
            if self.last_epoch is None and epoch > 1:
                self.console.print(f"continuing from the checkpoint of epoch {epoch - 1} "
                                   "(earlier epochs are not trained again)", style="dim")
            self.last_epoch = epoch
        self.console.print(
            f"{prefix}epoch {epoch:>3}/{metrics.get('epochs', self.epochs)}  "
            f"loss {_fmt(metrics.get('trainLoss'))} acc {_fmt(metrics.get('trainAccuracy'))} "
            f"| val {_fmt(metrics.get('valLoss'))} acc [bold]{_fmt(metrics.get('valAccuracy'))}[/] "
            f"| {_fmt(metrics.get('samplesPerSecond'), 0)} samples/s, "
            f"{_fmt(metrics.get('epochTime'), 2)} s/epoch",
            highlight=False)
        if self.progress is not None and not trial and isinstance(epoch, int):
            self.progress.update(self.task, completed=epoch, description="training")

    def on_note(self, message: str) -> None:
        """Something about this run the user should know (optional hook, see
        ``raykube.events.notify``): a skipped checkpoint, a changed optimizer."""
        self.console.print(f"[yellow]{escape(message)}[/]", highlight=False)

    def on_failure(self, message: str) -> None:
        """The worker group failed (optional hook, see ``raykube.train.fit``)."""
        self.console.print(f"[yellow]{escape(message)}[/]", highlight=False)

    def on_end(self, result: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(summary_table(result))
        # Paths are meant to be copied: whole lines, never wrapped or cut.
        for label, path in artefact_paths(result):
            self.console.print(f"{label:<16}{path}", soft_wrap=True, highlight=False,
                               markup=False)


def stable_best(result: dict[str, Any]) -> str | None:
    """``<run_dir>/best`` when the run has a best checkpoint: the copy every run
    refreshes, where the concrete ``checkpoint_epoch_NNNN`` may be deleted by a later
    run keeping only ``checkpoint.keep`` of them."""
    run_dir = result.get("run_dir")
    if not result.get("best_checkpoint"):
        return None
    return f"{run_dir}/best" if run_dir else str(result["best_checkpoint"])


def artefact_paths(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, path) of what a finished run left on storage."""
    run_dir = result.get("run_dir", "")
    rows = [("best checkpoint", stable_best(result) or "-")]
    return rows + [("report", f"{run_dir}/report.png"), ("result", f"{run_dir}/result.json")]


def summary_table(result: dict[str, Any]) -> Table:
    """Final metrics (paths are printed below it, unwrapped)."""
    t = Table(title=f"{result.get('name', '')} finished" + (
        " (already done: nothing retrained)" if result.get("reused") else ""), show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    m = result.get("metrics") or {}
    best = result.get("best_metrics") or {}
    t.add_row("epochs", str(result.get("epochs")))
    for key in ("trainLoss", "trainAccuracy", "valLoss", "valAccuracy"):
        t.add_row(f"final {key}", _fmt(m.get(key)))
    t.add_row("best valAccuracy", f"{_fmt(best.get('valAccuracy'))} (epoch {best.get('epoch', '-')})")
    t.add_row("wall time", f"{_fmt(result.get('wall_time_s'), 1)} s")
    return t

"""``report.png``: loss and accuracy curves of a run, drawn headless (matplotlib Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def render_report(history: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """PNG bytes with two panels: train/val loss and train/val accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "Loss", "loss"), (ax_acc, "Accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}{key}") for h in history]
            ax.plot(epochs, values, style, label=f"{split} {label}", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 1.02)
    if history:
        best = max(history, key=lambda h: h.get("valAccuracy", 0.0))
        ax_acc.set_title(f"best val accuracy {best['valAccuracy']:.4f} (epoch {best['epoch']})")
    ax_loss.set_title("loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

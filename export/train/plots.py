"""What a run shows a person: the loss/accuracy curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import printable
from ..core.fileio import atomic_path


def plot_curves(history: list[dict[str, Any]], path: Path, train_label: str = "train") -> None:
    """Loss and accuracy per epoch, training and validation, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label=train_label)
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (log scale)", title="Loss",
                yscale="log")  # the first epoch's validation loss can dwarf the rest
    ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label=train_label)
    ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def format_confusion(matrix: list[list[int]], class_names: list[str]) -> str:
    """The confusion matrix as text (rows: true class, columns: predicted).

    Class names come from folder names or labels anyone chose: non-printable characters are
    escaped (``\\x1b``, ``\\n``), so a name can neither drive the terminal nor break a row.
    """
    class_names = [printable(n) for n in class_names]
    width = max(5, *(len(n) for n in class_names), *(len(str(v)) for r in matrix for v in r)) + 1
    corner = "true \\ predicted"
    label = max(len(corner), *(len(n) for n in class_names)) + 1
    lines = [corner.ljust(label) + "".join(n.rjust(width) for n in class_names)]
    lines += [name.ljust(label) + "".join(str(v).rjust(width) for v in row)
              for name, row in zip(class_names, matrix)]
    return "\n".join(lines)

"""Watching a run: diverging or learning nothing stops or warns in one line, and a run still
improving at its last epoch says to train longer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .config import TrainConfig
from .setup import Progress


def train_longer(progress: Progress, config: TrainConfig, run_dir: Path) -> str | None:
    """The hint for a run whose best validation accuracy came in its last epoch: still rising."""
    last = progress.epoch
    if last < 2 or progress.best_epoch != last or last < (config.epochs or 0) \
            or progress.best[0] >= 1.0:
        return None
    return (f"the best validation accuracy ({progress.best[0]:.1%}) came in the last epoch "
            f"({last}): the model was still improving; train longer, e.g. resnet-train "
            f"--resume {run_dir} --epochs {2 * last}")


class Monitor:
    """Watches a run for the two ways it can fail quietly: diverging, or learning nothing.

    A diverging run (training loss not finite, or far above the loss of a guess, or validation
    loss not finite) stops with one line. A run whose validation accuracy stays near chance gets
    one warning line during training and one in the summary, instead of a checkpoint that looks
    like any other; not a run cut short by ``--max-steps`` (a smoke test is not meant to learn).
    """

    def __init__(self, num_classes: int, val_labels: np.ndarray, config: TrainConfig):
        self.guess_loss = math.log(max(num_classes, 2))  # cross-entropy of a uniform guess
        counts = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=num_classes)
        self.chance = float(counts.max() / max(counts.sum(), 1))  # always the commonest class
        # judged once the schedule has had a third of its epochs (at least 3): a run of 30
        # epochs on a few hundred images is often still near chance at epoch 3, then learns
        self.check_from = min(config.epochs, max(3, math.ceil(config.epochs / 3)))
        self.judge = config.max_steps is None
        self.fine_tuning = bool(config.init_weights)
        self.warnings: list[str] = []

    def near_chance(self, top1: float, chance: float | None = None) -> bool:
        """Below the lower of twice chance and a quarter of the way from chance to perfect."""
        chance = self.chance if chance is None else chance
        return self.judge and top1 < min(2 * chance, chance + (1 - chance) / 4)

    def check_training(self, loss: float, epoch: int, config: TrainConfig) -> None:
        limit = max(3 * self.guess_loss, self.guess_loss + 3)
        if not math.isfinite(loss) or loss > limit:
            what = "is not finite" if not math.isfinite(loss) else (
                f"is {loss:.3g}, far above the {self.guess_loss:.2f} of a uniform guess")
            raise UserError(f"training diverged in epoch {epoch}: the training loss {what}; "
                            f"lower --lr (now {config.lr:g}) or raise --warmup-epochs")

    def check_validation(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise UserError(f"training diverged in epoch {epoch}: the validation loss is not "
                            "finite; lower --lr or raise --warmup-epochs")

    def after_epoch(self, best_top1: float, epoch: int) -> str | None:
        if epoch < self.check_from or self.warnings or not self.near_chance(best_top1):
            return None
        self.warnings.append(
            f"validation accuracy is still near chance after {epoch} epoch"
            f"{'s' if epoch != 1 else ''} (best {best_top1:.1%}; always answering the commonest "
            f"class gives {self.chance:.1%}): the model is not learning. Check the labels, "
            "lower --lr, train longer with --epochs"
            + ("" if self.fine_tuning else ", or start from --init-weights"))
        return self.warnings[-1]

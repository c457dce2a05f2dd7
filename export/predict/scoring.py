"""Scoring a labelled folder: where every image sits in a sub-folder named after one of the
model's classes (the layout ``resnet-train --data`` reads), ``resnet-predict`` also reports
accuracy, per-class accuracy, the confusion matrix and the files it got wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .predictor import FileResult


@dataclass
class Score:
    class_names: list[str]
    images: int
    correct: int
    per_class: dict[str, dict[str, Any]]  # class -> {"images", "correct", "top1"}
    confusion: list[list[int]]  # rows: the folder's class, columns: the predicted one
    wrong: list[dict[str, Any]] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return self.correct / self.images

    def to_dict(self) -> dict[str, Any]:
        return {"labels": "the folder each image sits in", "images": self.images,
                "correct": self.correct, "top1": self.top1, "per_class": self.per_class,
                "class_names": self.class_names, "confusion_matrix": self.confusion,
                "wrong": self.wrong}


def folder_labels(results: Sequence[FileResult], class_names: Sequence[str]
                  ) -> list[int] | None:
    """Each image's class from its parent folder's name, or None unless every image has one."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(r.path.parent.name) for r in results]
    if not labels or any(label is None for label in labels):
        return None
    return [int(label) for label in labels if label is not None]


def per_class_of(confusion: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Images, correct and top-1 of every class a confusion matrix (rows: true class) holds."""
    per_class = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        if total:
            per_class[name] = {"images": total, "correct": int(confusion[i, i]),
                               "top1": float(confusion[i, i] / total)}
    return per_class


def score(results: Sequence[FileResult], class_names: Sequence[str]) -> Score | None:
    """The score of classified images against their folders (None: not a labelled folder)."""
    labels = folder_labels(results, class_names)
    if labels is None:
        return None
    names = list(class_names)
    predicted = [r.top[0].index for r in results if r.top]
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(predicted)), 1)
    per_class = per_class_of(confusion, names)
    wrong = [{"path": str(r.path), "label": names[y], "predicted": r.top[0].label,
              "probability": r.top[0].probability}
             for r, y, p in zip(results, labels, predicted) if y != p and r.top]
    return Score(names, len(labels), int(np.trace(confusion)), per_class,
                 confusion.tolist(), wrong)


def format_score(s: Score, max_wrong: int = 20) -> str:
    """Accuracy, per class, the confusion matrix (up to 20 classes) and the wrong files."""
    lines = [f"accuracy against the folder names: {s.top1:.2%} ({s.correct}/{s.images})",
             "per class: " + ", ".join(f"{n} {v['top1']:.1%} ({v['correct']}/{v['images']})"
                                       for n, v in s.per_class.items())]
    shown = [i for i, n in enumerate(s.class_names) if n in s.per_class or
             any(row[i] for row in s.confusion)]
    if len(shown) <= 20:
        width = max(6, *(len(s.class_names[i]) for i in shown))
        lines.append("confusion (rows: folder, columns: predicted):")
        lines.append(" " * width + "".join(f" {s.class_names[i]:>{width}}" for i in shown))
        for i in shown:
            lines.append(f"{s.class_names[i]:>{width}}"
                         + "".join(f" {s.confusion[i][j]:>{width}}" for j in shown))
    if s.wrong:
        lines.append(f"wrong ({len(s.wrong)}):")
        lines += [f"  {w['path']}: {w['label']} predicted as {w['predicted']} "
                  f"({w['probability']:.1%})" for w in s.wrong[:max_wrong]]
        if len(s.wrong) > max_wrong:
            lines.append(f"  ... {len(s.wrong) - max_wrong} more in --json")
    return "\n".join(lines)

"""The end of a job: the labelled-folder score ``resnet-predict`` prints, from the committed
output, one shard at a time (memory stays at one shard however large the job)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..predict.predictor import FileResult, Prediction
from ..predict.scoring import Score, per_class_of, score
from .shards import PREDICTIONS, markers

#: wrong files kept for the report (the full list is a query on the predictions)
MAX_WRONG = 1000


def _results(path: Path, class_names: Sequence[str]) -> list[FileResult]:
    """A part's rows as the FileResults resnet-predict's scoring reads."""
    index = {name: i for i, name in enumerate(class_names)}
    table = pq.read_table(path, columns=["key", "class", "probability"]).to_pydict()
    return [FileResult(Path(k), [Prediction(index[c], c, p, float("nan"))])
            for k, c, p in zip(table["key"], table["class"], table["probability"])]


def merge(scores: Sequence[Score]) -> Score:
    """One score of several parts: confusion matrices summed, per class from the sum."""
    names = scores[0].class_names
    confusion = np.sum([np.asarray(s.confusion) for s in scores], axis=0)
    per_class = per_class_of(confusion, names)
    wrong = [w for s in scores for w in s.wrong][:MAX_WRONG]
    return Score(list(names), int(confusion.sum()), int(np.trace(confusion)), per_class,
                 confusion.tolist(), wrong)


def job_score(out: Path, class_names: Sequence[str]) -> Score | None:
    """The score of every committed prediction against its folder (None: not a labelled
    source, i.e. some image does not sit in a folder named after a class)."""
    scores = []
    for name, marker in markers(out):
        if not marker["predicted"]:
            continue
        part = score(_results(out / PREDICTIONS / f"{name}.parquet", class_names), class_names)
        if part is None:
            return None
        scores.append(part)
    return merge(scores) if scores else None

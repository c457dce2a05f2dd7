"""The run folder: where a run goes, whether a folder already holds one, what --resume reads."""

from __future__ import annotations

import os
from pathlib import Path


from ..core.errors import UserError
from .config import RUN_FILES, TrainConfig


def resolve_run_dir(out: str | os.PathLike | None, config: TrainConfig,
                    overwrite: bool = False, data_name: str | None = None) -> Path:
    """``--out`` as given (refusing to mix runs), or ``artifacts/train/<model>-<data>[-N]``;
    ``<data>`` is ``data_name`` (e.g. "MNIST") if given, else "digits" or the data's stem."""
    if out is not None:
        path = Path(out)
        if _holds_run(path) and not overwrite:
            raise UserError(f"{path} already holds a training run: continue it with --resume "
                            f"{path}, start again with --overwrite, or pick another --out")
        return path
    data = data_name or ("digits" if config.data is None else Path(config.data).stem)
    base = Path("artifacts") / "train" / f"{config.model}-{data}"
    path, n = base, 1
    while _holds_run(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def resume_checkpoint_path(resume: str | os.PathLike) -> Path:
    """``--resume`` takes a run folder or its ``last.pt``."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise UserError(f"nothing to resume: {path} not found")
    return path

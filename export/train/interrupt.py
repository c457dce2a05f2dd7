"""Stopping a run cleanly: the first Ctrl-C (or SIGTERM, SIGHUP) lets the step in flight end,
so that last.pt can hold a state to resume from; a second one stops at once."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.cli import STOP_SIGNALS


class StopRequest:
    """Whether a stop signal came; the training loop asks before each step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_after_step(enabled: bool = True) -> Iterator[StopRequest]:
    """Catch Ctrl-C and the stop signals for the duration: the first is recorded, a second raises
    KeyboardInterrupt. Not enabled (several processes, which must stop at the same step) or off
    the main thread (only it can handle signals), the signals behave as before."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir``, quoted for a POSIX shell."""
    return f"resnet-train --resume {shlex.quote(str(run_dir))}"

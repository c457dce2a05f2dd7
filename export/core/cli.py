"""What every command line shares: errors as one ``Error:`` line (exit 2 for a bad option, 1
for a failure), SIGTERM/SIGHUP handled as Ctrl-C, bounded number and thread-count option types,
the --depth/--model options and the family table, and a group with a default command."""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from .counting import family_table
from .errors import (
    BackendUnavailable,
    BadOption,
    UnknownModelError,
    UserError,
    printable,
)
from .hardware import thread_problem
from .models import get_architecture, model_names


class OneLineUsageError(click.UsageError):
    """A usage error shown as one ``Error: ...`` line (exit status 2), without the usage dump."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {printable(self.format_message())}", err=True)


class OneLineCommand(click.Command):
    """A command whose bad option values are one ``Error: ...`` line, exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc.format_message(), ctx) from None


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one ``Error: ...`` line on stderr: a bad option or
    model name exits 2, a :class:`UserError` or a missing runtime exits 1, and Ctrl-C, SIGTERM
    or SIGHUP (:func:`signals_as_interrupt`) print "interrupted" and exit 130. Any other
    exception is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_as_interrupt():
                return fn(*args, **kwargs)
        except (UnknownModelError, BadOption) as exc:
            raise OneLineUsageError(printable(exc)) from None
        except (UserError, BackendUnavailable) as exc:
            raise click.ClickException(printable(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


#: Signals that mean "stop now" besides Ctrl-C: ``kill``/``timeout``/a scheduler (SIGTERM), and
#: a closed terminal or ssh session (SIGHUP, whose default would end the process on the spot).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (:data:`STOP_SIGNALS`) raise KeyboardInterrupt for the duration, so
    they clean up exactly like Ctrl-C (staging folders removed, measured rows kept, exit 130).
    The one place these semantics live: every command gets it from :func:`one_line_errors`, and
    the work that must clean up (an export, a benchmark sweep, a plan) holds it too, for callers
    that are not commands. The previous handlers come back on exit. Only the main thread can
    install a handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def thread_option(option: str, minimum: int = 1) -> click.ParamType:
    """The click type of a thread-count option: an integer from ``minimum`` to the cores this
    process may use, refused with :func:`~.hardware.thread_problem`'s reason (exit 2)."""

    class Threads(click.IntRange):
        def convert(self, value: Any, param: click.Parameter | None,
                    ctx: click.Context | None) -> Any:
            number = super().convert(value, param, ctx)
            problem = thread_problem(option, number)
            if problem:
                self.fail(problem, param, ctx)
            return number

    return Threads(min=minimum)


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read each time they are used, not when the
    command is built: a registry that grows after import (a runtime registered later) is seen
    in validation, in the one-line error and in ``--help`` alike."""

    def __init__(self, choices: Callable[[], Iterable[str]], case_sensitive: bool = True):
        self._read = choices
        super().__init__((), case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._read())

    @choices.setter
    def choices(self, _value: Any) -> None:  # click's __init__ assigns; the reader decides
        pass


def bounded(kind: type, lo: float, hi: float, reason: str) -> click.ParamType:
    """The click type of a numeric option from ``lo`` to ``hi`` (shown in --help), finite only
    (``nan`` and ``inf`` are refused: a loop told to run for ``inf`` seconds never ends), with
    ``reason`` for the upper bound in the one-line error (exit 2)."""
    base = click.IntRange if kind is int else click.FloatRange
    plain = click.INT if kind is int else click.FLOAT

    class Bounded(base):  # type: ignore[misc, valid-type]
        def convert(self, value: Any, param: click.Parameter | None,
                    ctx: click.Context | None) -> Any:
            number = plain.convert(value, param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            if not lo <= number <= hi:
                self.fail(f"{number} is not in {lo}..{hi} ({reason})", param, ctx)
            return number

    return Bounded(lo, hi)


def resolve_model_name(depth: int | None, model: str | None) -> str:
    """``--depth 50`` or ``--model resnet50`` -> "resnet50"; a bad name: usage error (exit 2)."""
    if depth is not None and model is not None:
        raise OneLineUsageError("give --depth or --model, not both")
    choice = model if model is not None else depth
    if choice is None:
        raise OneLineUsageError("give --depth or --model")
    try:
        return get_architecture(choice).name
    except UnknownModelError as exc:
        raise OneLineUsageError(str(exc)) from None


def model_options(default: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--depth`` and ``--model``, shared by every command that picks a family member."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--model", "model", metavar="NAME", default=None,
                          help="Model name, e.g. resnet50, resnet20 (see --list-models)."
                               + (f" [default: {default}]" if default else ""))(fn)
        fn = click.option("--depth", type=int, default=None,
                          help="Depth of the family member, e.g. 18, 50, 152, or 20 for the "
                               "small-image ResNet-20.")(fn)
        return fn

    return decorate


def print_family_table(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """Eager ``--list-models`` callback: print the family and exit."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(format_family_table())
    ctx.exit(0)


def format_family_table() -> str:
    header = f"{'model':<17} {'block':<10} {'layers':<14} {'input':>5} {'params':>12} {'GMACs':>7}"
    lines = [header, "-" * len(header)]
    for row in family_table():
        layers = "-".join(str(n) for n in row.layers)
        lines.append(f"{row.name:<17} {row.block:<10} {layers:<14} {row.input_size:>5} "
                     f"{row.params:>12,} {row.macs / 1e9:>7.3f}")
    lines.append("ImageNet models with 1000 classes; small-image models with 10. "
                 "MACs per image at the input size shown, counted by torch.utils.flop_counter.")
    return "\n".join(lines)


class DefaultCommand(OneLineCommand):
    """The command a :class:`DefaultGroup` runs when no sub-command is named.

    Its help is the tool's help (``resnet-export --help``): the usage line shows the tool without
    this command's name, and a Commands section lists the group's other commands.
    """

    @staticmethod
    def _group(ctx: click.Context) -> click.Context | None:
        parent = ctx.parent
        return parent if parent is not None and isinstance(parent.command, click.Group) else None

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        group = self._group(ctx)
        formatter.write_usage(group.command_path if group else ctx.command_path,
                              " ".join(self.collect_usage_pieces(ctx)))

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        group = self._group(ctx)
        commands = group.command.commands if group else {}  # type: ignore[attr-defined]
        rows = []
        for name, cmd in commands.items():
            if cmd is self or cmd.hidden:
                continue
            args = [p.human_readable_name + ("..." if p.nargs == -1 else "")
                    for p in cmd.params if isinstance(p, click.Argument)]
            rows.append((" ".join([name, *args]), cmd.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


class DefaultGroup(click.Group):
    """A group that runs ``default_command`` when the first argument is not a sub-command.

    So ``resnet-export --depth 50 --fmt onnx`` and ``resnet-export verify DIR`` both work, and
    ``resnet-export --help`` shows the default command's options, which is what users look for.
    """

    def __init__(self, *args: Any, default_command: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


__all__ = [
    "DefaultCommand",
    "DefaultGroup",
    "LazyChoice",
    "OneLineCommand",
    "OneLineUsageError",
    "bounded",
    "format_family_table",
    "model_names",
    "model_options",
    "one_line_errors",
    "print_family_table",
    "resolve_model_name",
    "signals_as_interrupt",
    "thread_option",
]

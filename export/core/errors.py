"""Every exception a user can cause, in one place, so every command turns them into one line."""


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): shown as one line, exit status 1."""


class BadOption(UserError):
    """An option value that cannot work: out of its range, of the wrong type, or wrong for
    this model or data (found after reading them); one line, exit status 2 (usage)."""


class UnknownModelError(ValueError):
    """A model name that is not in the family; the message lists the valid names (exit 2)."""


class BackendUnavailable(RuntimeError):
    """The runtime cannot run on this machine; the message says what is missing."""


class EngineIncompatible(UserError):
    """A serialized engine built for another TensorRT version or GPU."""


class NotRegularFile(UserError):
    """A data path that is a FIFO, socket, device or folder where a file was expected: refused
    before it is read, since reading a FIFO blocks until someone writes to it."""


class ParityFailed(UserError):
    """The artifact does not give the eager model's logits: nothing good-looking is left."""


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``: a third-party error in one line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped as ``repr`` would (``\\x1b``,
    ``\\n``, ``\\u202e``), so a name from a folder or a file cannot move the cursor, recolour
    the terminal or break a one-line message into several."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))

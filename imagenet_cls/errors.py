"""The one exception type for user mistakes: the CLI prints it as a single line, without a traceback."""


class UserError(ValueError):
    """A problem with the user's input (an option, a file, a folder) and what to do about it.

    The message names the option or file and the fix, on one line.
    """


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by an option does not exist."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    A UserError re-raised from a DataLoader worker carries the worker's traceback: its last line is the message.
    """
    import re

    text = str(error).strip()
    if "Original Traceback" not in text:
        return text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^[\w.]*Error: ", "", text.splitlines()[-1])


def report_user_error(error: BaseException) -> int:
    """Print ``error: <one line>`` to stderr and return the exit status of a user mistake (2).

    Every command (``cli.py``, ``python -m imagenet_cls.prepare``, ``... export``) ends a user mistake this way.
    """
    import sys

    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


DISK_FULL_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG (file-size limit, ulimit -f), EDQUOT


def disk_full(error: BaseException) -> UserError | None:
    """``error`` as one line when it is a full disk, a file-size limit or a quota; None otherwise."""
    if not isinstance(error, OSError) or error.errno not in DISK_FULL_ERRNOS:
        return None
    import os

    where = f" writing {error.filename}" if error.filename else ""
    return UserError(
        f"{os.strerror(error.errno)}{where}: free space on that file system (or raise the file-size limit, ulimit -f, "
        "or the quota) and run again; no file was left half-written under its final name"
    )


def report_disk_full(error: OSError) -> int:
    """Print a full disk as one ``error:`` line (status 2); re-raise any other OSError."""
    converted = disk_full(error)
    if converted is None:
        raise error
    return report_user_error(converted)


def ignore_file_size_signal() -> None:
    """Ignore SIGXFSZ: a write past a file-size limit (``ulimit -f``) then fails with EFBIG, reported in one line.

    By default the signal kills the process with a core dump, and no message.
    """
    import signal

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

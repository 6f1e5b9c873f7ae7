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

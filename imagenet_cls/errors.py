"""The one exception type for user mistakes: the CLI prints it as a single line, without a traceback."""


class UserError(ValueError):
    """A problem with the user's input (an option, a file, a folder) and what to do about it.

    The message names the option or file and the fix, on one line.
    """


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by an option does not exist."""

"""The one exception family the CLI turns into a clean message instead of a traceback."""


class LmforgeError(Exception):
    """Bad input from the user (a file, a field, a flag): the message says which and what was expected."""

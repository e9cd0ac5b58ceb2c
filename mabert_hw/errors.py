"""The one exception type the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input from the user (checkpoint, shape, file, flag): reported without a traceback."""

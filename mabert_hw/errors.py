"""The exceptions the CLI turns into a one-line message and exit status 2: UserError, and its MissingPackage."""


class UserError(Exception):
    """Bad input from the user (checkpoint, shape, file, flag): reported without a traceback."""


class MissingPackage(UserError):
    """An optional package an engine needs is not installed or will not load (a benchmark skips the engine)."""


def error_summary(error: BaseException) -> str:
    """`Type: first line of its message` (libraries such as torch raise many-line messages), for one-line errors."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__

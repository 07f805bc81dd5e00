"""Errors padrec raises for bad input. The CLI turns them into one clear line and a non-zero exit."""


class PadrecError(Exception):
    """Base class: a problem with what the user gave us (a file, an argument), not a bug."""


class DataError(PadrecError):
    """A dataset file is missing, unreadable or inconsistent."""


class TargetError(PadrecError):
    """A target directory is missing, incomplete or does not match the data."""


def first_line(error: Exception) -> str:
    """``Type: first line of the message``: a library's exception folded into one of padrec's one-line errors."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"

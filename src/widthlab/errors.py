"""The one exception type for mistakes a user can make (bad config, unknown name, missing data)."""


class WidthlabError(ValueError):
    """A user-caused error: the message names the bad value and what would be valid.

    The CLI prints it on one line and exits with status 2; the Python API lets it propagate.
    """


def check_positive_int(name: str, value: object, *, optional: bool = False, maximum: int | None = None):
    """`value` if it is a positive integer (at most `maximum`, when given; or None when `optional`), else a
    WidthlabError naming `name`.

    Example:
        >>> check_positive_int("samplings", 3)
        3
        >>> check_positive_int("workers", 0)
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: workers must be a positive integer, got 0
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WidthlabError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
    if maximum is not None and value > maximum:
        raise WidthlabError(f"{name} must be at most {maximum:,} (the bound on {name}), got {value:,}")
    return value


def check_seconds(name: str, value: object) -> float:
    """`value` if it is a finite number of seconds >= 0, else a WidthlabError naming `name`.

    Example:
        >>> check_seconds("checkpoint_every", 60)
        60
        >>> check_seconds("checkpoint_every", -1)
        Traceback (most recent call last):
        ...
        widthlab.errors.WidthlabError: checkpoint_every must be a number of seconds >= 0, got -1
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise WidthlabError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return value


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors (just ``Type`` without a message).

    Example:
        >>> first_line(ValueError("bad\\nmore"))
        'ValueError: bad'
    """
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

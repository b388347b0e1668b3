"""The one exception type for mistakes a user can make (bad config, unknown name, missing data)."""


class WidthlabError(ValueError):
    """A user-caused error: the message names the bad value and what would be valid.

    The CLI prints it on one line and exits with status 2; the Python API lets it propagate.
    """

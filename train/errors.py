"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad config key, a missing file, a label out of
range). The script front prints its message as one line and exits with `exit_code`; a bug keeps
its traceback.
"""


class UserError(Exception):
    """A problem in the user's input; the message says what was wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A bad configuration: unknown key, wrong type, invalid value, unreadable file."""


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""

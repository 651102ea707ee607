"""User-facing errors.

A :class:`LatheError` is something the user caused and can fix (a bad config key, a
missing input, a corrupt file). The CLI prints its message as one line and exits
non-zero instead of showing a traceback; anything else is a bug and keeps its traceback.
"""


class LatheError(Exception):
    """An error the user can fix; its message names the thing and the fix."""


class ConfigError(LatheError):
    """The configuration (YAML file or ``--set`` override) is invalid."""


class InputError(LatheError):
    """An input path or file is missing, unreadable, corrupt or has the wrong schema."""


class LedgerError(LatheError):
    """Records were lost: kept + dropped does not equal the number that entered a stage."""

"""The one exception family that entry points turn into a single error line (no traceback)."""


class UserError(Exception):
    """A problem with what the user gave us (config, command line, files), not a bug in the code."""


class ConfigError(UserError):
    """The configuration or the command line is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the configured model."""


class DataError(UserError):
    """Data files are missing or do not fit the configured split."""

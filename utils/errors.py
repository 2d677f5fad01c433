"""The one exception family that entry points turn into a single error line (no traceback)."""


class UserError(Exception):
    """A problem with what the user gave us (config, command line, files), not a bug in the code.

    Entry points print it as one line, `<label>: <message>`, and exit with `exit_code`.
    """

    label = "error"
    exit_code = 1


class ConfigError(UserError):
    """The configuration or the command line is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the configured model."""


class DataError(UserError):
    """Data files are missing or do not fit the configured split."""


class CallbackError(UserError):
    """A configured callback raised; its traceback goes to info.log."""


class TrainingInterrupted(UserError):
    """SIGINT or SIGTERM stopped training after a step; the exact state was saved."""

    label = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal N"

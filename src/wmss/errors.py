"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""


class WmssError(Exception):
    """A problem the user can fix: the message says what was wrong, where, and what to do."""


class ConfigError(WmssError):
    """A config key or value is wrong."""


class DataError(WmssError):
    """A data file, row or column is wrong."""


class ModelError(WmssError):
    """A model cannot be loaded, or two models cannot be used together."""


class TrainingError(WmssError):
    """Training diverged: a loss or a gradient norm is NaN or infinite."""

"""Errors raised while reading or preparing training data."""


class DataError(ValueError):
    """A dataset problem a user must fix; the message names the file(s) and the problem."""


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the run directory is unusable)."""

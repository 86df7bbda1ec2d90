"""Errors raised while loading or running a generator (importable without torch)."""


class SpecError(ValueError):
    """A spec document is missing a field or holds a value that cannot be used."""


class CheckpointError(RuntimeError):
    """A model folder or checkpoint is missing, incomplete or unreadable."""


class InputError(ValueError):
    """An input image cannot be used with this generator; the message says why."""

"""User-facing errors.

Every error a user can cause with bad input derives from `MedmetaError` (a `ValueError`), carries one line that
names the offending thing and the fix, and is printed by the CLI without a traceback.
"""

from __future__ import annotations


class MedmetaError(ValueError):
    """Bad input from the user: the message names the file or value and what to do about it."""


class DataError(MedmetaError):
    """A dataset, folder or image cannot be used as given."""


class ConfigError(MedmetaError):
    """A configuration value is missing or out of range."""


class CheckpointError(MedmetaError):
    """A checkpoint is missing, truncated, tampered with or from an incompatible version."""


class TrainingError(MedmetaError):
    """Training cannot go on (for example the loss became NaN)."""


class OutputError(MedmetaError):
    """An output path cannot be written as asked (it exists, is a special file, or is not writable)."""

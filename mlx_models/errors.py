"""Errors raised at the boundaries (files, config, CLI, weights).

Every message says what is wrong, where, and how to fix it. The CLIs print
``error: <message>`` on one line and exit with code 2.
"""


class MLXModelsError(Exception):
    """A user-facing error: bad input, missing files, unsupported models."""


class ConfigError(MLXModelsError):
    """An invalid model or training configuration."""


class WeightsError(MLXModelsError):
    """Missing, unexpected, corrupt or wrongly shaped weights."""


class SourceError(MLXModelsError):
    """A model source that cannot be read: missing path, unreachable or gated hub repo."""


class DataError(MLXModelsError):
    """A dataset that cannot be used: missing columns, bad labels, empty splits."""


class DistributedError(MLXModelsError):
    """Another rank of a data-parallel run is gone: its connection was lost, or it never answered."""

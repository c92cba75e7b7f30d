"""Failures a stage reports as one clear line instead of a traceback."""


class StageError(Exception):
    """Base class: the message alone tells the user what is wrong and what to do."""


class ConfigError(StageError, ValueError):
    """params.yaml has a wrong key, type or value; the message names the key."""


class SourceError(StageError, RuntimeError):
    """The data source cannot be read at all (missing folder, no network, bad CSV)."""


class WeightsError(StageError, RuntimeError):
    """Pretrained weights were asked for but cannot be had."""


class ResumeError(StageError, RuntimeError):
    """``train.resume`` cannot continue from the checkpoint it found."""


class DivergedError(StageError, RuntimeError):
    """Training ended with weights that are not finite numbers: nothing is exported."""

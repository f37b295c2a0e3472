"""The errors a user can act on. `python -m hwocr.run` prints their message and exits 2, without a
traceback; each message names the file or setting at fault and the way out."""

from pathlib import Path


class ConfigError(ValueError):
    """A config value that types alone cannot catch."""


class DatasetError(ConfigError):
    """The dataset cannot be loaded, or (dataset.strict=true) holds a bad sample; the message names the
    path or row and the problem."""


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message says what to do instead."""


class PreflightError(RuntimeError):
    """A prerequisite (GPU, dataset folder, library version) is missing; checked before any heavy work."""


class CheckpointError(RuntimeError):
    """A checkpoint or adapter cannot be used; the message says which and why."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be used and the run may not go on without it."""


USER_ERRORS = (CheckpointError, ConfigError, DatasetError, ModelLoadError, PreflightError, TrackingError)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; rerunning the job resumes it."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint

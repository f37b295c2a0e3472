"""Everything MLflow: one run per job, params, metrics, artifacts, and the UI command.

hwocr owns the run itself (transformers' MLflowCallback is off): its `__del__` can end a parent run
and it uploads whole models on save.
"""

import logging
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from hwocr.config import Config, TrackingConfig

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # MLflow rejects longer param values
PARAMS_PER_BATCH = 100  # and more params per call


class TrackingError(RuntimeError):
    pass


def tracking_uri(cfg: TrackingConfig, outputs_dir: Path) -> str:
    """An explicit URI, else sqlite in outputs/ with an absolute path (a relative one follows the cwd)."""
    if cfg.uri:
        return cfg.uri
    return f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --host 127.0.0.1 --backend-store-uri {shlex.quote(uri)}"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """One MLflow run. Use as a context manager: it ends FINISHED, or FAILED on an exception."""

    def __init__(self, cfg: TrackingConfig, outputs_dir: Path):
        self.cfg = cfg
        self.uri = tracking_uri(cfg, outputs_dir)
        self.client = MlflowClient(self.uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def check_reachable(self) -> None:
        """Fail before any GPU work if the store cannot be reached."""
        try:
            experiment = self.client.get_experiment_by_name(self.cfg.experiment)
            self.experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(self.cfg.experiment)
            )
        except Exception as error:
            raise TrackingError(
                f"MLflow tracking store {self.uri} is unreachable: {error}\n"
                "Check tracking.uri, or run with tracking.uri=null to log to outputs/mlflow.db."
            ) from error

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        if self.experiment_id is None:
            self.check_reachable()
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [mlflow.entities.Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        numeric = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        stamp = mlflow.utils.time.get_current_time_millis()
        batch = [mlflow.entities.Metric(k, v, stamp, step or 0) for k, v in numeric.items()]
        for i in range(0, len(batch), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            log.warning("not logged to MLflow: %s does not exist", path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end(RunStatus.to_string(RunStatus.FAILED) if exc else "FINISHED")
        return False


class TrainerLogsToMlflow(TrainerCallback):
    """Forward the Trainer's logs (train loss, lr, validation loss) as step metrics."""

    RENAME = {
        "loss": "train/loss",
        "learning_rate": "train/lr",
        "grad_norm": "train/grad_norm",
        "eval_loss": "val/loss",
    }

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {self.RENAME[k]: v for k, v in logs.items() if k in self.RENAME}
        if metrics:
            self.tracker.log_metrics(metrics, step=state.global_step)


def _param_value(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: Config, run_dir: Path) -> dict[str, str]:
    return {
        "experiment": cfg.experiment,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "hardware": cfg.hardware.name,
        "lora": f"r{cfg.lora.r}" if cfg.lora.enabled else "full",
        "git_commit": git_commit(),
        "run_dir": str(run_dir),
    }

"""Everything MLflow: one run per job, params, metrics, artifacts, and the UI command.

hwocr owns the run itself (transformers' MLflowCallback is off): its `__del__` can end a parent run
and it uploads whole models on save.
"""

import contextlib
import json
import logging
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from transformers import TrainerCallback

from hwocr.config import Config, TrackingConfig
from hwocr.errors import TrackingError, TrainingInterrupted
from hwocr.io import read_json, write_json
from hwocr.tracking.redact import redact_mapping
from hwocr.tracking.store import open_client
from hwocr.tracking.sync import (
    STEPS_FILE,
    Journal,
    apply,
    read_run_file,
    replay,
    sync_command,
    write_run_file,
)

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "HWOCR_PARENT_RUN_ID"  # set by the sweep callback: jobs log as its children


# HTTP stores: mlflow retries a failing request 7 times with exponential backoff (minutes). The
# reachability check at start tries once with a short timeout; later calls retry a little, then the
# run goes on offline (mlflow_pending/ journal). A user's own MLFLOW_HTTP_REQUEST_* values win.
CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
RUN_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_ENV_SET_BY_US: set[str] = set()


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _quick_http(uri: str) -> Iterator[None]:
    """For a one-off check: no retries and a short timeout (unless the user set them)."""
    ours = {k for k, v in RUN_ENV_DEFAULTS.items() if os.environ.get(k) == v and k in _ENV_SET_BY_US}
    changed = {k: v for k, v in CHECK_ENV.items() if _is_http(uri) and (k not in os.environ or k in ours)}
    saved = {k: os.environ.get(k) for k in changed}
    os.environ.update(changed)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _short(error: Exception, limit: int = 400) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tracking_uri(cfg: TrackingConfig, outputs_dir: Path) -> str:
    """An explicit URI, else sqlite in outputs/ with an absolute path (a relative one follows the cwd)."""
    if cfg.uri:
        return cfg.uri
    return f"sqlite:///{(outputs_dir / 'mlflow.db').resolve()}"


def local_artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite store; MLflow's default is ./mlruns of whatever the cwd is."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides where its artifacts go
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def ui_command(uri: str) -> str:
    if _is_http(uri):
        return f"open {uri}"
    return f"mlflow ui --host 127.0.0.1 --backend-store-uri {shlex.quote(uri)}"


class Tracker:
    """One MLflow run. Use as a context manager: it ends FINISHED, KILLED on a stop signal, or FAILED
    on an exception.

    With `run_dir`, the run survives faults: its id is kept in RUN_DIR/mlflow_run.json and a rerun of
    the job continues it; a call that fails (store down mid-run, or unreachable at start with
    tracking.required=false) switches the tracker offline: it and every later call are appended to
    RUN_DIR/mlflow_pending/journal.jsonl, which `python -m hwocr.sync RUN_DIR` uploads (the tracker
    itself tries once more when the run ends, and the next run of the job uploads it first).

    Each metric step is logged once: a continued run skips the (key, step) pairs an earlier attempt
    logged already, i.e. the steps a job replays after resuming from a checkpoint older than its
    crash. The earlier attempt's values stay (training resumed from a checkpoint reproduces them,
    tests/test_resume.py). What was logged is read from the store's metric history and from
    RUN_DIR/mlflow_steps.json (written after every call, so an offline resume knows it too).
    """

    def __init__(self, cfg: TrackingConfig, outputs_dir: Path, run_dir: Path | None = None):
        self.cfg = cfg
        self.uri = tracking_uri(cfg, outputs_dir)
        if _is_http(self.uri):
            for key, value in RUN_ENV_DEFAULTS.items():
                if key not in os.environ:
                    os.environ[key] = value
                    _ENV_SET_BY_US.add(key)
        self.client = open_client(self.uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.run_dir = Path(run_dir) if run_dir else None
        self.journal = Journal(self.run_dir) if self.run_dir else None
        self.offline = False
        self.resumed = False
        self._start_info: dict = {}
        self._tables: list[dict] = []  # artifacts listed as tables (declare_table)
        self._logged_steps: dict[str, int] = {}  # metric key -> newest step logged to this run

    def check_reachable(self) -> None:
        """Fail fast, before any model or GPU work, if the store cannot be reached (with
        tracking.required=false: warn and keep everything locally instead)."""
        try:
            with _quick_http(self.uri):
                experiment = self.client.get_experiment_by_name(self.cfg.experiment)
                self.experiment_id = (
                    experiment.experiment_id
                    if experiment
                    else self.client.create_experiment(
                        self.cfg.experiment, artifact_location=local_artifact_location(self.uri)
                    )
                )
        except Exception as error:
            message = f"MLflow tracking store {self.uri} is unreachable: {_short(error)}"
            if self.cfg.required or self.journal is None:
                raise TrackingError(
                    f"{message}\nCheck tracking.uri; or run with tracking.uri=null to log to "
                    "outputs/mlflow.db; or with tracking.required=false to keep the results locally "
                    "and upload them later with `python -m hwocr.sync RUN_DIR`."
                ) from error
            self.offline = True
            log.warning(
                "%s\ntracking.required=false: going on without MLflow; params, metrics and artifacts "
                "are kept in %s. Upload them later with: %s",
                message,
                self.journal.dir,
                sync_command(self.run_dir),
            )

    def _go_offline(self, error: Exception) -> None:
        if self.journal is None:
            raise error
        if not self.offline:
            self.offline = True
            log.warning(
                "MLflow call failed (%s): going on without MLflow; the rest of this run is kept in %s. "
                "Upload it later with: %s",
                _short(error),
                self.journal.dir,
                sync_command(self.run_dir),
            )
            self._journal_start()

    def _journal_start(self) -> None:
        self.journal.append(
            "start",
            uri=self.uri,
            experiment=self.cfg.experiment,
            run_id=self.run_id,
            **self._start_info,
        )

    def _call(self, op: str, payload: dict) -> None:
        """Apply `op` (hwocr/tracking/sync.py's table) to the store; if that fails (or the tracker is
        offline), journal it for replay."""
        if not self.offline:
            try:
                apply(self.client, self.run_id, op, payload, self.run_dir)
                return
            except Exception as error:
                self._go_offline(error)
        self.journal.append(op, **payload)

    def pending_sync_command(self) -> str | None:
        """The command that uploads what this job kept locally, or None when nothing is pending."""
        if self.journal and self.journal.pending():
            return sync_command(self.run_dir)
        return None

    def _upload_pending(self) -> None:
        """A previous attempt of this job left a journal for this store: upload it first."""
        if not self.journal or not self.journal.pending():
            return
        starts = [e for e in self.journal.entries() if e["op"] == "start"]
        if starts and starts[0].get("uri") != self.uri:
            return
        n = self.journal.pending()
        replay(self.run_dir)
        log.info("uploaded %d entries that an earlier attempt of this job kept in %s", n, self.journal.dir)

    def _reopen(self, run_name: str | None = None) -> str | None:
        """The run this job directory logged to before (a resumed job), set RUNNING again."""
        if self.run_dir is None:
            return None
        saved = read_run_file(self.run_dir)
        if saved.get("uri") != self.uri or not saved.get("run_id"):
            return None
        try:
            run = self.client.get_run(saved["run_id"])
        except mlflow.exceptions.MlflowException:
            return None
        if run.info.lifecycle_stage != "active":
            return None
        # a failed job's placeholder run (hwocr/sweeps/callback.py) gets the job's own name back
        name = run_name if run_name and run_name != run.info.run_name else None
        self.client.update_run(run.info.run_id, status="RUNNING", name=name)
        self.resumed = True
        log.info("continuing MLflow run %s: this job directory was run before", run.info.run_id)
        return run.info.run_id

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str | None:
        if self.experiment_id is None and not self.offline:
            self.check_reachable()
        all_tags = dict(tags)
        # A sweep's parent run (hwocr/sweeps/callback.py); the variable reaches jobs in other processes too.
        parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags = redact_mapping(all_tags)
        self._start_info = {"run_name": run_name, "tags": all_tags}
        if self.run_dir and not self.run_id:
            self.run_id = read_run_file(self.run_dir).get("run_id") if self.offline else None
        if not self.offline:
            try:
                self._upload_pending()
                self.run_id = self._reopen(run_name)
                if self.run_id is None:
                    run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
                    self.run_id = run.info.run_id
                if self.run_dir:
                    write_run_file(self.run_dir, self.uri, self.run_id, self.experiment_id)
            except Exception as error:
                self._go_offline(error)
                return self.run_id
        if self.offline:
            self._journal_start()
        self._load_logged_steps()
        return self.run_id

    def _load_logged_steps(self) -> None:
        """The newest step per metric key that earlier attempts logged to this run (class doc)."""
        if self.run_dir is None or self.run_id is None:
            return
        saved = read_json(self.run_dir / STEPS_FILE)
        steps = dict(saved.get("steps") or {}) if saved.get("run_id") == self.run_id else {}
        if self.resumed and not self.offline:
            try:
                for key in self.client.get_run(self.run_id).data.metrics:
                    history = self.client.get_metric_history(self.run_id, key)
                    steps[key] = max([steps.get(key, -1), *(m.step for m in history)])
            except Exception as error:
                self._go_offline(error)
        self._logged_steps = steps

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log params, secrets redacted (hwocr/tracking/redact.py). A continued run keeps its first values."""
        values = redact_mapping({k: param_value(v) for k, v in params.items()})
        if self.resumed and not self.offline:
            try:
                existing = self.client.get_run(self.run_id).data.params
            except Exception as error:
                self._go_offline(error)
                existing = {}
            changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
            if changed:
                log.warning(
                    "continuing MLflow run %s: params changed since it started keep their first values "
                    "there (the job's resolved_config.yaml has the new ones): %s",
                    self.run_id,
                    ", ".join(changed),
                )
            values = {k: v for k, v in values.items() if k not in existing}
        self._call("params", {"params": values})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = step or 0
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and step > self._logged_steps.get(k, -1)
        }
        if not numeric:
            return  # every one of them was logged at this step already (a resumed attempt)
        stamp = mlflow.utils.time.get_current_time_millis()
        self._call("metrics", {"metrics": numeric, "step": step, "timestamp": stamp})
        self._logged_steps |= dict.fromkeys(numeric, step)
        if self.run_dir is not None and self.run_id is not None:
            write_json(self.run_dir / STEPS_FILE, {"run_id": self.run_id, "steps": self._logged_steps})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("tags", {"tags": redact_mapping(tags)})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            log.warning("not logged to MLflow: %s does not exist", path)
            return
        entry = {"path": str(path.resolve()), "artifact_path": artifact_path}
        if self.run_dir and path.resolve().is_relative_to(self.run_dir.resolve()):
            # relative too, so `hwocr.sync` still finds it after the job dir is copied elsewhere
            entry["in_run_dir"] = path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        self._call("artifact", entry)

    def declare_table(self, artifact_file: str) -> None:
        """List an already logged JSON artifact (mlflow.log_table's layout) as a table of this run, so
        the MLflow UI offers it in its table views. client.log_table is not used: it appends to an
        existing file, so a resumed job, which evaluates again, would log every row twice."""
        entry = {"path": artifact_file, "type": "table"}
        if entry not in self._tables:
            self._tables.append(entry)
        self.set_tags({MLFLOW_LOGGED_ARTIFACTS: json.dumps(self._tables)})

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id or self.offline:
            self._call("end", {"status": status})
        if self.offline and self.journal and self.journal.pending():
            upload_if_reachable(self.run_dir)  # the store may be back by now
        command = self.pending_sync_command()
        if command:
            log.warning("MLflow did not get everything; upload what was kept locally with: %s", command)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            status = "FINISHED"
        elif isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)):
            status = RunStatus.to_string(RunStatus.KILLED)  # resumable: a rerun continues this run
        else:
            status = RunStatus.to_string(RunStatus.FAILED)
        self.end(status)
        return False


def upload_if_reachable(run_dir: Path) -> int:
    """Upload a job dir's pending journal if its store answers now; the number of entries uploaded
    (0 when there was nothing, or the store is still down: the journal stays for a later try)."""
    journal = Journal(Path(run_dir))
    pending = journal.pending()
    if not pending:
        return 0
    uri = next((e.get("uri") for e in journal.entries() if e["op"] == "start"), None)
    if not uri:
        return 0
    try:
        with _quick_http(uri):
            open_client(uri).search_experiments(max_results=1)
        replay(Path(run_dir))
    except Exception as error:
        log.warning(
            "MLflow still unreachable (%s); %d entries stay in %s",
            _short(error),
            journal.pending(),
            journal.dir,
        )
        return 0
    log.info("MLflow is reachable again: uploaded %d entries kept in %s", pending, journal.dir)
    return pending


class NullTracker:
    """The tracker of ranks other than 0: only rank 0 talks to MLflow."""

    run_id = None
    uri = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc) -> bool:
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


def param_value(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."


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

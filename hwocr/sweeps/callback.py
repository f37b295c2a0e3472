"""Multirun grouping in MLflow: one parent run per sweep, every job its child, whatever the launcher.

`MlflowSweepCallback` is registered in conf/config.yaml under `hydra.callbacks`. In `-m` mode:

- on_multirun_start (the submitting process) creates the parent run (params: the sweep overrides;
  tags: sweep dir, command line, sweeper, launcher), writes `<sweep dir>/mlflow_parent.json` and
  exports HWOCR_PARENT_RUN_ID. Jobs read the file (`job_context()`, hwocr/sweeps/jobs.py); the variable is the
  fallback for processes that only inherit the environment. The file wins because loky (joblib)
  reuses worker processes whose environment may be older than this sweep.
- A job that fails does not stop the sweep: run.py's `main` calls `job_failed()`, which records the
  error in `<job dir>/job_status.json` and returns NaN (Optuna marks that trial FAILED). The job's
  MLflow run ends FAILED; if the job failed before it created its run, on_job_end creates a FAILED
  child for it, so no job goes missing.
- on_multirun_end writes the comparison (hwocr.compare) to the sweep dir, logs it to the parent and
  ends the parent: FINISHED, or FAILED if any job failed; then, with `fail_on_job_failure` (the
  default), exits with status 1 so scripts see the failure.
- If the sweep dies before on_multirun_end (a launcher error, Ctrl-C), an atexit hook still ends the
  parent as FAILED. Run `python -m hwocr.compare SWEEP_DIR` to rebuild the comparison then.
"""

import atexit
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hwocr.io import write_json
from hwocr.sweeps.jobs import (
    JOB_STATUS_FILE,
    PARENT_FILE,
    describe,
    job_overrides,
    read_job_status,
    read_parent_file,
    split_override,
    swept_keys,
    write_job_status,
)
from hwocr.tracking.client import PARENT_RUN_ENV

log = logging.getLogger(__name__)


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(os.path.join("hwocr", "run.py")):
        return shlex.join(["python", "-m", "hwocr.run", *argv[1:]])
    return shlex.join(argv)


def _tracking(config: DictConfig) -> tuple[str, str]:
    from hwocr.config import TrackingConfig
    from hwocr.tracking.client import tracking_uri

    uri = OmegaConf.select(config, "tracking.uri")
    experiment = OmegaConf.select(config, "tracking.experiment", default="hwocr")
    return tracking_uri(TrackingConfig(uri=uri, experiment=experiment), Path("outputs")), experiment


class MlflowSweepCallback(Callback):
    """See the module doc. Its state is plain strings: launchers pickle it into their workers."""

    def __init__(self, compare: bool = True, fail_on_job_failure: bool = True) -> None:
        self.compare = compare
        self.fail_on_job_failure = fail_on_job_failure
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.sweep_dir: str | None = None
        self._ended = False

    # submitting process -----------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception:  # Hydra would turn it into a warning that is easy to miss
            log.exception("MLflow sweep parent run not set up; jobs will log as top-level runs")

    def _start(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from hwocr.tracking.client import git_commit, param_value

        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri, experiment_name = _tracking(config)
        task = [str(o) for o in config.hydra.overrides.task]
        params_node = OmegaConf.select(config, "hydra.sweeper.params")
        sweeper_params = OmegaConf.to_container(params_node, resolve=True) if params_node else {}
        keys = swept_keys(task, sweeper_params)
        try:
            # the experiment is found or created exactly as the jobs' Tracker does it
            from hwocr.config import TrackingConfig
            from hwocr.tracking.client import Tracker

            tracker = Tracker(TrackingConfig(uri=uri, experiment=experiment_name), Path("outputs"))
            tracker.check_reachable()
            experiment_id = tracker.experiment_id
            client = MlflowClient(uri)
            run = client.create_run(
                experiment_id,
                run_name=f"sweep {config.get('experiment', '')} {sweep_dir.name}".strip(),
                tags={
                    "sweep.dir": str(sweep_dir),
                    "sweep.command": command_line(),
                    "sweep.swept_keys": ",".join(keys),
                    "sweep.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_")),
                    "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                    "sweep.is_parent": "true",
                    "experiment": str(config.get("experiment", "")),
                    "git_commit": git_commit(),
                },
            )
        except Exception as error:  # a sweep is worth running without its parent run
            log.error("MLflow parent run not created (%s); jobs will log as top-level runs", error)
            return
        self.parent_run_id, self.tracking_uri, self.sweep_dir = run.info.run_id, uri, str(sweep_dir)
        params = {f"sweep.{split_override(line)[0]}": split_override(line)[1] for line in task}
        params |= {f"sweep.params.{key}": value for key, value in (sweeper_params or {}).items()}
        if params:
            from mlflow.entities import Param

            client.log_batch(self.parent_run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
        info = {
            "parent_run_id": self.parent_run_id,
            "tracking_uri": uri,
            "experiment": experiment_name,
            "experiment_id": experiment_id,
            "swept_keys": keys,
            "task_overrides": task,
            "command": command_line(),
        }
        write_json(sweep_dir / PARENT_FILE, info)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        atexit.register(self._end_if_interrupted)
        log.info("MLflow parent run %s for sweep %s in %s", self.parent_run_id, sweep_dir, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self._finish(interrupted=False)
        if failed and self.fail_on_job_failure:
            log.error("%d job(s) of the sweep failed; exiting with status 1", failed)
            sys.exit(1)

    def _end_if_interrupted(self) -> None:
        if not self._ended:
            self._finish(interrupted=True)

    def _finish(self, interrupted: bool) -> int:
        """Write the comparison, log it, end the parent; return the number of failed jobs."""
        self._ended = True
        os.environ.pop(PARENT_RUN_ENV, None)
        if not self.sweep_dir:
            return 0
        from mlflow.tracking import MlflowClient

        failed = sum(
            read_job_status(job_status.parent).get("status") == "FAILED"
            for job_status in Path(self.sweep_dir).glob(f"*/{JOB_STATUS_FILE}")
        )
        if self.compare:
            try:
                from hwocr.sweeps.compare import compare_sweep

                result = compare_sweep(
                    Path(self.sweep_dir), tracking_uri=self.tracking_uri, log_to_parent=True, final=True
                )
                failed = max(failed, result.n_failed)
                print(result.summary())
            except Exception as error:
                log.exception("sweep comparison failed: %s", error)
        try:
            client = MlflowClient(self.tracking_uri)
            if interrupted:
                client.set_tag(self.parent_run_id, "sweep.interrupted", "true")
            client.set_terminated(
                self.parent_run_id, status="FAILED" if failed or interrupted else "FINISHED"
            )
        except Exception as error:
            log.error("could not end the MLflow parent run %s: %s", self.parent_run_id, error)
        return failed

    # job process (every launcher runs run_job, and so these, where the job runs) -------------

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            self._job_end(config, job_return)
        except Exception:
            log.exception("sweep bookkeeping of job %s failed", OmegaConf.select(config, "hydra.job.num"))

    def _job_end(self, config: DictConfig, job_return: Any) -> None:
        if str(OmegaConf.select(config, "hydra.mode")) != str(RunMode.MULTIRUN):
            return
        from hydra.core.utils import JobStatus

        job_dir = Path(str(config.hydra.runtime.output_dir))
        status = read_job_status(job_dir)
        if job_return.status == JobStatus.FAILED and status.get("status") != "FAILED":
            error = job_return._return_value
            status = {"status": "FAILED", "error_type": type(error).__name__, "error": str(error)}
            write_job_status(job_dir, status)
        if status.get("status") == "FAILED":
            self._ensure_failed_child(config, job_dir, status)
        else:
            value = job_return._return_value
            number = value if isinstance(value, (int, float)) and not math.isnan(value) else None
            write_job_status(job_dir, {"status": "COMPLETED", "return_value": number})

    def _ensure_failed_child(self, config: DictConfig, job_dir: Path, status: dict) -> None:
        """A job that failed before it created its MLflow run still gets a FAILED child."""
        parent = read_parent_file(Path(str(config.hydra.sweep.dir)))
        if not parent.get("parent_run_id"):
            return
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(parent["tracking_uri"])
            num = str(config.hydra.job.num)
            existing = client.search_runs(
                [parent["experiment_id"]],
                filter_string=f"tags.mlflow.parentRunId = '{parent['parent_run_id']}' "
                f"and tags.`sweep.job_num` = '{num}'",
                max_results=1,
            )
            if existing:
                return
            task = [str(o) for o in config.hydra.overrides.task]
            swept = job_overrides(task, parent.get("swept_keys") or [])
            run = client.create_run(
                parent["experiment_id"],
                run_name=f"{num}: {describe(swept)} (failed)",
                tags={
                    "mlflow.parentRunId": parent["parent_run_id"],
                    "sweep.dir": str(Path(str(config.hydra.sweep.dir)).resolve()),
                    "sweep.job_num": num,
                    "sweep.overrides": describe(swept),
                    "sweep.task_overrides": " ".join(task),
                    "run_dir": str(job_dir.resolve()),
                    "error": f"{status.get('error_type')}: {status.get('error')}"[:5000],
                },
            )
            from mlflow.entities import Param

            from hwocr.tracking.client import param_value

            params = [Param(k, param_value(v)) for k, v in swept.items()]
            if params:
                client.log_batch(run.info.run_id, params=params)
            if (job_dir / JOB_STATUS_FILE).is_file():
                client.log_artifact(run.info.run_id, str(job_dir / JOB_STATUS_FILE))
            client.set_terminated(run.info.run_id, status="FAILED")
        except Exception as error:
            log.error("could not record the failed job %s in MLflow: %s", job_dir, error)

"""Multirun grouping in MLflow: one parent run per sweep, every job its child, whatever the launcher;
and a sweep that survives preemption: resubmitting the same command finishes it.

`MlflowSweepCallback` is registered in conf/config.yaml under `hydra.callbacks`. In `-m` mode:

- on_multirun_start (the submitting process) creates the parent run (params: the sweep overrides;
  tags: sweep dir, command line, sweeper, launcher), writes `<sweep dir>/mlflow_parent.json` (with
  the jobs the sweep expects and one record per submission) and exports HWOCR_PARENT_RUN_ID. Jobs
  read the file (`job_context()`, hwocr/sweeps/jobs.py); the variable is the fallback for processes
  that only inherit the environment. The file wins because loky (joblib) reuses worker processes
  whose environment may be older than this sweep.
- Resubmitted (same command, same `hydra.sweep.dir`), it reopens that parent run instead, after
  checking that the overrides are the ones the sweep was started with; each job then skips, resumes
  or reruns itself (hwocr/sweeps/resume.py).
- A job that fails does not stop the sweep: hwocr/sweeps/job.py calls `job_failed()`, which records
  the error in `<job dir>/job_status.json` and returns NaN (Optuna marks that trial FAILED). The job's
  MLflow run ends FAILED; if the job failed before it created its run, on_job_end creates a FAILED
  child for it (and records it in the job dir, so a rerun continues that child), so no job goes
  missing.
- on_multirun_end uploads what jobs journaled while MLflow was down, writes the comparison
  (hwocr.compare) to the sweep dir, logs it to the parent and ends the parent: FINISHED when every
  job finished, else FAILED; then, with `fail_on_job_failure` (the default), exits with status 1.
- The parent never stays RUNNING after the sweep ends: an exception or Ctrl-C, SIGTERM or SIGHUP of
  the submitter ends it KILLED through an atexit hook (and prints the command that resubmits the
  sweep); a SIGKILL, after which nothing of the submitter runs, is handled by a watchdog process
  started here (hwocr/sweeps/watchdog.py).
- on_job_start (every run, multirun or not) masks secrets in the copies of the config that Hydra
  has just written: `.hydra/*.yaml` and the sweep dir's `multirun.yaml`.
"""

import atexit
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hwocr.compat import failed_job_error, is_basic_sweeper_target
from hwocr.sweeps import resume
from hwocr.sweeps.jobs import (
    JOB_STATUS_FILE,
    command_line,
    describe,
    expected_jobs,
    job_overrides,
    read_job_status,
    read_parent_file,
    split_override,
    swept_keys,
    update_job_status,
    write_parent_file,
)
from hwocr.sweeps.resume import mark_parent_ended, record_submission, same_overrides
from hwocr.tracking.client import PARENT_RUN_ENV

log = logging.getLogger(__name__)


def _tracking(config: DictConfig) -> tuple[str, str]:
    from hwocr.config import TrackingConfig
    from hwocr.tracking.client import tracking_uri

    uri = OmegaConf.select(config, "tracking.uri")
    experiment = OmegaConf.select(config, "tracking.experiment", default="hwocr")
    return tracking_uri(TrackingConfig(uri=uri, experiment=experiment), Path("outputs")), experiment


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


class MlflowSweepCallback(Callback):
    """See the module doc. Its state is plain strings: launchers pickle it into their workers."""

    def __init__(
        self, compare: bool = True, fail_on_job_failure: bool = True, rerun_failed: bool | None = None
    ) -> None:
        self.compare = compare
        self.fail_on_job_failure = fail_on_job_failure
        self.rerun_failed = rerun_failed  # read by the jobs (hwocr/sweeps/jobs.py rerun_failed())
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.sweep_dir: str | None = None
        self._ended = False

    # submitting process -----------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except SweepMismatch as error:  # before any job starts: nothing to clean up
            log.error("%s", error)
            sys.exit(2)
        except Exception:  # Hydra would turn it into a warning that is easy to miss
            log.exception("MLflow sweep parent run not set up; jobs will log as top-level runs")

    def _start(self, config: DictConfig) -> None:
        from hwocr.tracking.redact import redact_command

        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri, experiment_name = _tracking(config)
        task = [str(o) for o in config.hydra.overrides.task]
        params_node = OmegaConf.select(config, "hydra.sweeper.params")
        sweeper_params = OmegaConf.to_container(params_node, resolve=True) if params_node else {}
        keys = swept_keys(task, sweeper_params)
        command = shlex.join(redact_command(shlex.split(command_line())))
        previous = read_parent_file(sweep_dir)
        if previous.get("task_overrides") is not None and not same_overrides(
            redact_command(previous["task_overrides"]), redact_command(task)
        ):
            raise SweepMismatch(
                f"{sweep_dir} holds another sweep (overrides: {' '.join(previous['task_overrides'])}); "
                f"this one has {' '.join(redact_command(task))}. Resubmit a sweep with the command it was "
                "started with, or give this one its own hydra.sweep.dir"
            )
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
        expected = expected_jobs(task, sweeper_params) if is_basic_sweeper_target(sweeper) else None
        submissions = [*(previous.get("submissions") or []), _submission()]
        self.sweep_dir, self.tracking_uri = str(sweep_dir), uri
        for signum in (signal.SIGTERM, signal.SIGHUP):  # so that the atexit hook runs on these too
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _raise_interrupt)
        atexit.register(self._end_if_interrupted)

        info = previous | {
            "tracking_uri": uri,
            "experiment": experiment_name,
            "swept_keys": keys,
            "task_overrides": redact_command(task),
            "command": command,
            "expected_jobs": [redact_command(job) for job in expected] if expected is not None else None,
            "n_expected": len(expected)
            if expected is not None
            else OmegaConf.select(config, "hydra.sweeper.n_trials"),
            "submissions": submissions,
        }
        self.parent_run_id, info["experiment_id"] = self._parent_run(
            config, sweep_dir, info, previous, sweeper_params
        )
        info["parent_run_id"] = parent_id = self.parent_run_id
        write_parent_file(sweep_dir, info)
        if parent_id:
            os.environ[PARENT_RUN_ENV] = parent_id
            record_submission(sweep_dir, os.getpid(), watchdog_pid=_start_watchdog(sweep_dir))
        if len(submissions) > 1:
            log.info(
                "resubmission %d of sweep %s: completed jobs are reused, interrupted ones resume, "
                "failed ones %s",
                len(submissions),
                sweep_dir,
                "run again"
                if self.rerun_failed or (self.rerun_failed is None and expected is not None)
                else "stay failed",
            )

    def _parent_run(
        self, config: DictConfig, sweep_dir: Path, info: dict, previous: dict, sweeper_params: dict
    ) -> tuple[str | None, str | None]:
        """The parent run and its experiment: the run this sweep dir recorded (reopened), or a new one."""
        from hwocr.config import TrackingConfig
        from hwocr.tracking.client import Tracker, git_commit, param_value
        from hwocr.tracking.store import open_client

        uri, submissions, task = info["tracking_uri"], info["submissions"], info["task_overrides"]

        reuse = previous.get("parent_run_id") if previous.get("tracking_uri") == uri else None
        try:
            # the experiment is found or created exactly as the jobs' Tracker does it
            tracker = Tracker(TrackingConfig(uri=uri, experiment=info["experiment"]), Path("outputs"))
            tracker.check_reachable()
            client = open_client(uri)
            if reuse:
                client.update_run(reuse, status="RUNNING")
                for tag in ("sweep.interrupted", "sweep.interrupted_reason"):
                    if tag in client.get_run(reuse).data.tags:
                        client.delete_tag(reuse, tag)
                client.set_tag(reuse, "sweep.submissions", str(len(submissions)))
                log.info("MLflow parent run %s of sweep %s reopened", reuse, sweep_dir)
                return reuse, tracker.experiment_id
            run = client.create_run(
                tracker.experiment_id,
                run_name=f"sweep {config.get('experiment', '')} {sweep_dir.name}".strip(),
                tags={
                    "sweep.dir": str(sweep_dir),
                    "sweep.command": info["command"],
                    "sweep.swept_keys": ",".join(info["swept_keys"]),
                    "sweep.sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_")),
                    "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                    "sweep.is_parent": "true",
                    "sweep.submissions": str(len(submissions)),
                    "experiment": str(config.get("experiment", "")),
                    "git_commit": git_commit(),
                },
            )
        except Exception as error:  # a sweep is worth running without its parent run
            if reuse:
                log.error(
                    "MLflow parent run %s not reopened (%s); jobs will journal their runs", reuse, error
                )
                return reuse, previous.get("experiment_id")
            log.error("MLflow parent run not created (%s); jobs will log as top-level runs", error)
            return None, None
        params = {f"sweep.{split_override(line)[0]}": split_override(line)[1] for line in task}
        params |= {f"sweep.params.{key}": value for key, value in (sweeper_params or {}).items()}
        if params:
            from mlflow.entities import Param

            client.log_batch(run.info.run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
        log.info("MLflow parent run %s for sweep %s in %s", run.info.run_id, sweep_dir, uri)
        return run.info.run_id, tracker.experiment_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self._finish(interrupted=False)
        if failed and self.fail_on_job_failure:
            log.error("%d job(s) of the sweep did not finish; exiting with status 1", failed)
            sys.exit(1)

    def _end_if_interrupted(self) -> None:
        if not self._ended:
            self._finish(interrupted=True)

    def _finish(self, interrupted: bool) -> int:
        """Upload journals, end dead jobs, write and log the comparison, end the parent; return the
        number of jobs that did not finish."""
        self._ended = True
        os.environ.pop(PARENT_RUN_ENV, None)
        if not self.sweep_dir:
            return 0
        sweep_dir = Path(self.sweep_dir)
        parent = read_parent_file(sweep_dir)
        try:
            resume.upload_journals(sweep_dir)
            resume.end_dead_jobs(sweep_dir, parent)
        except Exception as error:
            log.error("could not bring the jobs' MLflow runs up to date: %s", error)
        unfinished = sum(resume.job_state(d) != resume.COMPLETED for d in resume.job_dirs(sweep_dir))
        if self.compare:
            try:
                from hwocr.sweeps.compare import compare_sweep

                result = compare_sweep(
                    sweep_dir, tracking_uri=self.tracking_uri, log_to_parent=True, final=not interrupted
                )
                unfinished = max(unfinished, result.n_unfinished)
                print(result.summary())
            except Exception as error:
                log.exception("sweep comparison failed: %s", error)
        status = "KILLED" if interrupted else ("FAILED" if unfinished else "FINISHED")
        record_submission(sweep_dir, os.getpid(), ending=status)
        try:
            if self.parent_run_id:
                mark_parent_ended(sweep_dir, parent, status, reason="the sweep stopped before its jobs ended")
        except Exception as error:  # the watchdog tries again once this process has exited
            log.error("could not end the MLflow parent run %s: %s", self.parent_run_id, error)
        if interrupted or unfinished:
            print(
                "\nThe sweep stopped before all its jobs finished. Resubmit it to finish it (completed jobs "
                "are reused, interrupted ones resume from their last checkpoint, failed ones run again):\n  "
                + resume.resubmit_command(parent.get("command") or command_line(), sweep_dir)
            )
        return unfinished

    # job process (every launcher runs run_job, and so these, where the job runs) -------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hwocr.tracking.redact import redact_hydra_files

        try:
            redact_hydra_files(Path(str(config.hydra.runtime.output_dir)))
            if str(OmegaConf.select(config, "hydra.mode")) == str(RunMode.MULTIRUN):
                redact_hydra_files(Path(str(config.hydra.sweep.dir)))
        except Exception:
            log.exception("could not mask secrets in the .hydra/ copies of the config")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            self._job_end(config, job_return)
        except Exception:
            log.exception("sweep bookkeeping of job %s failed", OmegaConf.select(config, "hydra.job.num"))

    def _job_end(self, config: DictConfig, job_return: Any) -> None:
        if str(OmegaConf.select(config, "hydra.mode")) != str(RunMode.MULTIRUN):
            return
        from hydra.core.utils import JobStatus

        from hwocr.tracking.client import upload_if_reachable

        job_dir = Path(str(config.hydra.runtime.output_dir))
        status = read_job_status(job_dir)
        recorded = status.get("overrides")
        if recorded is not None and not same_overrides(
            recorded, [str(o) for o in config.hydra.overrides.task]
        ):
            return  # the dir is another job's (refused by job.py): leave its record alone
        if status.get("status") == resume.INTERRUPTED:
            return  # stopped by a signal; the sweep is stopping too
        if job_return.status == JobStatus.FAILED and status.get("status") != "FAILED":
            error = failed_job_error(job_return)
            update_job_status(job_dir, "FAILED", error_type=type(error).__name__, error=str(error))
            status = read_job_status(job_dir)
        upload_if_reachable(job_dir)  # what the job journaled while MLflow was down, if it is back
        if status.get("status") == "FAILED":
            self._ensure_failed_child(config, job_dir, status)
        else:
            update_job_status(
                job_dir, resume.COMPLETED, return_value=resume.completed_value(job_return.return_value)
            )
            _clear_error_tag(job_dir)

    def _ensure_failed_child(self, config: DictConfig, job_dir: Path, status: dict) -> None:
        """A job that failed before it created its MLflow run still gets a FAILED child."""
        parent = read_parent_file(Path(str(config.hydra.sweep.dir)))
        if not parent.get("parent_run_id"):
            return
        from hwocr.tracking.store import open_client
        from hwocr.tracking.sync import read_run_file, write_run_file

        try:
            client = open_client(parent["tracking_uri"])
            num = str(config.hydra.job.num)
            existing = client.search_runs(
                [parent["experiment_id"]],
                filter_string=f"tags.mlflow.parentRunId = '{parent['parent_run_id']}' "
                f"and tags.`sweep.job_num` = '{num}'",
                max_results=1,
            )
            if existing:
                if not read_run_file(job_dir).get("run_id"):
                    write_run_file(
                        job_dir, parent["tracking_uri"], existing[0].info.run_id, parent["experiment_id"]
                    )
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
            # a rerun of the job (resubmission) continues this run instead of adding a second child
            write_run_file(job_dir, parent["tracking_uri"], run.info.run_id, parent["experiment_id"])
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


class SweepMismatch(RuntimeError):
    """The sweep dir holds a sweep with other overrides."""


def _submission() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _start_watchdog(sweep_dir: Path) -> int | None:
    """The watchdog of this submission (hwocr/sweeps/watchdog.py), in its own session so that a
    signal to this process group does not reach it."""
    try:
        with open(sweep_dir / ".watchdog.log", "a") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hwocr.sweeps.watchdog", str(sweep_dir), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc.pid
    except OSError as error:
        log.warning(
            "no watchdog for the sweep (%s): a SIGKILL of this process leaves its parent run RUNNING", error
        )
        return None


def _clear_error_tag(job_dir: Path) -> None:
    """A job that failed before and now completed keeps the old error as sweep.previous_error."""
    from hwocr.tracking.store import open_client
    from hwocr.tracking.sync import read_run_file

    saved = read_run_file(job_dir)
    if not saved.get("run_id"):
        return
    try:
        client = open_client(saved["uri"])
        error = client.get_run(saved["run_id"]).data.tags.get("error")
        if error:
            client.set_tag(saved["run_id"], "sweep.previous_error", error)
            client.delete_tag(saved["run_id"], "error")
    except Exception as error:
        log.warning("could not update the tags of MLflow run %s: %s", saved["run_id"], error)

"""Resubmitting a sweep finishes it: what a job does when its dir has been run before, and the lock
that keeps two processes out of one job dir.

`<job dir>/job_status.json` says how the job's last attempt went:

    RUNNING      an attempt started (pid, host); if no process holds the job's lock, it was killed
    COMPLETED    it ended; `return_value` is what it returned (the tuned CER)
    FAILED       it raised (error type, message, traceback)
    INTERRUPTED  a signal stopped it after it saved a checkpoint

The same sweep command pointed at the same `hydra.sweep.dir` launches every job again; each one then
(`plan()`):

- COMPLETED, same overrides: skipped, its recorded result returned (Optuna is told the same value,
  so a seeded sampler proposes the same next trials);
- RUNNING (but dead) or INTERRUPTED: run again; `train.resume=auto` resumes it from its newest
  complete checkpoint, a partial evaluation keeps its predictions, and the MLflow run recorded in
  `mlflow_run.json` is continued;
- FAILED: run again, or kept failed with `hydra.callbacks.mlflow_sweep.rerun_failed=false` (the
  default under sweepers other than the basic one: a rerun Optuna trial changes the sampler's
  history, so every later trial would differ from the one recorded in its dir);
- a dir that holds another job (other overrides): refused, so that no job resumes another's checkpoint.

A dir locked by a live process (a job of an earlier submission still running: submitit jobs outlive a
killed submitter) is waited for, and the job then decides from what that process recorded.
"""

import logging
import math
import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hwocr.sweeps import lock
from hwocr.sweeps.jobs import (
    read_job_status,
    read_parent_file,
    update_job_status,
    write_job_status,
    write_parent_file,
)
from hwocr.sweeps.lock import is_running

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED, INTERRUPTED = "RUNNING", "COMPLETED", "FAILED", "INTERRUPTED"


class JobDirConflict(RuntimeError):
    """The job dir holds a different job; nothing is run or written there."""


@dataclass
class Plan:
    action: str  # "run" | "skip" | "keep_failed"
    previous: dict  # the job_status.json found
    reason: str = ""

    @property
    def return_value(self) -> float:
        value = self.previous.get("return_value")
        return float(value) if isinstance(value, (int, float)) else float("nan")


def same_overrides(a: list[str], b: list[str]) -> bool:
    return sorted(map(str, a)) == sorted(map(str, b))


def plan(job_dir: Path, overrides: list[str], rerun_failed: bool) -> Plan:
    """What this attempt of the job does, from what the previous attempt recorded (module doc)."""
    previous = read_job_status(job_dir)
    status = previous.get("status")
    recorded = previous.get("overrides")
    if status and recorded is not None and not same_overrides(recorded, overrides):
        raise JobDirConflict(
            f"{job_dir} holds another job ({' '.join(recorded)}), not this one ({' '.join(overrides)}). "
            "Resubmit the sweep with the command and overrides it was started with, or give this one "
            "its own hydra.sweep.dir"
        )
    if status == COMPLETED:
        return Plan("skip", previous, "already completed")
    if status == FAILED and not rerun_failed:
        return Plan("keep_failed", previous, "failed before; kept failed (rerun_failed=false)")
    if status in (RUNNING, INTERRUPTED, FAILED):
        return Plan("run", previous, f"{status.lower()} before: running it again (it resumes)")
    return Plan("run", previous)


def start_attempt(job_dir: Path, overrides: list[str], previous: dict) -> None:
    """Record that this process runs the job now (job_status.json RUNNING)."""
    write_job_status(
        job_dir,
        {
            "status": RUNNING,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "overrides": list(map(str, overrides)),
            "attempt": int(previous.get("attempt", 0)) + 1,
            **({"previous_status": previous["status"]} if previous.get("status") else {}),
        },
    )


def completed_value(value) -> float | None:
    """What job_status.json records as a completed job's result: a number, or None for NaN or none."""
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


# --- the lock (hwocr/sweeps/lock.py) ------------------------------------------------------------------


def job_lock(job_dir: Path):
    """Hold the job dir's lock for this attempt, waiting for an earlier submission's live job."""
    return lock.job_lock(job_dir, holder=lambda: read_job_status(job_dir))


def job_state(job_dir: Path) -> str:
    """RUNNING only while a process holds the lock: a RUNNING record without one was killed."""
    status = read_job_status(job_dir).get("status")
    if status == RUNNING and not is_running(job_dir):
        return INTERRUPTED
    return status or ("RUNNING" if is_running(job_dir) else "")


# --- the resubmit command ---------------------------------------------------------------------------


def resubmit_command(command: str, sweep_dir: Path) -> str:
    """The sweep's own command line, pinned to its sweep dir: running it again finishes the sweep."""
    argv = [a for a in shlex.split(command) if not a.startswith("hydra.sweep.dir=")]
    return shlex.join([*argv, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"])


# --- the sweep as a whole: what the submitter (or its watchdog) does when the sweep stops -----------


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep that a job has started in, by job number."""
    return sorted(
        (p.parent for p in Path(sweep_dir).glob("*/.hydra") if p.parent.name.isdigit()),
        key=lambda p: int(p.name),
    )


def upload_journals(sweep_dir: Path) -> int:
    """Upload what jobs no longer running kept locally while MLflow was down; entries uploaded."""
    from hwocr.tracking.client import upload_if_reachable

    return sum(upload_if_reachable(job_dir) for job_dir in job_dirs(sweep_dir) if not is_running(job_dir))


def end_dead_jobs(sweep_dir: Path, parent: dict) -> list[str]:
    """Jobs recorded RUNNING whose process is gone: INTERRUPTED in their dir, KILLED in MLflow
    (resubmitting the sweep resumes them). Returns their job numbers."""
    from hwocr.tracking.store import open_client
    from hwocr.tracking.sync import read_run_file

    ended = []
    for job_dir in job_dirs(sweep_dir):
        if read_job_status(job_dir).get("status") != RUNNING or is_running(job_dir):
            continue
        update_job_status(job_dir, INTERRUPTED, reason="its process ended before the job did")
        ended.append(job_dir.name)
        run = read_run_file(job_dir)
        if run.get("run_id") and run.get("uri") == parent.get("tracking_uri"):
            client = open_client(run["uri"])
            if client.get_run(run["run_id"]).info.status == RUNNING:
                client.set_terminated(run["run_id"], status="KILLED")
    if ended:
        log.warning(
            "job(s) %s of the sweep were killed; resubmitting the sweep resumes them", ", ".join(ended)
        )
    return ended


def record_submission(sweep_dir: Path, pid: int, **fields) -> dict:
    """Update the submission `pid` in mlflow_parent.json; returns the file's new content."""
    parent = read_parent_file(sweep_dir)
    for submission in parent.get("submissions") or []:
        if submission.get("pid") == pid:
            submission.update(fields)
    write_parent_file(sweep_dir, parent)
    return parent


def mark_parent_ended(sweep_dir: Path, parent: dict, status: str, reason: str = "") -> None:
    """End the sweep's MLflow parent run with `status`; then record the end in mlflow_parent.json
    (a failure leaves the record open, so the watchdog tries again)."""
    from hwocr.tracking.store import open_client

    submissions = parent.get("submissions") or [{}]
    if parent.get("parent_run_id"):
        client = open_client(parent["tracking_uri"])
        if status == "KILLED":
            client.set_tag(parent["parent_run_id"], "sweep.interrupted", "true")
            if reason:
                client.set_tag(parent["parent_run_id"], "sweep.interrupted_reason", reason)
        client.set_terminated(parent["parent_run_id"], status=status)
    if submissions[-1].get("pid"):
        record_submission(sweep_dir, submissions[-1]["pid"], ended=status)

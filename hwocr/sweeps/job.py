"""How one job of `python -m hwocr.run` starts and ends, alone or as part of a sweep.

`run_job` wraps the pipeline. In a sweep (`-m`) the job first takes its dir's lock and decides from the
dir's job_status.json whether an earlier attempt already finished it (hwocr/sweeps/resume.py). Then,
however the pipeline ends, the job reports it the way its caller needs:

- a stop on a signal after a checkpoint: the command that resumes it, exit 143;
- an error the user can act on: its message without a traceback, exit 2;
- a failed worker process (hardware.num_devices > 1): what failed, exit 1;
- anything else: a traceback.

In a sweep, the last three record the job FAILED and return, so the sweep goes on to its other jobs and
its comparison (hwocr/sweeps/callback.py); a stop on a signal stops the sweep too, with the command
that resumes the whole sweep.
"""

import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from hwocr import distributed
from hwocr.errors import USER_ERRORS, TrainingInterrupted
from hwocr.sweeps import jobs, resume

log = logging.getLogger("hwocr")

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM

Pipeline = Callable[[DictConfig], float]


def run_job(pipeline: Pipeline, composed: DictConfig) -> float:
    """`pipeline(composed)`, its job's result; in a sweep, only if no earlier attempt settled it."""
    if not jobs.in_multirun():
        return _reported(pipeline, composed)
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    num = hydra_cfg.job.num
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    with resume.job_lock(job_dir):
        try:
            plan = resume.plan(job_dir, overrides, jobs.rerun_failed())
        except resume.JobDirConflict as error:
            log.error("%s", error)
            return jobs.failed_result(error)  # nothing written: the dir is another job's
        if plan.action == "skip":
            log.info(
                "job %s already completed (job_status.json): reusing its result (%s)",
                num,
                plan.previous.get("return_value"),
            )
            return plan.return_value
        if plan.action == "keep_failed":
            log.warning("job %s %s: %s", num, plan.reason, plan.previous.get("error"))
            return jobs.failed_result(RuntimeError(f"job {num} {plan.reason}"))
        if plan.reason:
            log.info("job %s %s", num, plan.reason)
        resume.start_attempt(job_dir, overrides, plan.previous)
        return _reported(pipeline, composed)


def _reported(pipeline: Pipeline, composed: DictConfig) -> float:
    """Run the pipeline; report how it ended (module doc)."""
    try:
        return pipeline(composed)
    except TrainingInterrupted as error:
        _report_interrupted(error)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as error:
        log.error("%s", error)
        if jobs.in_multirun():  # a failed job must not stop the sweep
            return jobs.job_failed(error, user_error=True)
        sys.exit(2)
    except ChildFailedError as error:
        log.error("a worker process failed, so the job was stopped:\n%s", distributed.describe_failure(error))
        if jobs.in_multirun():
            return jobs.job_failed(error)
        sys.exit(1)
    except Exception as error:
        return jobs.job_failed(error)  # re-raises outside a multirun


def _report_interrupted(error: TrainingInterrupted) -> None:
    if not jobs.in_multirun():
        log.error(
            "%s\nThe job stopped early. Resume it (it continues from that checkpoint and the same MLflow "
            "run) with:\n  %s",
            error,
            resume_command(),
        )
        return
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
    jobs.update_job_status(
        Path(hydra_cfg.runtime.output_dir),
        resume.INTERRUPTED,
        step=error.step,
        checkpoint=str(error.checkpoint),
    )
    command = jobs.read_parent_file(sweep_dir).get("command") or jobs.command_line()
    log.error(
        "%s\nThe job stopped early, and so does the sweep. Resubmit the sweep to resume it (completed "
        "jobs are reused; this one continues from that checkpoint and its MLflow run):\n  %s",
        error,
        resume.resubmit_command(command, sweep_dir),
    )


def resume_command() -> str:
    """This job's command line, pinned to its job directory: rerunning it resumes (train.resume=auto)."""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.run.dir=")]
    overrides.append(f"hydra.run.dir={hydra_cfg.runtime.output_dir}")
    return " ".join(["python -m hwocr.run", *(shlex.quote(o) for o in overrides)])

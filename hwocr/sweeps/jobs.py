"""The job side of a sweep: which keys it varies, what each job got, and the files in the sweep dir
that tie jobs to the parent run (mlflow_parent.json) and record how each job ended (job_status.json).
The callback (hwocr/sweeps/callback.py) writes the first, job.py and the callback the second, and
the comparison (hwocr/sweeps/compare.py) reads both."""

import logging
import os
import shlex
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from hwocr.compat import basic_sweeper_jobs, is_basic_sweeper_target
from hwocr.io import read_json, write_json
from hwocr.tracking.client import PARENT_RUN_ENV

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
JOB_STATUS_FILE = "job_status.json"


# --- overrides ------------------------------------------------------------------------------------


def split_override(line: str) -> tuple[str, str]:
    """`+train.lr=1e-4,2e-4` -> ("train.lr", "1e-4,2e-4"); the +/++/~ prefix is dropped."""
    key, _, value = line.partition("=")
    return key.lstrip("+~"), value


def swept_keys(task_overrides: list[str], sweeper_params: dict | None = None) -> list[str]:
    """Keys the sweep varies: overrides with a sweep value (a,b / range / choice / interval) plus
    the sweeper's own `params` (Optuna's search space, the basic sweeper's params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [
        split_override(o.input_line)[0]
        for o in OverridesParser.create().parse_overrides(list(task_overrides))
        if o.is_sweep_override() and not o.is_hydra_override()
    ]
    for key in sweeper_params or {}:
        if split_override(key)[0] not in keys:
            keys.append(split_override(key)[0])
    return keys


def job_overrides(task_overrides: list[str], keys: list[str]) -> dict[str, str]:
    """The values one job got for the swept keys, in sweep order."""
    values = dict(split_override(line) for line in task_overrides)
    return {key: values[key] for key in keys if key in values}


def expected_jobs(task_overrides: list[str], sweeper_params: dict | None = None) -> list[list[str]]:
    """Every job's task overrides, in job-number order, as Hydra's basic sweeper expands the grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    return basic_sweeper_jobs(OverridesParser.create().parse_overrides([*params, *task_overrides]))


def describe(overrides: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in overrides.items())


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(os.path.join("hwocr", "run.py")):
        return shlex.join(["python", "-m", "hwocr.run", *argv[1:]])
    return shlex.join(argv)


# --- the job side (job.py) ------------------------------------------------------------------------


@dataclass
class JobContext:
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def read_parent_file(sweep_dir: Path) -> dict:
    return read_json(Path(sweep_dir) / PARENT_FILE)


def job_context() -> JobContext:
    """Parent run id, run name and tags for this job; empty outside a multirun (then only the
    HWOCR_PARENT_RUN_ID variable, if set, nests a single run)."""
    if not in_multirun():
        return JobContext(parent_run_id=os.environ.get(PARENT_RUN_ENV) or None)
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
    parent = read_parent_file(sweep_dir)
    task = list(hydra_cfg.overrides.task)
    keys = parent.get("swept_keys") or [split_override(line)[0] for line in task]
    swept = job_overrides(task, keys)
    num = hydra_cfg.job.num
    return JobContext(
        parent_run_id=parent.get("parent_run_id") or os.environ.get(PARENT_RUN_ENV) or None,
        run_name=f"{num}: {describe(swept)}" if swept else f"job {num}",
        tags={
            "sweep.dir": str(sweep_dir),
            "sweep.job_num": str(num),
            "sweep.overrides": describe(swept),
            "sweep.task_overrides": " ".join(task),
        },
    )


def job_failed(error: BaseException, user_error: bool = False) -> float:
    """Record a failed job in its dir, then let the sweep go on (see hwocr/sweeps/callback.py).
    Outside a multirun the error is re-raised: a single run keeps its usual exit status."""
    if not in_multirun():
        raise error
    log.error(
        "job failed (%s); the sweep goes on", type(error).__name__, exc_info=None if user_error else error
    )
    update_job_status(
        Path(HydraConfig.get().runtime.output_dir),
        "FAILED",
        error_type=type(error).__name__,
        error=str(error),
        traceback="".join(traceback.format_exception(error)),
    )
    return failed_result(error)


def failed_result(error: BaseException) -> float:
    """What a failed job hands its sweeper. Hydra's basic sweeper re-raises a job's exception once
    the batch is done, which would skip on_multirun_end (no comparison, parent left RUNNING): there
    the job returns NaN. Other sweepers (Optuna) record a raised job as a failed trial and go on (up
    to `max_failure_rate`), whereas a NaN return makes optuna 2.x fail inside `tell`: there the error
    is re-raised."""
    if not is_basic_sweeper():
        raise error
    return float("nan")


def is_basic_sweeper() -> bool:
    return is_basic_sweeper_target(str(OmegaConf.select(HydraConfig.get(), "sweeper._target_")))


def rerun_failed() -> bool:
    """hydra.callbacks.mlflow_sweep.rerun_failed; unset: rerun under the basic sweeper only (a rerun
    Optuna trial would change the sampler's history, hwocr/sweeps/resume.py)."""
    value = OmegaConf.select(HydraConfig.get(), "callbacks.mlflow_sweep.rerun_failed", default=None)
    return is_basic_sweeper() if value is None else bool(value)


def write_parent_file(sweep_dir: Path, info: dict) -> None:
    write_json(Path(sweep_dir) / PARENT_FILE, info)


def read_job_status(job_dir: Path) -> dict:
    return read_json(Path(job_dir) / JOB_STATUS_FILE)


def write_job_status(job_dir: Path, status: dict) -> None:
    write_json(Path(job_dir) / JOB_STATUS_FILE, status)


ATTEMPT_KEYS = ("overrides", "attempt", "pid", "host", "started")  # who runs the job (resume.py)


def update_job_status(job_dir: Path, status: str, **fields) -> None:
    """Set the job's status, keeping what its attempt recorded (its overrides, attempt number, pid)."""
    current = read_job_status(job_dir)
    kept = {key: current[key] for key in ATTEMPT_KEYS if key in current}
    write_job_status(job_dir, kept | {"status": status} | fields)

"""Resubmitting a sweep, without running one: what a job decides from its dir, the job lock, the
comparison naming missing and interrupted jobs, each metric step logged once after a resume, the
.hydra/ copies redacted, and predict's guard against decompression bombs and huge files.
(End to end, in subprocesses: tests/test_sweep_chaos.py.)"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hwocr.config import TrackingConfig
from hwocr.sweeps import resume
from hwocr.sweeps.compare import compare_sweep
from hwocr.sweeps.jobs import PARENT_FILE, expected_jobs, read_job_status, write_job_status
from hwocr.tracking import sync
from hwocr.tracking.client import Tracker

ROOT = Path(__file__).resolve().parents[1]
GRID = ["+experiment=demo", "lora=r8,r16", "train.lr=1e-3,2e-3"]


# --- what a job does on resubmission ----------------------------------------------------------------


def status(job_dir: Path, state: str, overrides: list[str], **extra) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    write_job_status(job_dir, {"status": state, "overrides": overrides, **extra})
    return job_dir


@pytest.mark.parametrize(
    "state, rerun_failed, action",
    [
        (None, True, "run"),
        ("COMPLETED", True, "skip"),
        ("COMPLETED", False, "skip"),
        ("RUNNING", True, "run"),  # its process died: resume
        ("INTERRUPTED", False, "run"),
        ("FAILED", True, "run"),
        ("FAILED", False, "keep_failed"),
    ],
)
def test_a_resubmitted_job_skips_resumes_or_reruns(tmp_path, state, rerun_failed, action):
    job = tmp_path / "0"
    overrides = ["+experiment=demo", "lora=r8"]
    if state:
        status(job, state, list(reversed(overrides)), return_value=0.25)  # order does not matter
    plan = resume.plan(job, overrides, rerun_failed)
    assert plan.action == action
    if action == "skip":
        assert plan.return_value == 0.25


def test_a_dir_holding_another_job_is_refused(tmp_path):
    job = status(tmp_path / "0", "COMPLETED", ["+experiment=demo", "lora=r8"], return_value=0.25)
    with pytest.raises(resume.JobDirConflict, match=r"holds another job \(\+experiment=demo lora=r8\)"):
        resume.plan(job, ["+experiment=demo", "lora=r32"], rerun_failed=True)
    assert read_job_status(job)["status"] == "COMPLETED"  # untouched


def test_the_resubmit_command_is_the_sweep_command_pinned_to_its_dir(tmp_path):
    command = "python -m hwocr.run -m +experiment=demo 'lora=r8,r16' hydra.sweep.dir=elsewhere"
    assert resume.resubmit_command(command, tmp_path) == (
        f"python -m hwocr.run -m +experiment=demo lora=r8,r16 hydra.sweep.dir={tmp_path.resolve()}"
    )


def test_expected_jobs_follow_the_basic_sweepers_grid_order():
    jobs = expected_jobs(GRID, sweeper_params={})
    assert [sorted(j) for j in jobs] == [
        sorted(["+experiment=demo", f"lora={r}", f"train.lr={lr}"])
        for r in ("r8", "r16")
        for lr in ("0.001", "0.002")
    ]


# --- the job lock -----------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from hwocr.sweeps.lock import job_lock
with job_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_the_job_lock_dies_with_its_holder_even_by_sigkill(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert resume.is_running(tmp_path)
        write_job_status(tmp_path, {"status": "RUNNING", "pid": holder.pid})
        assert resume.job_state(tmp_path) == "RUNNING"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert not resume.is_running(tmp_path)
    assert resume.job_state(tmp_path) == "INTERRUPTED"  # the record says RUNNING, nobody runs it
    started = time.monotonic()
    with resume.job_lock(tmp_path):
        assert resume.is_running(tmp_path)
    assert time.monotonic() - started < 2


# --- the comparison of an unfinished sweep ---------------------------------------------------------


def test_compare_names_missing_and_interrupted_jobs(tmp_path, capsys):
    from omegaconf import OmegaConf

    sweep = tmp_path / "sweep"
    jobs = expected_jobs(GRID, sweeper_params={})
    command = "python -m hwocr.run -m +experiment=demo lora=r8,r16 train.lr=1e-3,2e-3"
    sweep.mkdir()
    (sweep / PARENT_FILE).write_text(
        json.dumps({"swept_keys": ["lora", "train.lr"], "expected_jobs": jobs, "command": command})
    )
    for num, state in ((0, "COMPLETED"), (1, "RUNNING")):  # job 1's process is gone; 2 and 3 never ran
        job = status(sweep / str(num), state, jobs[num], return_value=0.5)
        (job / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(jobs[num]), job / ".hydra" / "overrides.yaml")
    (sweep / "0" / "eval" / "tuned").mkdir(parents=True)
    (sweep / "0" / "eval" / "tuned" / "metrics.json").write_text('{"cer": 0.5}')

    result = compare_sweep(sweep, log_to_parent=False)
    table = pd.read_csv(result.out_dir / "jobs.csv")
    assert list(table["job"]) == [0, 1, 2, 3]
    assert list(table["status"]) == ["FINISHED", "INTERRUPTED", "MISSING", "MISSING"]
    assert list(table["lora"]) == ["r8", "r8", "r16", "r16"]
    text = result.summary()
    assert "1 interrupted (job 1)" in text and "2 missing (jobs 2, 3)" in text
    assert f"{command} hydra.sweep.dir={sweep.resolve()}" in text
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["missing"] == [2, 3] and summary["interrupted"] == [1]


# --- each metric step once after a resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for these tests: creating one runs MLflow's migrations (seconds)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _attempt(store: str, run_dir: Path, tmp_path: Path, steps, value_of) -> Tracker:
    tracker = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=run_dir)
    tracker.check_reachable()
    tracker.start("job", {})
    tracker.log_metrics({"base/cer": 0.5})  # a summary metric, logged again by every attempt
    for step in steps:
        tracker.log_metrics({"train/loss": value_of(step)}, step=step)
    return tracker


def test_a_resumed_run_logs_each_metric_step_once(tmp_path, monkeypatch, store):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "job"
    # attempt 1 logs steps 1-5, saved a checkpoint at step 4, then dies (no end)
    first = _attempt(store, run_dir, tmp_path, range(1, 6), lambda s: 10.0 - s)
    # attempt 2 resumes from step 4: the Trainer logs 5-8 again, with other values where training is
    # not bit-for-bit reproducible; step 5 was logged already and is not logged again
    second = _attempt(store, run_dir, tmp_path, range(5, 9), lambda s: 20.0 - s)
    second.end()
    assert second.run_id == first.run_id and second.resumed
    client = MlflowClient(store)
    assert _history(client, first.run_id, "train/loss") == [(s, 10.0 - s) for s in range(1, 6)] + [
        (s, 20.0 - s) for s in range(6, 9)
    ]
    assert _history(client, first.run_id, "base/cer") == [(0, 0.5)]


def test_steps_logged_online_are_not_logged_again_by_an_offline_resume(tmp_path, monkeypatch, caplog, store):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "job"
    first = _attempt(store, run_dir, tmp_path, range(1, 6), lambda s: 10.0 - s)

    second = Tracker(TrackingConfig(uri=store, required=False), tmp_path, run_dir=run_dir)

    def down(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    for name in ("get_experiment_by_name", "create_experiment", "log_batch", "set_terminated", "get_run"):
        monkeypatch.setattr(second.client, name, down)
    with caplog.at_level(logging.WARNING):
        second.check_reachable()
    assert second.offline
    second.start("job", {})
    for step in range(5, 9):
        second.log_metrics({"train/loss": 20.0 - step}, step=step)
    second.end()
    journaled = [e["step"] for e in sync.Journal(run_dir).entries() if e["op"] == "metrics"]
    assert journaled == [6, 7, 8]  # from the local record of what was logged (mlflow_steps.json)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert sync.main([str(run_dir)]) == 0
    client = MlflowClient(store)
    assert [s for s, _ in _history(client, first.run_id, "train/loss")] == list(range(1, 9))


def test_a_run_that_lost_mlflow_uploads_its_journal_itself_when_it_ends(tmp_path, monkeypatch, store):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "job"
    tracker = _attempt(store, run_dir, tmp_path, [1], lambda s: 1.0)

    def down(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(tracker.client, "log_batch", down)  # this client only: the server is back by the end
    tracker.log_metrics({"train/loss": 0.5}, step=2)
    assert tracker.offline and sync.Journal(run_dir).pending() == 2  # start + metrics
    tracker.end()
    client = MlflowClient(store)
    assert _history(client, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5)]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert sync.Journal(run_dir).pending() == 0 and tracker.pending_sync_command() is None


def test_replaying_a_journal_entry_the_store_already_has_adds_nothing(tmp_path, monkeypatch, store):
    """A call that reached the server but whose answer was lost is journaled too: its replay carries
    the same timestamp, so the store keeps one point."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "job"
    tracker = _attempt(store, run_dir, tmp_path, [1], lambda s: 1.0)
    stamp = MlflowClient(store).get_metric_history(tracker.run_id, "train/loss")[0].timestamp
    journal = sync.Journal(run_dir)
    journal.append("start", uri=store, experiment="hwocr", run_id=tracker.run_id, run_name="job", tags={})
    journal.append("metrics", metrics={"train/loss": 1.0}, step=1, timestamp=stamp)
    assert sync.main([str(run_dir)]) == 0
    assert _history(MlflowClient(store), tracker.run_id, "train/loss") == [(1, 1.0)]


# --- .hydra/ copies on disk --------------------------------------------------------------------------


def test_dot_hydra_copies_are_written_with_secrets_masked(tmp_path, monkeypatch):
    from hwocr.tracking.redact import REDACTED, redact_hydra_files

    monkeypatch.setenv("MY_SERVICE_TOKEN", "env-secret-5678")
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text(
        "- +experiment=demo\n- +hub.token=cli-secret-1234\n- dataset.root=/data/env-secret-5678/x\n"
    )
    (hydra_dir / "hydra.yaml").write_text(
        "hydra:\n  job:\n    env_set:\n      HF_TOKEN: envset-secret-9999\n      OMP_NUM_THREADS: '1'\n"
        "  overrides:\n    hydra:\n    - +hydra.job.env_set.HF_TOKEN=envset-secret-9999\n"
    )
    (hydra_dir / "config.yaml").write_text("tracking:\n  uri: null\n  api_key: abcdef123\n")
    multirun = tmp_path / "multirun.yaml"
    multirun.write_text((hydra_dir / "hydra.yaml").read_text())

    assert sorted(p.name for p in redact_hydra_files(tmp_path)) == [
        "config.yaml",
        "hydra.yaml",
        "multirun.yaml",
        "overrides.yaml",
    ]
    text = "".join(p.read_text() for p in [*hydra_dir.iterdir(), multirun])
    for secret in ("cli-secret-1234", "env-secret-5678", "envset-secret-9999", "abcdef123"):
        assert secret not in text
    assert f"+hub.token={REDACTED}" in text and "OMP_NUM_THREADS: '1'" in text
    assert "+experiment=demo" in text
    assert redact_hydra_files(tmp_path) == []  # nothing left to mask: files not rewritten

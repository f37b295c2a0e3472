"""Sweeps that survive preemption, end to end in subprocesses, on the tiny model.

- chaos: a 4-job submitit_local sweep against a real `mlflow server` over HTTP; two jobs SIGKILLed at
  seeded random points (one right after its first checkpoint), the submitter SIGKILLed once, the
  server stopped and restarted once; the same command is resubmitted until the sweep ends. The
  result must be what an uninterrupted sweep gives: one FINISHED parent, one FINISHED child per job,
  no metric step twice, the same adapters (1e-5), four rows in jobs.csv, nothing left in a journal.
- a basic-launcher sweep whose submitter is SIGKILLed: the parent is marked KILLED (not left
  RUNNING); resubmitted, it ends with the same parent FINISHED and every child FINISHED, the
  completed job reused, the interrupted one resumed from its checkpoint.

Every wait is bounded; processes are started in their own process groups and killed at teardown.
"""

import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from browser import server_args, start_mlflow, stop
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.conftest import small_demo

pytestmark = pytest.mark.slow

SECRET = "hf_chaos-secret-value"
JOBS = ["lora=r8,r16", "train.lr=1e-3,2e-3"]  # 4 jobs
SMALL = small_demo({"train.max_steps": 6, "train.save_steps": 2, "dataset.max_eval_samples": 2})
SUBMISSION_TIMEOUT_S = 480  # one submission of the sweep, start to exit
EVENT_TIMEOUT_S = 240  # any one thing the test waits for
MAX_SUBMISSIONS = 5
SEED = 17


def wait_until(condition, what: str, timeout_s: float = EVENT_TIMEOUT_S, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def sweep_command(sweep_dir: Path, tracking_uri: str, *extra: str) -> list[str]:
    run = [sys.executable, "-m", "hwocr.run", "-m"]
    return [*run, *SMALL, *JOBS, f"tracking.uri={tracking_uri}", f"hydra.sweep.dir={sweep_dir}", *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("chaos_cache")
    environment = os.environ | {
        "HWOCR_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
        "PYTHONUNBUFFERED": "1",
        # one thread per job: four parallel jobs on two cores, and the same arithmetic as the reference
        "OMP_NUM_THREADS": "1",
    }
    environment.pop("HWOCR_PARENT_RUN_ID", None)
    return environment


class Submissions:
    """Every submitter this test starts, each in its own process group (killed at teardown)."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env, self.procs, self.sweep_dirs = work, env, [], set()

    def start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")  # noqa: SIM115 (closed at teardown)
        proc = subprocess.Popen(
            cmd, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log, proc.log_path = log, self.work / f"{name}.log"
        self.procs.append(proc)
        self.sweep_dirs.add(Path(next(a for a in cmd if a.startswith("hydra.sweep.dir=")).split("=", 1)[1]))
        return proc

    def run(self, cmd: list[str], name: str) -> subprocess.Popen:
        proc = self.start(cmd, name)
        try:
            proc.wait(timeout=SUBMISSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not end within {SUBMISSION_TIMEOUT_S} s:\n{self.tail(proc)}")
        return proc

    @staticmethod
    def tail(proc: subprocess.Popen, n: int = 4000) -> str:
        proc.log.flush()
        return proc.log_path.read_text()[-n:]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: orphaned submitit controllers and jobs
            proc.wait(timeout=30)
            proc.log.close()
        for sweep_dir in self.sweep_dirs:  # watchdogs run in their own sessions
            for submission in read_json(sweep_dir / "mlflow_parent.json").get("submissions", []):
                pid = submission.get("watchdog_pid")
                if alive(pid) and b"hwocr" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def submissions(tmp_path, env):
    subs = Submissions(tmp_path, env)
    yield subs
    subs.close()


def sweep_runs(client: MlflowClient, sweep_dir: Path):
    parent_id = read_json(sweep_dir / "mlflow_parent.json")["parent_run_id"]
    parent = client.get_run(parent_id)
    everything = client.search_runs([parent.info.experiment_id], max_results=1000)
    children = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent_id]
    return parent, children, everything


def duplicate_steps(client: MlflowClient, run) -> dict[str, list[int]]:
    """Metric key -> the steps logged more than once in `run`."""
    found = {}
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        twice = sorted({s for s in steps if steps.count(s) > 1})
        if twice:
            found[key] = twice
    return found


def adapter(job_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(job_dir / "adapter" / "adapter_model.safetensors")


def journal_losses(client: MlflowClient, sweep_dir: Path) -> tuple[int, list[str]]:
    """(entries journaled while MLflow was down, what of them the store lacks)."""
    from hwocr.tracking.sync import Journal

    n, lost = 0, []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        journal = Journal(job_dir)
        entries = journal.entries()
        n += len(entries)
        if journal.pending():
            lost.append(f"job {job_dir.name}: {journal.pending()} entries never uploaded")
        run_id = read_json(job_dir / "mlflow_run.json").get("run_id")
        for entry in entries:
            if entry["op"] != "metrics":
                continue
            for key, value in entry["metrics"].items():
                history = client.get_metric_history(run_id, key)
                if not any(m.step == entry["step"] and m.value == pytest.approx(value) for m in history):
                    lost.append(f"job {job_dir.name}: {key} at step {entry['step']}")
    return n, lost


# --- the chaos sweep --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> Path:
    """The same four jobs, uninterrupted (basic launcher, training only: evaluation draws no
    random numbers that training uses, and training is seeded on its own)."""
    work = tmp_path_factory.mktemp("chaos_reference")
    cmd = sweep_command(work / "sweep", f"sqlite:///{work / 'mlflow.db'}", "stages=[train]")
    with open(work / "reference.log", "w") as log:
        done = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, (work / "reference.log").read_text()[-4000:]
    return work / "sweep"


def test_chaos_sweep_ends_like_an_uninterrupted_one(reference, submissions, tmp_path, env):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    started = time.monotonic()
    rng = random.Random(SEED)
    server_root = tmp_path / "server"
    server, url, _ = start_mlflow(server_args(server_root), tmp_path / "server.log")
    port = int(url.rsplit(":", 1)[1])
    sweep_dir = tmp_path / "sweep"
    cmd = sweep_command(sweep_dir, url, "stages=[train,tuned_eval]", "hydra/launcher=local_processes")
    figures = {"job_kills": 0, "submitter_kills": 0, "server_restarts": 0, "submissions": 0}
    killed_jobs: list[str] = []

    def status(num: str) -> dict:
        return read_json(sweep_dir / num / "job_status.json")

    def kill_job(num: str) -> bool:
        pid = status(num).get("pid")
        if status(num).get("status") != "RUNNING" or not alive(pid):
            return False
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), f"job {num} (pid {pid}) to die")
        figures["job_kills"] += 1
        killed_jobs.append(num)
        print(f"SIGKILLed job {num} (pid {pid}) at {time.monotonic() - started:.1f} s")
        return True

    try:
        after_checkpoint, at_random = (str(n) for n in rng.sample(range(4), 2))
        first = submissions.start(cmd, "submission-1")
        figures["submissions"] += 1
        marker = sweep_dir / after_checkpoint / "checkpoints" / "checkpoint-2" / "hwocr_complete.json"
        wait_until(marker.is_file, f"job {after_checkpoint}'s first checkpoint")
        time.sleep(rng.uniform(0.0, 0.5))
        assert kill_job(after_checkpoint), f"job {after_checkpoint} ended before it could be killed"
        # a second job at a random point of its run: the jobs run side by side, so the others are
        # about as far; if the seeded choice has finished already, the next one still running
        time.sleep(rng.uniform(0.0, 3.0))
        for num in [at_random, *(str(n) for n in rng.sample(range(4), 4))]:
            if num not in killed_jobs and kill_job(num):
                break

        if first.poll() is None:  # the submitter dies; its submitit jobs go on as orphans
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            figures["submitter_kills"] += 1

        time.sleep(rng.uniform(0.0, 2.0))
        stop(server)  # the orphans lose MLflow mid-run: they keep going, journaling what they log
        time.sleep(rng.uniform(2.0, 5.0))
        server, _, _ = start_mlflow(server_args(server_root), tmp_path / "server.log", port=port)
        figures["server_restarts"] += 1

        while figures["submissions"] < MAX_SUBMISSIONS:
            figures["submissions"] += 1
            name = f"submission-{figures['submissions']}"
            if figures["job_kills"] < 2 or figures["submitter_kills"] < 1:
                proc = submissions.start(cmd, name)  # the faults not yet dealt: in this submission
                wait_until(
                    lambda proc=proc: proc.poll() is not None
                    or any(
                        status(str(n)).get("status") == "RUNNING" and alive(status(str(n)).get("pid"))
                        for n in range(4)
                    ),
                    "a job running in the resubmission",
                )  # fmt: skip
                if figures["job_kills"] < 2:
                    time.sleep(rng.uniform(0.0, 3.0))
                    for n in rng.sample(range(4), 4):
                        if kill_job(str(n)):
                            break
                if figures["submitter_kills"] < 1 and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    figures["submitter_kills"] += 1
                try:
                    proc.wait(timeout=SUBMISSION_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{name} did not end:\n{submissions.tail(proc)}")
            else:
                proc = submissions.run(cmd, name)
            print(f"{name}: exit {proc.returncode} at {time.monotonic() - started:.1f} s")
            if proc.returncode == 0:
                break
        assert proc.returncode == 0, f"the sweep never ended cleanly:\n{submissions.tail(proc)}"
        assert (
            figures["job_kills"] == 2 and figures["submitter_kills"] == 1 and figures["server_restarts"] == 1
        )

        client = MlflowClient(url)
        parent, children, everything = sweep_runs(client, sweep_dir)
        assert parent.info.status == "FINISHED"
        assert int(parent.data.tags["sweep.submissions"]) == figures["submissions"]
        assert sorted(r.data.tags["sweep.job_num"] for r in children) == ["0", "1", "2", "3"]
        assert [r.info.status for r in children] == ["FINISHED"] * 4
        assert len(everything) == 5, "a run outside the sweep, or a second run for a job"
        for run in children:
            assert duplicate_steps(client, run) == {}, run.data.tags["sweep.job_num"]
            assert "tuned/cer" in run.data.metrics

        for num in ("0", "1", "2", "3"):
            want, got = adapter(reference / num), adapter(sweep_dir / num)
            assert want.keys() == got.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)

        table = pd.read_csv(sweep_dir / "comparison" / "jobs.csv")
        assert len(table) == 4 and list(table["status"]) == ["FINISHED"] * 4
        assert table["tuned_cer"].notna().all()

        journaled, lost = journal_losses(client, sweep_dir)
        assert lost == []

        figures |= {
            "rows": len(table),
            "journal_entries": journaled,
            "wall_s": round(time.monotonic() - started),
        }
        print("chaos figures:", json.dumps(figures))
    finally:
        stop(server)


# --- the submitter SIGKILLed, basic launcher ---------------------------------------------------------


def test_a_sweep_resubmitted_after_its_submitter_was_killed_ends_finished(submissions, tmp_path, env):
    sweep_dir = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a secret passed to the jobs' environment through Hydra: written to .hydra/ only masked
    cmd = sweep_command(sweep_dir, uri, "stages=[train]", f"+hydra.job.env_set.HF_TOKEN={SECRET}")
    cmd.remove("train.lr=1e-3,2e-3")  # two jobs: lora=r8 completes, lora=r16 is killed mid-training
    first = submissions.start(cmd, "submission-1")
    wait_until(
        lambda: (
            read_json(sweep_dir / "0" / "job_status.json").get("status") == "COMPLETED"
            and (sweep_dir / "1" / "checkpoints" / "checkpoint-2" / "hwocr_complete.json").is_file()
        ),
        "job 0 to complete and job 1 to save its first checkpoint",
    )
    first.send_signal(signal.SIGKILL)  # the submitter is job 1's process too (basic launcher)
    assert first.wait(timeout=30) == -signal.SIGKILL

    client = MlflowClient(uri)
    parent_id = read_json(sweep_dir / "mlflow_parent.json")["parent_run_id"]
    # nothing of the submitter can run after SIGKILL: its watchdog ends the parent and the dead job
    wait_until(
        lambda: client.get_run(parent_id).info.status == "KILLED", "the parent to be marked KILLED", 60
    )
    parent, children, _ = sweep_runs(client, sweep_dir)
    by_num = {r.data.tags["sweep.job_num"]: r for r in children}
    assert by_num["0"].info.status == "FINISHED" and by_num["1"].info.status == "KILLED"
    assert parent.data.tags["sweep.interrupted"] == "true"
    job0_end = by_num["0"].info.end_time

    second = submissions.run(cmd, "submission-2")
    log = second.log_path.read_text()
    assert second.returncode == 0, log[-4000:]
    assert "job 0 already completed" in log  # reused, not run again
    assert "resuming from" in (sweep_dir / "1" / "run.log").read_text()

    parent, children, everything = sweep_runs(client, sweep_dir)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.submissions"] == "2"
    assert sorted((r.data.tags["sweep.job_num"], r.info.status) for r in children) == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
    ]
    assert len(everything) == 3
    assert next(r for r in children if r.data.tags["sweep.job_num"] == "0").info.end_time == job0_end
    for run in children:
        assert duplicate_steps(client, run) == {}
    table = pd.read_csv(sweep_dir / "comparison" / "jobs.csv")
    assert list(table["status"]) == ["FINISHED", "FINISHED"]

    assert SECRET.encode() not in (tmp_path / "mlflow.db").read_bytes()
    hydra_files = [*sweep_dir.glob("*/.hydra/*.yaml"), sweep_dir / "multirun.yaml"]
    assert len(hydra_files) == 7
    assert not [p for p in hydra_files if SECRET in p.read_text()]
    assert "HF_TOKEN: '***redacted***'" in (sweep_dir / "multirun.yaml").read_text() or (
        "HF_TOKEN: ***redacted***" in (sweep_dir / "multirun.yaml").read_text()
    )


# --- Optuna: a resubmitted study re-evaluates no completed trial ----------------------------------


def test_a_resubmitted_optuna_sweep_reuses_its_completed_trials(submissions, tmp_path, env):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        *sweep_command(sweep_dir, uri, "stages=[base_eval]", "dataset.max_eval_samples=1"),
        "hydra/sweeper=optuna_cer",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    for grid in JOBS:
        cmd.remove(grid)  # the search space is the preset's params
    first = submissions.run(cmd, "submission-1")
    assert first.returncode == 0, submissions.tail(first)
    proposed = [read_json(sweep_dir / str(n) / "job_status.json")["overrides"] for n in range(2)]

    second = submissions.run(cmd, "submission-2")
    log = second.log_path.read_text()
    assert second.returncode == 0, log[-4000:]
    # the seeded sampler proposes the same trials; both are reused, neither evaluated again
    assert "job 0 already completed" in log and "job 1 already completed" in log
    assert "base eval" not in log and "base: CER" not in log
    assert [read_json(sweep_dir / str(n) / "job_status.json")["overrides"] for n in range(2)] == proposed
    parent, children, everything = sweep_runs(MlflowClient(uri), sweep_dir)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.submissions"] == "2"
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"] and len(everything) == 3


# --- SIGTERM: the printed command resubmits the sweep ------------------------------------------------


def test_sigterm_stops_the_sweep_and_the_printed_command_finishes_it(submissions, tmp_path, env):
    sweep_dir = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = sweep_command(sweep_dir, uri, "stages=[train]", "train.save_steps=100")
    for grid in JOBS:
        cmd.remove(grid)
    cmd.append("lora=r8")  # a sweep of one job
    first = submissions.start(cmd, "submission-1")
    wait_until(lambda: "'loss'" in first.log_path.read_text(), "the first training step")
    first.send_signal(signal.SIGTERM)  # the job (in this process: basic launcher) saves and stops
    assert first.wait(timeout=EVENT_TIMEOUT_S) == 143, submissions.tail(first)
    log = first.log_path.read_text()
    assert "Resubmit the sweep to resume it" in log
    printed = log.split("Resubmit it to finish it", 1)[1].split("\n", 2)[1].strip()
    assert printed.startswith("python -m hwocr.run -m ") and f"hydra.sweep.dir={sweep_dir}" in printed
    assert read_json(sweep_dir / "0" / "job_status.json")["status"] == "INTERRUPTED"
    client = MlflowClient(uri)
    parent, children, _ = sweep_runs(client, sweep_dir)
    assert parent.info.status == "KILLED" and [r.info.status for r in children] == ["KILLED"]

    second = submissions.run([sys.executable, *shlex.split(printed)[1:]], "submission-2")
    assert second.returncode == 0, submissions.tail(second)
    assert "resuming from" in (sweep_dir / "0" / "run.log").read_text()
    parent, children, everything = sweep_runs(client, sweep_dir)
    assert parent.info.status == "FINISHED" and [r.info.status for r in children] == ["FINISHED"]
    assert len(everything) == 2 and duplicate_steps(client, children[0]) == {}

"""End to end, in subprocesses: a job killed (SIGKILL) or stopped (SIGTERM) mid-training resumes from
its newest complete checkpoint, into the same MLflow run, and ends exactly where an uninterrupted run
with the same seed ends. Tokens in the environment never reach the MLflow store."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from hwocr.train.checkpoints import checkpoint_problem
from tests.conftest import small_demo

pytestmark = pytest.mark.slow

SECRET = "hf_secret-value-in-env"
TIMEOUT = 300


def command(work: Path, name: str, save_steps: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hwocr.run",
        *small_demo({"train.max_steps": 8, "train.save_steps": save_steps, "dataset.max_train_samples": 16}),
        "stages=[train]",
        f"hydra.run.dir={work / name}",
        f"tracking.uri=sqlite:///{work / name}.db",
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("resume")
    env = os.environ | {
        "HWOCR_CACHE": str(work / "cache"),  # tiny model + synthetic data, built by the first run
        "HF_TOKEN": SECRET,
        "MLFLOW_TRACKING_TOKEN": SECRET + "-mlflow",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("HWOCR_PARENT_RUN_ID", None)
    return work, env


def run(cmd: list[str], work: Path, env: dict, log: str) -> subprocess.CompletedProcess:
    with open(work / log, "w") as out:
        done = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert done.returncode == 0, (work / log).read_text()[-3000:]
    return done


def start(cmd: list[str], work: Path, env: dict, log: str) -> subprocess.Popen:
    out = open(work / log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    state = json.loads((run_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def mlflow_curve(work: Path, name: str) -> tuple[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{work / name}.db")
    runs = client.search_runs([client.get_experiment_by_name("hwocr").experiment_id])
    assert len(runs) == 1, "the resumed job must continue its MLflow run, not start a second one"
    history = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert runs[0].info.status == "FINISHED"
    return runs[0].info.run_id, sorted(history.items())


def assert_same_curve(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)


def assert_same_result(work: Path, name: str) -> None:
    ref, got = work / "reference", work / name
    assert_same_curve(loss_curve(got), loss_curve(ref))
    assert [step for step, _ in loss_curve(got)] == list(range(1, 9))
    run_id, curve = mlflow_curve(work, name)
    assert_same_curve(curve, mlflow_curve(work, "reference")[1])
    assert json.loads((got / "mlflow_run.json").read_text())["run_id"] == run_id
    a = load_file(ref / "adapter" / "adapter_model.safetensors")
    b = load_file(got / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def reference(work) -> Path:
    work_dir, env = work
    run(command(work_dir, "reference"), work_dir, env, "reference.log")
    return work_dir / "reference"


def test_sigkill_then_rerun_resumes_from_the_newest_complete_checkpoint(work, reference):
    work_dir, env = work
    job = work_dir / "killed"
    proc = start(command(work_dir, "killed"), work_dir, env, "killed-1.log")
    first = job / "checkpoints" / "checkpoint-2" / "hwocr_complete.json"
    wait_for(first.is_file, proc, "the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # Newer checkpoints that a later resume must not trust: a truncated adapter, a missing state file.
    real = max(
        (p for p in (job / "checkpoints").glob("checkpoint-*") if checkpoint_problem(p) is None), key=str
    )
    for step, damage in ((7, "adapter_model.safetensors"), (9, "trainer_state.json")):
        fake = job / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(real, fake)
        if damage.endswith(".safetensors"):
            data = (fake / damage).read_bytes()
            (fake / damage).write_bytes(data[: len(data) // 2])
        else:
            (fake / damage).unlink()

    run(command(work_dir, "killed"), work_dir, env, "killed-2.log")
    log = (work_dir / "killed-2.log").read_text()
    step = int(real.name.split("-")[1])
    assert f"resuming from {real} (step {step})" in log
    assert "checkpoint-9 is incomplete or corrupt" in log and "checkpoint-7 is incomplete or corrupt" in log
    assert "continuing MLflow run" in log
    assert_same_result(work_dir, "killed")


def test_sigterm_saves_a_checkpoint_exits_nonzero_and_the_printed_command_resumes(work, reference):
    work_dir, env = work
    job = work_dir / "stopped"
    proc = start(command(work_dir, "stopped", save_steps=100), work_dir, env, "stopped-1.log")
    wait_for(lambda: "'loss'" in (work_dir / "stopped-1.log").read_text(), proc, "the first training step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 143
    log = (work_dir / "stopped-1.log").read_text()
    saved = sorted((job / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1 and checkpoint_problem(saved[0]) is None  # saved on SIGTERM, not on schedule
    step = int(saved[0].name.split("-")[1])
    assert 1 <= step < 8
    assert f"training stopped by a signal at step {step}; checkpoint saved to {saved[0]}" in log
    resume = log.split("Resume it", 1)[1].split("with:\n", 1)[1].splitlines()[0].strip()
    assert f"hydra.run.dir={job}" in resume
    client = MlflowClient(f"sqlite:///{work_dir / 'stopped'}.db")
    (stopped_run,) = client.search_runs([client.get_experiment_by_name("hwocr").experiment_id])
    assert stopped_run.info.status == "KILLED"

    argv = shlex.split(resume)
    assert argv[:3] == ["python", "-m", "hwocr.run"]
    run([sys.executable, *argv[1:]], work_dir, env, "stopped-2.log")
    assert f"(step {step})" in (work_dir / "stopped-2.log").read_text()
    assert_same_result(work_dir, "stopped")


def test_tokens_in_the_environment_never_reach_the_mlflow_store(work, reference):
    work_dir, _ = work
    stored = [(work_dir / "reference.db").read_bytes()]
    # hwocr keeps a sqlite store's artifacts beside it (tracking.local_artifact_location)
    stored += [p.read_bytes() for p in (work_dir / "mlartifacts").rglob("*") if p.is_file()]
    assert len(stored) > 5, "expected the run's artifacts under mlartifacts/ beside the store"
    assert not any(SECRET.encode() in blob for blob in stored)

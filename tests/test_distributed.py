"""Data-parallel runs on CPU (gloo): the same launcher the GPUs use, with the tiny model."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hwocr import distributed
from hwocr.distributed import Rank, interleave, shard
from tests.conftest import small_demo

ROOT = Path(__file__).resolve().parents[1]
# an odd number of test samples: the shards differ in size
SMALL = small_demo({"train.max_steps": 3, "dataset.max_train_samples": 24, "dataset.max_eval_samples": 7})


@pytest.mark.parametrize("n_items", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shard_then_interleave_restores_order(n_items, world_size):
    items = list(range(n_items))
    shards = [shard(items, Rank(rank=r, world_size=world_size)) for r in range(world_size)]
    assert sorted(sum(shards, [])) == items  # every item exactly once
    assert interleave(shards) == items


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    env = {**os.environ, "HWOCR_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwocr.run",
            *SMALL,
            f"hydra.run.dir={run_dir}",
            f"tracking.uri=sqlite:///{tmp_path / name}.db",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def _predictions(run_dir: Path, name: str) -> list[dict]:
    with open(run_dir / "eval" / name / "predictions.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _train_losses(run_dir: Path) -> list[float]:
    state = json.loads(
        sorted((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text()
    )
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _wait_for_stop_request(ready) -> None:
    """A stand-in worker: exits 7 on the stop request."""
    signal.signal(distributed.STOP_REQUEST, lambda *_: os._exit(7))
    ready.set()
    time.sleep(60)
    os._exit(1)


def test_a_sigterm_asks_the_workers_to_stop_and_a_second_is_elastics_shutdown():
    import multiprocessing

    from torch.distributed.elastic.multiprocessing import SignalException

    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_wait_for_stop_request, args=(ready,))
    with distributed._forwarding_sigterm():
        worker.start()
        assert ready.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)  # the first: forwarded as a stop request
        worker.join(30)
        assert worker.exitcode == 7
        with pytest.raises(SignalException) as raised:  # the second: what elastic's agent shuts down on
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert raised.value.sigval == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not distributed._shut_down_workers  # restored


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _run(tmp_path, "one", "hardware.per_device_batch=4", "train.save_steps=3")
    two = _run(tmp_path, "two", "hardware.num_devices=2", "hardware.per_device_batch=2", "train.save_steps=3")

    # sharded evaluation gathers every sample exactly once, in order, with the same text
    for stage in ("base", "tuned"):
        a, b = _predictions(one, stage), _predictions(two, stage)
        assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 7
        assert len({r["id"] for r in b}) == 7
    assert [r["prediction"] for r in _predictions(one, "base")] == [
        r["prediction"] for r in _predictions(two, "base")
    ]

    # same effective batch (1x4 vs 2x2) and the same data order: the same training losses
    losses_one, losses_two = _train_losses(one), _train_losses(two)
    assert len(losses_one) == len(losses_two) == 3
    assert losses_two == pytest.approx(losses_one, rel=1e-3)

    # only rank 0 talks to MLflow: one run, finished
    client = MlflowClient(f"sqlite:///{tmp_path / 'two'}.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["tuned/n_samples"] == 7


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_a_clear_error(tmp_path):
    process = _two_workers(tmp_path, subprocess.PIPE, f"tracking.uri=sqlite:///{tmp_path}/kill.db")
    try:
        deadline = time.monotonic() + 240
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(1)
            workers = _spawned_workers(process.pid)
        assert len(workers) == 2, "the two workers never started"
        time.sleep(8)  # let them get into the job
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = process.communicate(timeout=180)  # no hang: elastic stops the other rank
    finally:
        process.kill()
    assert process.returncode != 0
    assert "a worker process failed" in output and "SIGKILL" in output


def _two_workers(tmp_path: Path, stdout, *overrides: str) -> subprocess.Popen:
    """A 2-worker CPU job that trains for long enough to be interrupted (run dir tmp_path/run)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hwocr.run",
            *SMALL,
            "hardware.num_devices=2",
            "train.max_steps=400",
            "hardware.collective_timeout_s=60",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=ROOT,
        env={**os.environ, "HWOCR_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"},
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _spawned_workers(ancestor: int) -> list[int]:
    """Pids of the multiprocessing-spawned workers below `ancestor`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
            if b"multiprocessing.spawn" in cmdline and _descends(int(proc.name), ancestor):
                found.append(int(proc.name))
        except OSError:
            continue
    return sorted(found)


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if pid == ancestor:
            return True
    return False


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_a_checkpoint_and_prints_the_resume_hint(tmp_path):
    """A scheduler's SIGTERM reaches the launching process: the workers save one checkpoint at the
    same step and the job ends 143 with the command that resumes it, not "a worker process failed"."""
    run_dir = tmp_path / "run"
    log_path = tmp_path / "run.out"
    with open(log_path, "w") as out:
        process = _two_workers(
            tmp_path, out, "train.save_steps=1000", f"tracking.uri=sqlite:///{tmp_path}/stop.db"
        )
        try:
            deadline = time.monotonic() + 300
            while "'loss'" not in log_path.read_text():
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=180) == 143, log_path.read_text()[-3000:]
        finally:
            process.kill()
            process.wait(timeout=30)
    output = log_path.read_text()
    assert "a worker process failed" not in output
    saved = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1, saved  # one checkpoint, saved on the signal by both ranks at one step
    assert f"checkpoint saved to {saved[0]}" in output
    assert f"hydra.run.dir={run_dir}" in output.split("Resume it", 1)[1]
    client = MlflowClient(f"sqlite:///{tmp_path}/stop.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"

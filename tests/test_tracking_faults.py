"""MLflow faults: unreachable at start (fast, clear error or offline), failing mid-run (journal + sync)."""

import json
import logging
import shutil
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

import hwocr.run as run_module
from hwocr.config import TrackingConfig
from hwocr.errors import TrackingError
from hwocr.tracking import client as client_module
from hwocr.tracking import sync
from hwocr.tracking.client import Tracker


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def test_unreachable_store_fails_fast_before_any_data_or_model_work(tmp_path, monkeypatch, run_cli):
    def forbidden(*args, **kwargs):
        raise AssertionError("data or model work started before the tracking check")

    monkeypatch.setattr(run_module, "prepare_dataset", forbidden)
    monkeypatch.setattr(run_module, "load_model", forbidden)
    started = time.perf_counter()
    code = run_cli(f"tracking.uri={closed_port_uri()}", f"hydra.run.dir={tmp_path / 'job'}")
    elapsed = time.perf_counter() - started
    assert code == 2
    log = (tmp_path / "job" / "run.log").read_text()
    assert "is unreachable" in log and "tracking.required=false" in log
    assert elapsed < 10, f"the check took {elapsed:.1f} s (mlflow's default retries take minutes)"


def test_not_required_store_keeps_everything_locally_then_syncs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # sqlite artifacts go to ./mlruns
    run_dir = tmp_path / "job"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "metrics.json").write_text('{"cer": 0.1}')
    tracker = Tracker(TrackingConfig(uri=closed_port_uri(), required=False), tmp_path, run_dir=run_dir)
    with caplog.at_level(logging.WARNING, logger="hwocr.tracking"):
        tracker.check_reachable()
    assert tracker.offline and "python -m hwocr.sync" in caplog.text
    with tracker:
        tracker.start("job", {"model": "tiny"})
        tracker.log_params({"train.lr": 0.001})
        tracker.log_metrics({"train/loss": 2.0}, step=1)
        tracker.log_artifact(run_dir / "eval", "eval")
    assert tracker.pending_sync_command() == f"python -m hwocr.sync {run_dir.resolve()}"
    ops = [e["op"] for e in sync.Journal(run_dir).entries()]
    assert ops == ["start", "params", "metrics", "artifact", "end"]

    moved = tmp_path / "downloaded-job"  # e.g. a Kaggle job dir synced from a laptop
    shutil.move(run_dir, moved)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    assert sync.main([str(moved), "--uri", store]) == 0
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("hwocr").experiment_id])
    assert run.data.params == {"train.lr": "0.001"} and run.data.metrics == {"train/loss": 2.0}
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "tiny"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == ["eval/metrics.json"]
    assert json.loads((moved / "mlflow_run.json").read_text())["run_id"] == run.info.run_id


def test_store_failing_mid_run_then_sync_completes_the_same_run(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    (run_dir / "predictions.csv").write_text("id\n1\n")
    tracker = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=run_dir)
    tracker.check_reachable()
    with tracker:
        run_id = tracker.start("job", {})
        tracker.log_params({"train.seed": 1})
        for step in (1, 2):
            tracker.log_metrics({"train/loss": 10.0 - step}, step=step)

        def down(*args, **kwargs):
            raise ConnectionError("the tracking server went away")

        for name in ("log_batch", "log_artifact", "log_artifacts", "set_terminated", "set_tag"):
            monkeypatch.setattr(tracker.client, name, down)
        # still down when the run ends: the tracker's last try to upload finds it down too
        monkeypatch.setattr(client_module, "upload_if_reachable", lambda run_dir: 0)
        with caplog.at_level(logging.WARNING, logger="hwocr.tracking"):
            for step in (3, 4, 5):  # training goes on
                tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
            tracker.log_artifact(run_dir / "predictions.csv", "eval")
    assert caplog.text.count("going on without MLflow") == 1
    assert f"python -m hwocr.sync {run_dir.resolve()}" in caplog.text
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert client.get_run(run_id).info.status == "RUNNING"

    assert sync.main([str(run_dir)]) == 0  # the store is back
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 10.0 - s) for s in range(1, 6)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/predictions.csv"]
    assert sync.main([str(run_dir)]) == 0  # idempotent: nothing uploaded twice
    assert len(client.get_metric_history(run_id, "train/loss")) == 5
    assert len(client.search_runs([client.get_experiment_by_name("hwocr").experiment_id])) == 1


def test_a_rerun_of_the_job_uploads_the_pending_journal_and_continues_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "job"
    first = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=run_dir)
    first.check_reachable()
    run_id = first.start("job", {})
    monkeypatch.setattr(first.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    first.log_metrics({"train/loss": 1.0}, step=7)  # journaled; then the process is killed
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    second = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=run_dir)
    second.check_reachable()
    assert second.start("job", {}) == run_id and second.resumed
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [7]
    assert second.pending_sync_command() is None


def test_tracker_without_a_run_dir_still_raises(tmp_path):
    tracker = Tracker(TrackingConfig(uri=closed_port_uri(), required=False), tmp_path)
    with pytest.raises(TrackingError, match="unreachable"):
        tracker.check_reachable()


def test_long_batches_reach_the_store_live_and_through_the_journal(tmp_path, monkeypatch):
    """More params and metrics than one MLflow request takes (100 params, 1000 metrics): mlflow's
    log_batch splits them, both when the tracker logs live and when a journal is replayed."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {f"p{i:03d}": i for i in range(250)}
    metrics = {f"m{i:04d}": float(i) for i in range(1500)}
    live = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=tmp_path / "live")
    with live:
        live.start("live", {})
        live.log_params(params)
        live.log_metrics(metrics, step=3)
        live.set_tags({f"t{i:03d}": str(i) for i in range(150)})
    offline = Tracker(
        TrackingConfig(uri=closed_port_uri(), required=False), tmp_path, run_dir=tmp_path / "off"
    )
    offline.check_reachable()
    with offline:
        offline.start("offline", {})
        offline.log_params(params)
        offline.log_metrics(metrics, step=3)
    replayed = sync.replay(tmp_path / "off", uri=store)
    client = MlflowClient(store)
    for run_id in (live.run_id, replayed):
        data = client.get_run(run_id).data
        assert data.params == {k: str(v) for k, v in params.items()}
        assert data.metrics == metrics
    assert len(client.get_run(live.run_id).data.tags) >= 150


# Each process imports MLflow, says it is ready, waits for the go, then opens the store as a run does.
OPEN_STORE = """
import sys, time
from pathlib import Path
from hwocr.tracking.store import open_client
folder, index = Path(sys.argv[1]), sys.argv[2]
(folder / f"ready{index}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
open_client(f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)
"""


@pytest.mark.slow  # four processes importing MLflow: seconds each on two cores
def test_runs_started_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    """A fresh sqlite store is created and migrated by its first client; processes opening it at the
    same moment (two runs, a sweep's parallel jobs) must not collide in that migration."""
    import subprocess
    import sys

    n = 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, str(tmp_path), str(i)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready*"))) < n and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=120)[1] for p in processes]
    failed = [
        [line for line in err.splitlines() if "Error" in line][-1:]
        for p, err in zip(processes, errors, strict=True)
        if p.returncode
    ]
    assert not failed, failed

"""`+experiment=demo` end to end (small overrides): every file of the run layout and the MLflow run."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from spec import METRIC_KEYS, PREDICTION_COLUMNS

from hwocr.config import register_schema
from tests.conftest import built_once, run_hwocr, small_demo

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = {
    "train.max_steps": 6,
    "train.save_steps": 3,
    "train.eval_steps": 3,
    "dataset.max_train_samples": 24,
    "dataset.max_eval_samples": 6,
}
register_schema()


def run_the_demo(folder: Path) -> None:
    """`python -m hwocr.run` with the small demo into folder/run, tracked in folder/mlflow.db; its
    output in folder/stdout.txt."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwocr.run",
            *small_demo(DEMO_RUN),
            f"hydra.run.dir={folder / 'run'}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        ],
        cwd=ROOT,
        env={**os.environ, "HWOCR_CACHE": str(folder / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (folder / "stdout.txt").write_text(result.stdout, encoding="utf-8")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The run's directory, its MLflow database and what it printed; built once per session,
    whichever workers run this module's tests: they only read it."""
    folder = built_once(tmp_path_factory, "demo", run_the_demo)
    return folder / "run", folder / "mlflow.db", (folder / "stdout.txt").read_text(encoding="utf-8")


def test_run_layout(demo_run):
    run_dir, _, _ = demo_run
    for path in [
        ".hydra/config.yaml",
        "resolved_config.yaml",
        "data_report.json",
        "eval/base/metrics.json",
        "eval/base/predictions.csv",
        "eval/tuned/metrics.json",
        "eval/tuned/predictions.csv",
        "eval/comparison.json",
        "plots/cer_distribution.png",
        "plots/cer_scatter.png",
        "plots/error_types.png",
        "plots/cer_by_writer.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/checkpoint-6/trainer_state.json",
        "eval/gallery.html",
        "eval/base/predictions_table.json",
        "eval/tuned/predictions_table.json",
    ]:
        assert (run_dir / path).is_file(), path
    # the demo trains the output head beside the adapters (conf/experiment/demo.yaml), saved with them
    assert json.loads((run_dir / "adapter/adapter_config.json").read_text())["modules_to_save"] == ["lm_head"]


def test_the_demo_ends_by_saying_what_it_checked_and_learned(demo_run):
    """The closing summary is true of the run: each stage's files checked, the loss figures measured,
    and the test CER beside the best image-blind guess."""
    run_dir, _, stdout = demo_run
    summary = stdout[stdout.index("The stages took") :]
    checked = [line.split() for line in summary.splitlines() if line.startswith("  ") and " ok " in line]
    assert [words[0] for words in checked] == ["data", "base", "training", "tuned", "report"]
    assert "MISSING" not in summary and "Results" not in summary
    history = json.loads((run_dir / "checkpoints/checkpoint-6/trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert (
        f"Training loss (nats per label token): {losses[0]:.2f} at step 1, {losses[-1]:.2f} at step 6."
        in summary
    )
    assert "uniform guess over the 1,024-token vocabulary scores 6.93" in summary
    # the test CER is weighed against the best guess that ignores the image, measured on this run
    tuned = json.loads((run_dir / "eval/tuned/metrics.json").read_text())
    assert f"tuned {tuned['cer']:.2%}" in summary and "The best guess that ignores the image" in summary
    assert "+experiment=lines dataset.root=" in summary


def test_metrics_and_predictions(demo_run):
    run_dir, _, _ = demo_run
    for stage in ("base", "tuned"):
        metrics = json.loads((run_dir / "eval" / stage / "metrics.json").read_text())
        assert metrics.keys() >= METRIC_KEYS
        assert metrics["n_samples"] == 6 and metrics["n_failed"] == 0
        assert metrics["images_per_s"] > 0
        with open(run_dir / "eval" / stage / "predictions.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert tuple(rows[0].keys()) == PREDICTION_COLUMNS and len(rows) == 6
        edits = sum(int(r["substitutions"]) + int(r["deletions"]) + int(r["insertions"]) for r in rows)
        assert metrics["cer"] == pytest.approx(edits / sum(len(r["reference"]) for r in rows))
    comparison = json.loads((run_dir / "eval" / "comparison.json").read_text())
    assert comparison["paired"]["n_samples"] == 6
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["summary"]["n_test"] == 6 and report["summary"]["skipped_total"] == 0


def test_mlflow_run(demo_run):
    run_dir, db, stdout = demo_run
    client = MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6" and run.data.params["model.name"] == "tiny"
    assert run.data.tags["experiment"] == "demo" and run.data.tags["model"] == "tiny"
    for key in ("base/cer", "tuned/cer", "delta/cer", "tuned/perfect_match_rate", "data/n_train"):
        assert key in run.data.metrics, key
    assert run.data.metrics["delta/cer"] == pytest.approx(
        run.data.metrics["tuned/cer"] - run.data.metrics["base/cer"]
    )
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses][:3] == [1, 2, 3]
    assert client.get_metric_history(run.info.run_id, "val/loss")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "eval", "plots", "resolved_config.yaml", "data_report.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval/tuned")} >= {
        "eval/tuned/metrics.json",
        "eval/tuned/predictions.csv",
        "eval/tuned/predictions_table.json",
    }
    assert "eval/gallery.html" in {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    # both prediction tables are listed as tables, so the MLflow UI offers them in its table views
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": f"eval/{name}/predictions_table.json", "type": "table"} for name in ("base", "tuned")
    ]
    # the run ends by saying where its results are and how to see them
    assert (
        str(run_dir) in stdout and f"mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///{db}" in stdout
    )


def test_reevaluate_an_adapter_only(demo_run, tmp_path, monkeypatch):
    run_dir, _, _ = demo_run
    monkeypatch.setenv("HWOCR_CACHE", str(run_dir.parent / "cache"))
    again = run_hwocr(
        tmp_path / "again",
        *small_demo(DEMO_RUN),  # the same test set
        "stages=[tuned_eval]",
        f"eval.adapter={run_dir / 'adapter'}",
        tracking=tmp_path / "db",
    ).check()
    before = (run_dir / "eval" / "tuned" / "predictions.csv").read_text()
    assert again.text("eval/tuned/predictions.csv") == before
    gallery = again.text("eval/gallery.html")
    assert "<th>tuned prediction</th>" in gallery and "base prediction" not in gallery
    assert not (tmp_path / "again" / "checkpoints").exists()


def test_real_presets_fail_fast_without_gpu_or_data(tmp_path, capsys):
    run = run_hwocr(
        tmp_path / "run",
        "+experiment=lines",
        f"dataset.root={tmp_path / 'missing'}",
        tracking=tmp_path / "db",
    )
    output = "".join(capsys.readouterr()) + run.log()
    assert run.code == 2
    assert "Traceback" not in output
    # lines asks for hardware=t4x2: no GPU here (CI), or too few on a one-GPU machine
    assert ("asks for 2 GPUs" if torch.cuda.is_available() else "CUDA GPU") in output
    assert str(tmp_path / "missing") in output
    assert "+experiment=demo" in output

"""The demo end to end through every dataset format besides UIT-HWDB: `python -m hwocr.run +experiment=demo
dataset=manifest|hf dataset.root=...` on a small dataset with hostile rows, which the run counts in
data_report.json and MLflow instead of crashing on them."""

from pathlib import Path

import pytest
from conftest import run_hwocr
from dataset_formats import FORMATS, expected_skips, good_rows, hostile_rows, kind, write_dataset
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One HWOCR_CACHE for the module: the tiny model is built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_demo_runs_on_each_format(fmt, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HWOCR_CACHE", str(cache))
    root = write_dataset(tmp_path / "ds", good_rows() + hostile_rows(fmt), fmt)
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    run = run_hwocr(
        run_dir,
        "+experiment=demo",
        f"dataset={kind(fmt)}",
        f"dataset.root={root}",
        "train.max_steps=2",
        "train.save_steps=2",
        "train.eval_steps=2",
        "dataset.max_eval_samples=2",
        "eval.bootstrap_samples=50",
        tracking=db,
    ).check()

    report = run.json("data_report.json")
    skipped = {
        k.removeprefix("skipped/"): v for k, v in report["summary"].items() if k.startswith("skipped/")
    }
    assert skipped == expected_skips(fmt)
    assert (
        report["splits"]["val"].startswith("writer-disjoint")
        and report["splits"]["test"] == "given by the data"
    )
    assert (report["summary"]["n_train"], report["summary"]["n_val"], report["summary"]["n_test"]) == (
        6,
        2,
        2,
    )

    rows = run.rows("eval/tuned/predictions.csv")
    assert len(rows) == 2 and all(r["writer"] == "w3" for r in rows)
    images_under = (
        root.parent if kind(fmt) == "manifest" else root if fmt == "imagefolder" else cache / "images"
    )
    assert all(Path(r["image"]).is_relative_to(images_under) for r in rows)

    client = MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data/skipped_total"] == sum(expected_skips(fmt).values())
    assert all(run.data.metrics[f"data/skipped/{reason}"] == n for reason, n in expected_skips(fmt).items())
    assert run.data.tags["data.val"] == report["splits"]["val"]

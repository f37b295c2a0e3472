"""experiments/kaggle_uit_hwdb.ipynb executed headless (papermill) with the demo preset and tiny sizes on
the CPU: every cell runs, the results show inline, the archive unpacks into an MLflow store that
`mlflow ui` can read elsewhere, and without a dataset the notebook stops with a clear message."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hwocr.config import SynthConfig
from hwocr.data import generate_synth_dataset

papermill = pytest.importorskip("papermill", reason="pip install -e .[dev] (papermill, ipykernel)")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "kaggle_uit_hwdb.ipynb"
TINY = [
    "train.max_steps=4",
    "train.save_steps=2",
    "train.eval_steps=2",
    "dataset.max_train_samples=12",
    "dataset.max_eval_samples=6",
    "eval.bootstrap_samples=100",
]
pytestmark = pytest.mark.slow


def execute(tmp_path: Path, input_root: Path, monkeypatch) -> tuple[dict, Path]:
    monkeypatch.setenv("HWOCR_CACHE", str(tmp_path / "cache"))  # the tiny checkpoint, built on first use
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    work = tmp_path / "working"
    work.mkdir(exist_ok=True)
    out = tmp_path / "executed.ipynb"
    parameters = {
        "SOURCE": "dir",  # a copy of this checkout, as from a Kaggle dataset holding the repository
        "REPO_DIR": str(ROOT),
        "INPUT_ROOT": str(input_root),
        "WORK_DIR": str(work),
        "PRESET": "demo",
        "QUICK_CHECK_LINES": 4,
        "OVERRIDES": TINY,
    }
    try:
        papermill.execute_notebook(
            NOTEBOOK, out, parameters=parameters, kernel_name="python3", cwd=str(tmp_path), progress_bar=False
        )
    finally:
        print(f"executed notebook: {out}")
    import nbformat

    return nbformat.read(out, as_version=4), work


def outputs_of(cell) -> str:
    texts = []
    for output in cell.get("outputs", []):
        texts.append(output.get("text", ""))
        for kind in ("text/plain", "text/html", "text/markdown"):
            texts.append(output.get("data", {}).get(kind, ""))
    return "".join(texts)


def test_the_notebook_runs_end_to_end_on_the_demo_preset(tmp_path, monkeypatch):
    kaggle_input = tmp_path / "input"
    generate_synth_dataset(
        kaggle_input / "uit-hwdb" / "UIT_HWDB_line",
        SynthConfig(n_train_writers=4, n_test_writers=2, lines_per_writer=4),
    )
    notebook, work = execute(tmp_path, kaggle_input, monkeypatch)

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "\n".join(outputs_of(c) for c in code)
    assert "hwocr is already installed here" in text  # the test's environment has it; Kaggle's does not
    assert f"dataset: {kaggle_input / 'uit-hwdb' / 'UIT_HWDB_line'} (8 labelled test images)" in text
    assert "Quick check passed: 4 test lines, 0 failed" in text
    assert "The best guess that ignores the image" in text  # the closing summary, streamed from the job
    assert "corpus CER" in text and "tone-mark errors" in text  # the metrics table, base and tuned
    assert "95% bootstrap CI" in text
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the figures
    assert 'srcdoc="&lt;!DOCTYPE html&gt;' in text and "Error gallery: base vs tuned" in text

    [archive] = work.glob("hwocr_demo_*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert "relocate_mlflow.py" in names and "outputs/mlflow.db" in names
        assert any(n.endswith("/eval/gallery.html") for n in names)
        assert not any("/checkpoints" in n for n in names)
        unpacked = tmp_path / "elsewhere"
        tar.extractall(unpacked, filter="data")
    # somewhere else (the user's machine), the store reads its artifacts from the unpacked folder
    subprocess.run([sys.executable, "relocate_mlflow.py"], cwd=unpacked, check=True, timeout=60)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{unpacked / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    job = next(r for r in runs if "quick_check" not in r.data.tags["run_dir"])
    assert job.info.artifact_uri.startswith((unpacked / "outputs" / "mlartifacts").as_uri())
    page = client.download_artifacts(job.info.run_id, "eval/gallery.html", str(tmp_path / "download"))
    assert "Error gallery" in Path(page).read_text(encoding="utf-8")


def test_without_the_dataset_the_notebook_stops_with_a_clear_message(tmp_path, monkeypatch):
    empty = tmp_path / "input"
    (empty / "some-other-dataset").mkdir(parents=True)
    with pytest.raises(papermill.PapermillExecutionError) as stop:
        execute(tmp_path, empty, monkeypatch)
    assert "No UIT_HWDB_line/ folder holding train_data/ and test_data/" in str(stop.value)
    assert "attached there: some-other-dataset" in str(stop.value)
    assert os.path.exists(tmp_path / "executed.ipynb")

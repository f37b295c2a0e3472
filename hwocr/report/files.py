"""metrics.json / predictions.csv / comparison.json writers (atomic: hwocr/io.py)."""

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from hwocr.io import write_atomic, write_json
from hwocr.metrics import (
    Prediction,
    by_length_bucket,
    by_writer,
    cer_by_group,
    confusion_pairs,
    corpus_metrics,
    match_by_id,
    paired_comparison,
    score_all,
)
from hwocr.metrics.vietnamese import vietnamese_counts
from hwocr.report.plots import plot_comparison
from hwocr.text import normalize_text

PREDICTION_COLUMNS = (
    "id",
    "writer",
    "image",
    "reference",
    "prediction",
    "cer",
    "substitutions",
    "deletions",
    "insertions",
    "error",
    "guarded",  # the repetition guard changed a token of this transcription
)
TOP_CONFUSIONS = 30
PREDICTIONS_TABLE = "predictions_table.json"


def prediction_rows(preds: list[Prediction]) -> list[dict]:
    """One dict per prediction with PREDICTION_COLUMNS: the sample, its prediction and its S/D/I."""
    return [
        {
            "id": pred.id,
            "writer": pred.writer,
            "image": pred.image,
            "reference": pred.reference,
            "prediction": pred.prediction,
            "cer": sample.cer,
            "substitutions": sample.substitutions,
            "deletions": sample.deletions,
            "insertions": sample.insertions,
            "error": pred.error,
            "guarded": pred.guarded,
        }
        for pred, sample in zip(preds, score_all(preds), strict=True)
    ]


def predictions_csv(preds: list[Prediction]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PREDICTION_COLUMNS)
    writer.writeheader()
    writer.writerows(prediction_rows(preds))
    return buffer.getvalue()


def write_table(path: Path, preds: list[Prediction]) -> Path:
    """The predictions as a table for MLflow's UI to sort and filter, in mlflow.log_table's JSON
    layout (pandas "split"): predictions.csv's columns plus per-sample tone and vowel-mark errors."""
    table = pd.DataFrame(prediction_rows(preds))
    marks = [
        vietnamese_counts([normalize_text(ref)], [normalize_text(hyp)])
        for ref, hyp in zip(table["reference"], table["prediction"], strict=True)
    ]
    table["tone_errors"] = [m.tone_errors for m in marks]
    table["diacritic_errors"] = [m.diacritic_errors for m in marks]
    # what a reader scans first comes first: MLflow's table view is narrow
    first = ["id", "writer", "cer", "reference", "prediction"]
    table = table[first + [c for c in table.columns if c not in first]]
    return write_atomic(path, table.to_json(orient="split", index=False, force_ascii=False))


def write_eval(out_dir: Path, preds: list[Prediction], extra: dict | None = None) -> dict:
    """Write metrics.json (corpus_metrics() keys + `extra`, e.g. images_per_s), predictions.csv and
    predictions_table.json (the same rows for MLflow's table view)."""
    metrics = corpus_metrics(preds) | (extra or {})
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    write_atomic(out_dir / "predictions.csv", predictions_csv(preds))
    write_table(out_dir / PREDICTIONS_TABLE, preds)
    return metrics


def read_predictions(csv_path: Path) -> list[Prediction]:
    """Predictions back from a predictions.csv; score columns are dropped (they are recomputed)."""
    with open(csv_path, encoding="utf-8", newline="") as file:
        return [
            Prediction(
                id=row["id"],
                writer=row["writer"],
                image=row["image"],
                reference=row["reference"],
                prediction=row["prediction"],
                error=row["error"],
                guarded=row.get("guarded") == "True",  # absent from files written before the guard
            )
            for row in csv.DictReader(file)
        ]


def _confusions(preds: list[Prediction]) -> list[dict]:
    return [{"ref": r, "pred": p, "count": n} for r, p, n in confusion_pairs(preds, top=TOP_CONFUSIONS)]


def write_comparison(
    eval_dir: Path,
    plots_dir: Path,
    base: list[Prediction],
    tuned: list[Prediction],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Write comparison.json (paired test, both sides' metrics, confusions, per-writer and per-length
    CER) and the four comparison figures; returns the dict, figure paths included."""
    # Raises on mismatched sample ids before anything is computed or drawn.
    base, tuned = match_by_id(base, tuned)
    runs = {"base": base, "tuned": tuned}
    metrics = {name: corpus_metrics(preds) for name, preds in runs.items()}
    by_writer_rows = {name: cer_by_group(preds, by_writer) for name, preds in runs.items()}
    figures = plot_comparison(
        Path(plots_dir),
        np.array([s.cer for s in score_all(base)]),
        np.array([s.cer for s in score_all(tuned)]),
        metrics,
        by_writer_rows,
    )
    comparison = {
        "paired": paired_comparison(base, tuned, n_boot=n_boot, seed=seed),
        "metrics": metrics,
        "top_confusions": {name: _confusions(preds) for name, preds in runs.items()},
        "cer_by_writer": by_writer_rows,
        "cer_by_length": {name: cer_by_group(preds, by_length_bucket) for name, preds in runs.items()},
        "figures": [str(path) for path in figures],
    }
    write_json(Path(eval_dir) / "comparison.json", comparison)
    return comparison

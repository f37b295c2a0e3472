"""Evaluation reports: metrics.json, predictions.csv, comparison.json, seaborn figures, the error gallery."""

from hwocr.report.files import PREDICTIONS_TABLE, read_predictions, write_comparison, write_eval
from hwocr.report.gallery import write_gallery
from hwocr.report.plots import plot_comparison, plot_single_eval

__all__ = [
    "PREDICTIONS_TABLE",
    "plot_comparison",
    "plot_single_eval",
    "read_predictions",
    "write_comparison",
    "write_eval",
    "write_gallery",
]

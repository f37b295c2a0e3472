"""Evaluation reports: metrics.json, predictions.csv, comparison.json and seaborn figures."""

from hwocr.report.files import read_predictions, write_comparison, write_eval
from hwocr.report.plots import plot_comparison, plot_single_eval

__all__ = [
    "plot_comparison",
    "plot_single_eval",
    "read_predictions",
    "write_comparison",
    "write_eval",
]

"""Seaborn figures for one evaluation or a base-vs-tuned comparison.

Figures are built with matplotlib's object API (`Figure`, rendered by the Agg canvas on savefig), not
pyplot: no global backend switch, no figure registry to leak memory in long runs, safe on headless GPU
nodes. Seaborn styles are applied through context managers so global rcParams are left untouched.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from hwocr.metrics import Prediction, corpus_metrics, score_all

DPI = 120
# Looping generations can exceed 100% CER; clip so one runaway sample does not squash the axes.
CER_CLIP_PCT = 150.0
MAX_WRITERS = 60
_STATUS_COLORS = {"improved": "#2a9d55", "worse": "#d62728", "unchanged": "#8c8c8c"}
_ERROR_RATES = {
    "substitution_rate": "Substitution",
    "deletion_rate": "Deletion",
    "insertion_rate": "Insertion",
    "vi_base_error_rate": "VI base letter",
    "vi_tone_error_rate": "VI tone mark",
    "vi_diacritic_error_rate": "VI vowel mark / đ",
}
_CER_VARIANTS = {
    "cer": "CER",
    "vi_cer_no_tone": "CER ignoring\ntone marks",
    "vi_cer_no_diacritics": "CER ignoring\nall marks",
}


@contextmanager
def figure_style() -> Iterator[None]:
    """whitegrid axes and notebook sizes, for every hwocr figure (global rcParams untouched)."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        yield


def run_palette(names: list[str]) -> dict[str, tuple]:
    """Stable colours: base orange, tuned blue, anything else from the rest of the palette."""
    colors = sns.color_palette("colorblind")
    known = {"base": colors[1], "tuned": colors[0]}
    others = iter(colors[2:])
    return {name: known.get(name) or next(others) for name in names}


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _pct(values) -> np.ndarray:
    return np.minimum(np.asarray(values, dtype=float) * 100, CER_CLIP_PCT)


def plot_cer_distribution(path: Path, cers: dict[str, np.ndarray]) -> Path:
    """Histogram of per-sample CER per run, with mean (solid) and median (dashed) lines."""
    palette = run_palette(list(cers))
    data = pd.DataFrame(
        {
            "run": np.repeat(list(cers), [len(v) for v in cers.values()]),
            "cer": _pct(np.concatenate(list(cers.values()))),
        }
    )
    top = max(5.0, float(np.ceil(data["cer"].max() / 5) * 5))
    with figure_style():
        fig = Figure(figsize=(9, 5))
        ax = fig.subplots()
        sns.histplot(
            data, x="cer", hue="run", palette=palette, bins=np.linspace(0, top, 41), stat="percent",
            common_norm=False, element="step", alpha=0.25, legend=False, ax=ax,
        )  # fmt: skip
        handles = []
        for name, values in cers.items():
            mean, median = float(np.mean(values)) * 100, float(np.median(values)) * 100
            ax.axvline(min(mean, CER_CLIP_PCT), color=palette[name], linewidth=2)
            ax.axvline(min(median, CER_CLIP_PCT), color=palette[name], linewidth=2, linestyle="--")
            handles.append(Patch(color=palette[name], alpha=0.6, label=f"{name} (n={len(values):,})"))
            handles.append(Line2D([], [], color=palette[name], lw=2, label=f"{name} mean {mean:.1f}%"))
            handles.append(
                Line2D([], [], color=palette[name], lw=2, ls="--", label=f"{name} median {median:.1f}%")
            )
        ax.legend(handles=handles, loc="upper right", fontsize="small")
        ax.set(xlim=(0, top), xlabel="Per-sample CER", ylabel="Share of samples")
        ax.xaxis.set_major_formatter(PercentFormatter(100))
        ax.yaxis.set_major_formatter(PercentFormatter(100))
        clipped = f" (values above {CER_CLIP_PCT:.0f}% clipped)" if top >= CER_CLIP_PCT else ""
        ax.set_title(f"Per-sample CER distribution{clipped}")
        return save_figure(fig, path)


def plot_cer_scatter(path: Path, base_cer: np.ndarray, tuned_cer: np.ndarray) -> Path:
    """Per-sample base CER (x) vs tuned CER (y); points below the diagonal improved."""
    status = np.select([tuned_cer < base_cer, tuned_cer > base_cer], ["improved", "worse"], "unchanged")
    n = len(status)
    labels = {s: f"{s} ({np.sum(status == s):,} · {np.mean(status == s):.1%})" for s in _STATUS_COLORS}
    data = pd.DataFrame(
        {"base": _pct(base_cer), "tuned": _pct(tuned_cer), "status": [labels[s] for s in status]}
    )
    top = max(5.0, float(np.ceil(max(data["base"].max(), data["tuned"].max()) / 5) * 5))
    with figure_style():
        fig = Figure(figsize=(7, 7))
        ax = fig.subplots()
        ax.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--", label="y = x (no change)")
        sns.scatterplot(
            data, x="base", y="tuned", hue="status", hue_order=list(labels.values()),
            palette=dict(zip(labels.values(), _STATUS_COLORS.values(), strict=True)),
            s=18, alpha=0.5, linewidth=0, ax=ax,
        )  # fmt: skip
        ax.set(
            xlim=(0, top),
            ylim=(0, top),
            aspect="equal",
            xlabel="Base per-sample CER",
            ylabel="Tuned per-sample CER",
        )
        ax.xaxis.set_major_formatter(PercentFormatter(100))
        ax.yaxis.set_major_formatter(PercentFormatter(100))
        ax.legend(title=None, loc="upper left", fontsize="small")
        clipped = f", values above {CER_CLIP_PCT:.0f}% clipped" if top >= CER_CLIP_PCT else ""
        ax.set_title(f"Per-sample CER, base vs tuned (n={n:,}{clipped})")
        return save_figure(fig, path)


def _bar_panel(ax, metrics: dict[str, dict], keys: dict[str, str], title: str, palette: dict) -> None:
    data = pd.DataFrame(
        [
            {"metric": label, "run": run, "value": m[key] * 100}
            for run, m in metrics.items()
            for key, label in keys.items()
        ]
    )
    sns.barplot(data, x="metric", y="value", hue="run", palette=palette, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f%%", fontsize="x-small", padding=2)
    ax.set(xlabel=None, ylabel="Share of reference characters", title=title)
    ax.set_ylim(0, data["value"].max() * 1.15 or 1)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.tick_params(axis="x", labelsize="small")
    ax.legend(title=None, fontsize="small")


def plot_error_types(path: Path, metrics: dict[str, dict]) -> Path:
    """Grouped bars: S/D/I and Vietnamese error-kind rates, and CER with/without marks, per run."""
    palette = run_palette(list(metrics))
    with figure_style():
        fig = Figure(figsize=(14, 5.5))
        rates_ax, cer_ax = fig.subplots(1, 2, width_ratios=[2, 1])
        _bar_panel(rates_ax, metrics, _ERROR_RATES, "Error rates by type (VI kinds may overlap)", palette)
        _bar_panel(cer_ax, metrics, _CER_VARIANTS, "Corpus CER with and without marks", palette)
        cer_ax.set_ylabel("CER")
        fig.suptitle(f"Error types: {' vs '.join(metrics)}")
        fig.tight_layout()
        return save_figure(fig, path)


def plot_cer_by_writer(path: Path, by_run: dict[str, list[dict]]) -> Path:
    """Corpus CER per writer, one dot per run joined by a line, writers sorted by the first run's CER."""
    palette = run_palette(list(by_run))
    first = next(iter(by_run))
    shown = sorted(by_run[first], key=lambda row: row["cer"], reverse=True)[:MAX_WRITERS]
    writers = [row["group"] for row in shown]
    with figure_style():
        fig = Figure(figsize=(8, max(4.0, 0.28 * len(writers) + 1.5)))
        ax = fig.subplots()
        cer = {run: {r["group"]: r["cer"] * 100 for r in rows} for run, rows in by_run.items()}
        ys = np.arange(len(writers))
        values = np.array([[cer[run].get(w, np.nan) for w in writers] for run in by_run])
        ax.hlines(
            ys, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color="#bbbbbb", linewidth=2, zorder=1
        )
        for run, row in zip(by_run, values, strict=True):
            ax.scatter(row, ys, color=palette[run], s=40, label=run, zorder=2)
        ax.set_yticks(ys, [f"{w} (n={r['n_samples']})" for w, r in zip(writers, shown, strict=True)])
        ax.set_ylim(len(writers) - 0.5, -0.5)
        ax.set_xlim(0, None)
        ax.xaxis.set_major_formatter(PercentFormatter(100))
        ax.set(xlabel="Corpus CER", ylabel="Writer (samples)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # never over a point
        total = len(by_run[first])
        subset = f" — {len(writers)} highest-CER of {total}" if total > len(writers) else ""
        ax.set_title(f"CER by writer{subset}")
        return save_figure(fig, path)


def plot_comparison(
    plots_dir: Path,
    base_cer: np.ndarray,
    tuned_cer: np.ndarray,
    metrics: dict[str, dict],
    cer_by_writer: dict[str, list[dict]],
) -> list[Path]:
    """The four base-vs-tuned figures from per-sample CERs (matched by id), corpus_metrics() dicts and
    per-writer rows, all computed once by the caller (`hwocr.report.files.write_comparison`)."""
    return [
        plot_cer_distribution(plots_dir / "cer_distribution.png", {"base": base_cer, "tuned": tuned_cer}),
        plot_cer_scatter(plots_dir / "cer_scatter.png", base_cer, tuned_cer),
        plot_error_types(plots_dir / "error_types.png", metrics),
        plot_cer_by_writer(plots_dir / "cer_by_writer.png", cer_by_writer),
    ]


def plot_single_eval(plots_dir: Path, preds: list[Prediction], name: str) -> list[Path]:
    """CER distribution and error types of one run (e.g. only the base checkpoint evaluated)."""
    cers = np.array([s.cer for s in score_all(preds)])
    return [
        plot_cer_distribution(plots_dir / f"{name}_cer_distribution.png", {name: cers}),
        plot_error_types(plots_dir / f"{name}_error_types.png", {name: corpus_metrics(preds)}),
    ]

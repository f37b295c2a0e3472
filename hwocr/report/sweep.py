"""The two figures of a sweep comparison (hwocr/sweeps/compare.py), in report/plots' style."""

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from hwocr.report.plots import figure_style, run_palette, save_figure
from hwocr.text import natural_key

BASE_GREY = "#7f7f7f"


def _order(values: pd.Series) -> list[str]:
    unique = list(dict.fromkeys(values.dropna().astype(str)))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique, key=natural_key)  # r8 < r16 < r32


def plot_cer_by_value(path: Path, table: pd.DataFrame, keys: list[str]) -> Path:
    """One panel per swept key: tuned CER (and base CER, grey) against the key's values."""
    done = table[table["status"] == "FINISHED"].copy()
    keys = keys or ["job"]
    tuned_color = run_palette(["tuned"])["tuned"]
    with figure_style():
        fig = Figure(figsize=(5.2 * min(len(keys), 3), 4.4))
        axes = np.atleast_1d(fig.subplots(1, min(len(keys), 3), squeeze=False)[0])
        for ax, key in zip(axes, keys, strict=False):
            data = done.assign(
                x=done[key].astype(str),
                tuned=done["tuned_cer"].astype(float) * 100,
                base=done["base_cer"].astype(float) * 100,
            )
            order = _order(data["x"])
            others = [k for k in keys if k != key]
            # a hue of one level makes seaborn's dodge divide by zero (one finished job, say)
            hue = others[0] if len(others) == 1 and data[others[0]].nunique() > 1 else None
            if len(data):
                sns.pointplot(
                    data=data.assign(**({hue: data[hue].astype(str)} if hue else {})),
                    x="x", y="tuned", hue=hue, order=order, ax=ax, dodge=0.15 if hue else False,
                    markers="o", errorbar=None, palette=sns.color_palette("colorblind")[2 : 2 + data[hue].nunique()] if hue else None,
                    color=None if hue else tuned_color,
                )  # fmt: skip
                sns.stripplot(
                    data=data, x="x", y="base", order=order, ax=ax, color=BASE_GREY, marker="X",
                    size=8, jitter=0.08, alpha=0.7, legend=False,
                )  # fmt: skip
            n_failed = int((table["status"] == "FAILED").sum())
            side = "tuned" if done["tuned_cer"].notna().any() else "base"
            ax.set_title(f"{side} CER by {key}" + (f"  ({n_failed} failed)" if n_failed else ""))
            ax.set_xlabel(key)
            ax.set_ylabel("corpus CER (tuned: dots, base: grey ✕)")
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
            if hue and ax.get_legend():
                ax.legend(title=hue, fontsize="small")
        fig.tight_layout()
        return save_figure(fig, path)


def plot_base_vs_tuned(path: Path, table: pd.DataFrame, best: dict | None) -> Path:
    """One row per job: base CER -> tuned CER, the tuned side with the paired 95% CI and the delta
    written beside it; failed jobs are labelled FAILED; the best job is starred."""
    colors = run_palette(["base", "tuned"])
    base_color, tuned_color = colors["base"], colors["tuned"]
    labels = []
    for _, row in table.iterrows():
        star = "★ " if best and row["job"] == best["job"] else ""
        labels.append(f"{star}{row['job']}: {row['overrides']}"[:60])
    values = pd.concat([table["base_cer"], table["tuned_cer"]]).astype(float) * 100
    lows = (table["base_cer"].astype(float) + table["cer_delta_ci_low"].astype(float)) * 100
    highs = (table["base_cer"].astype(float) + table["cer_delta_ci_high"].astype(float)) * 100
    finite = pd.concat([values, lows, highs]).dropna()
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 100.0)
    pad = max((hi - lo) * 0.15, 1.0)
    xmin, xmax = max(0.0, lo - pad), hi + pad * 4  # room on the right for the delta text
    with figure_style():
        fig = Figure(figsize=(10, 1.4 + 0.55 * max(len(table), 1)))
        ax = fig.subplots()
        for y, (_, row) in enumerate(table.iterrows()):
            base = float(row.get("base_cer") if not pd.isna(row.get("base_cer")) else np.nan) * 100
            tuned = float(row.get("tuned_cer") if not pd.isna(row.get("tuned_cer")) else np.nan) * 100
            if row["status"] != "FINISHED" or (np.isnan(base) and np.isnan(tuned)):
                ax.text(xmin, y, f"  {row['status']}", va="center", color="#d62728", fontweight="bold")
                continue
            ax.scatter([base], [y], color=base_color, s=60, zorder=2, label="base")
            if np.isnan(tuned):
                continue
            ax.plot([base, tuned], [y, y], color="#999999", lw=2, zorder=1)
            low, high = lows.iloc[y], highs.iloc[y]
            if not (np.isnan(low) or np.isnan(high)):
                ax.errorbar(
                    tuned, y, xerr=[[max(tuned - low, 0)], [max(high - tuned, 0)]], fmt="none",
                    ecolor=tuned_color, capsize=4, lw=1.5, zorder=2,
                )  # fmt: skip
            ax.scatter([tuned], [y], color=tuned_color, s=60, zorder=3, label="tuned (95% CI)")
            text = f"Δ {(tuned - base):+.2f} pp"
            if not (np.isnan(low) or np.isnan(high)):
                text += f" [{low - base:+.2f}, {high - base:+.2f}]"
            ax.text(
                max(base, tuned, high if not np.isnan(high) else 0) + pad * 0.3,
                y,
                text,
                va="center",
                fontsize="small",
            )
        ax.set_yticks(range(len(table)), labels)
        for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
            if label.startswith("★"):
                tick.set_fontweight("bold")
        ax.set_ylim(len(table) - 0.5, -0.5)
        ax.set_xlim(xmin, xmax)
        ax.xaxis.set_major_formatter(PercentFormatter(decimals=1 if hi - lo < 20 else 0))
        ax.set_xlabel("corpus CER")
        title = "base vs tuned CER per job"
        if best:
            side = "tuned" if table["tuned_cer"].notna().any() else "base"
            title += f"\n★ best: job {best['job']}, {side} CER {best['objective']:.2%}"
        ax.set_title(title, loc="left")
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        if unique:
            ax.legend(
                unique.values(), unique.keys(), loc="lower right", ncol=2, frameon=False, fontsize="small",
                bbox_to_anchor=(1.0, 1.0),
            )  # fmt: skip
        fig.tight_layout()
        return save_figure(fig, path)

"""Compare the jobs of one sweep: a table (CSV + markdown), two seaborn figures, the best job.

    python -m hwocr.compare SWEEP_DIR            # e.g. outputs/sweeps/lines/2026-11-24_09-00-00
    python -m hwocr.compare PARENT_RUN_ID --tracking-uri http://mlflow.example:5000

Runs by itself at the end of every sweep (hwocr/sweeps/callback.py). One row per job, failed jobs included
(status FAILED, with their error). Numbers come from the job dir (eval/*/metrics.json,
eval/comparison.json) and, for training speed and memory, from the job's MLflow run; with only a
parent run id and no local sweep dir, everything comes from MLflow. Writes to
`<sweep dir>/comparison/` (or --out) and logs the same files to the parent run under `comparison/`.
"""

import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from hwocr.io import read_json, write_atomic, write_json
from hwocr.sweeps.jobs import (
    describe,
    job_overrides,
    read_job_status,
    read_parent_file,
    split_override,
)
from hwocr.text import natural_key

log = logging.getLogger(__name__)

OUT_SUBDIR = "comparison"
DPI = 120
BASE_GREY = "#7f7f7f"
COLUMNS = [
    "job",
    "status",
    "overrides",
    "base_cer",
    "tuned_cer",
    "cer_delta",
    "cer_delta_ci_low",
    "cer_delta_ci_high",
    "base_perfect_match_rate",
    "tuned_perfect_match_rate",
    "train_runtime_s",
    "train_samples_per_s",
    "train_peak_memory_gib",
    "run_id",
    "job_dir",
    "error",
]
MLFLOW_METRICS = {
    "base_cer": "base/cer",
    "tuned_cer": "tuned/cer",
    "cer_delta": "delta/cer",
    "cer_delta_ci_low": "delta/ci_low",
    "cer_delta_ci_high": "delta/ci_high",
    "base_perfect_match_rate": "base/perfect_match_rate",
    "tuned_perfect_match_rate": "tuned/perfect_match_rate",
    "train_runtime_s": "train/runtime_s",
    "train_samples_per_s": "train/samples_per_s",
    "train_peak_memory_gib": "train/peak_memory_gib",
}


@dataclass
class SweepComparison:
    table: pd.DataFrame
    swept_keys: list[str]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None
    best: dict | None = None

    @property
    def n_failed(self) -> int:
        return int((self.table["status"] == "FAILED").sum()) if len(self.table) else 0

    def summary(self) -> str:
        lines = [f"\nSweep comparison: {len(self.table)} jobs, {self.n_failed} failed -> {self.out_dir}"]
        if self.best:
            lines.append(
                f"  best: job {self.best['job']} ({self.best['overrides']}) "
                f"CER {self.best['objective']:.2%} (tuned, or base where nothing was tuned)"
            )
        lines.append(f"  table: {self.out_dir / 'jobs.md'}")
        return "\n".join(lines)


# --- gathering ------------------------------------------------------------------------------------


def _job_dirs(sweep_dir: Path) -> dict[str, Path]:
    """Job number -> dir, for every dir of the sweep that Hydra started a job in."""
    jobs = {}
    for overrides in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_dir = overrides.parent.parent
        num = job_dir.name
        if not num.isdigit():
            from omegaconf import OmegaConf

            num = str(OmegaConf.select(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml"), "hydra.job.num"))
        jobs[num] = job_dir
    return jobs


def _task_overrides(job_dir: Path | None, run) -> list[str]:
    if job_dir and (job_dir / ".hydra" / "overrides.yaml").is_file():
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    if run is not None and run.data.tags.get("sweep.task_overrides"):
        return run.data.tags["sweep.task_overrides"].split(" ")
    return []


def _from_job_dir(job_dir: Path) -> dict:
    row: dict = {}
    for side in ("base", "tuned"):
        metrics = read_json(job_dir / "eval" / side / "metrics.json")
        if metrics:
            row[f"{side}_cer"] = metrics.get("cer")
            row[f"{side}_perfect_match_rate"] = metrics.get("perfect_match_rate")
    train = read_json(job_dir / "train_summary.json")  # TrainResult.metrics(), where written
    for column, name in MLFLOW_METRICS.items():
        if name.startswith("train/") and name in train:
            row[column] = train[name]
    paired = read_json(job_dir / "eval" / "comparison.json").get("paired", {})
    for key in ("cer_delta", "cer_delta_ci_low", "cer_delta_ci_high"):
        if key in paired:
            row[key] = paired[key]
    return {k: v for k, v in row.items() if v is not None}


def _status(run, job_status: dict, final: bool) -> str:
    mlflow_status = run.info.status if run is not None else None
    if job_status.get("status") == "FAILED" or mlflow_status in ("FAILED", "KILLED"):
        return "FAILED"
    if mlflow_status == "FINISHED" or job_status.get("status") == "COMPLETED":
        return "FINISHED"
    # started but never ended: still running, or (once the sweep is over) killed
    return "FAILED" if final else (mlflow_status or "UNKNOWN")


def _children(client, parent) -> dict[str, object]:
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=5000,
    )
    by_num = {}
    for run in runs:
        by_num[run.data.tags.get("sweep.job_num", run.info.run_id)] = run
    return by_num


def gather(
    sweep_dir: Path | None, client=None, parent=None, swept_keys: list[str] | None = None, final: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: the union of the sweep dir's job dirs and the parent run's children."""
    dirs = _job_dirs(sweep_dir) if sweep_dir else {}
    runs = _children(client, parent) if client is not None and parent is not None else {}
    keys = list(swept_keys or [])
    rows = []
    for num in sorted(set(dirs) | set(runs), key=natural_key):
        job_dir, run = dirs.get(num), runs.get(num)
        job_status = read_job_status(job_dir) if job_dir else {}
        task = _task_overrides(job_dir, run)
        row: dict = {"job": int(num) if num.isdigit() else num, "status": _status(run, job_status, final)}
        row["_task"] = task
        if run is not None:
            row |= {
                col: run.data.metrics[name]
                for col, name in MLFLOW_METRICS.items()
                if name in run.data.metrics
            }
            row["run_id"] = run.info.run_id
            row["error"] = run.data.tags.get("error", "")
            if not job_dir and run.data.tags.get("run_dir") and Path(run.data.tags["run_dir"]).is_dir():
                job_dir = Path(run.data.tags["run_dir"])
        if job_dir:
            row |= _from_job_dir(job_dir)
            row["job_dir"] = str(job_dir)
        if job_status.get("status") == "FAILED":
            row["error"] = f"{job_status.get('error_type')}: {job_status.get('error')}"
        rows.append(row)
    if not keys:  # no parent info: every override that differs between jobs counts as swept
        keys = _varying_keys([r["_task"] for r in rows])
    for row in rows:
        swept = job_overrides(row.pop("_task"), keys)
        row["overrides"] = describe(swept)
        for key in keys:
            row[key] = swept.get(key)
    table = pd.DataFrame(rows, columns=[*COLUMNS[:3], *keys, *COLUMNS[3:]])
    return table, keys


def _varying_keys(tasks: list[list[str]]) -> list[str]:
    values: dict[str, set] = {}
    for task in tasks:
        for line in task:
            key, value = split_override(line)
            values.setdefault(key, set()).add(value)
    return [key for key, vals in values.items() if len(vals) > 1]


def best_job(table: pd.DataFrame) -> dict | None:
    """The finished job with the lowest tuned CER (the base CER where nothing was tuned)."""
    if not len(table):
        return None
    objective = table["tuned_cer"].where(table["tuned_cer"].notna(), table["base_cer"])
    candidates = objective[(table["status"] == "FINISHED") & objective.notna()]
    if candidates.empty:
        return None
    index = candidates.astype(float).idxmin()
    row = table.loc[index]
    return {
        "job": int(row["job"]) if isinstance(row["job"], (int, np.integer)) else str(row["job"]),
        "overrides": row["overrides"],
        "objective": float(candidates[index]),
        "run_id": row.get("run_id") if isinstance(row.get("run_id"), str) else None,
        "job_dir": row.get("job_dir") if isinstance(row.get("job_dir"), str) else None,
    }


# --- writing --------------------------------------------------------------------------------------


def _pct(value) -> str:
    return "" if value is None or _isnan(value) else f"{float(value):.2%}"


def _isnan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _num(value, fmt: str) -> str:
    return "" if _isnan(value) else format(float(value), fmt)


def markdown_table(table: pd.DataFrame, best: dict | None) -> str:
    header = [
        "job",
        "status",
        "overrides",
        "base CER",
        "tuned CER",
        "Δ CER [95% CI]",
        "perfect match",
        "train s",
        "samples/s",
        "peak GiB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        mark = " ★" if best and row["job"] == best["job"] else ""
        delta = ""
        if not _isnan(row.get("cer_delta")):
            delta = f"{float(row['cer_delta']) * 100:+.2f} pp"
            if not _isnan(row.get("cer_delta_ci_low")):
                delta += f" [{float(row['cer_delta_ci_low']) * 100:+.2f}, {float(row['cer_delta_ci_high']) * 100:+.2f}]"
        status = row["status"]
        if status == "FAILED" and isinstance(row.get("error"), str) and row["error"]:
            status = f"FAILED: {row['error'][:80]}".replace("|", "/").replace("\n", " ")
        cells = [
            f"{row['job']}{mark}",
            status,
            f"`{row['overrides']}`" if row["overrides"] else "",
            _pct(row.get("base_cer")),
            _pct(row.get("tuned_cer")),
            delta,
            _pct(row.get("tuned_perfect_match_rate")),
            _num(row.get("train_runtime_s"), ".1f"),
            _num(row.get("train_samples_per_s"), ".2f"),
            _num(row.get("train_peak_memory_gib"), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if best:
        lines += ["", f"Best: job {best['job']} (`{best['overrides']}`), tuned CER {best['objective']:.2%}."]
    else:
        lines += ["", "No job finished with a CER."]
    return "\n".join(lines) + "\n"


def _order(values: pd.Series) -> list[str]:
    unique = list(dict.fromkeys(values.dropna().astype(str)))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique, key=lambda v: (len(v), v))  # r8 < r16 < r32


def _colors() -> tuple:
    colors = sns.color_palette("colorblind")
    return colors[1], colors[0]  # base orange, tuned blue (as in hwocr.report.plots)


def plot_cer_by_value(path: Path, table: pd.DataFrame, keys: list[str]) -> Path:
    """One panel per swept key: tuned CER (and base CER, grey) against the key's values."""
    done = table[table["status"] == "FINISHED"].copy()
    keys = keys or ["job"]
    tuned_color = _colors()[1]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
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
            hue = others[0] if len(others) == 1 else None
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_base_vs_tuned(path: Path, table: pd.DataFrame, best: dict | None) -> Path:
    """One row per job: base CER -> tuned CER, the tuned side with the paired 95% CI and the delta
    written beside it; failed jobs are labelled FAILED; the best job is starred."""
    base_color, tuned_color = _colors()
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
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(10, 1.4 + 0.55 * max(len(table), 1)))
        ax = fig.subplots()
        for y, (_, row) in enumerate(table.iterrows()):
            base = float(row.get("base_cer") if not _isnan(row.get("base_cer")) else np.nan) * 100
            tuned = float(row.get("tuned_cer") if not _isnan(row.get("tuned_cer")) else np.nan) * 100
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


# --- entry points ---------------------------------------------------------------------------------


def _reachable(uri: str, timeout_s: float = 5.0) -> bool:
    """An HTTP store answers /health; mlflow's own retries would take minutes to give up."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def _default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


def compare_sweep(
    source: str | Path,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    log_to_parent: bool = True,
    final: bool = False,
) -> SweepComparison:
    """Build the comparison of a sweep given its dir or its MLflow parent run id."""
    from mlflow.tracking import MlflowClient

    sweep_dir, parent_info = None, {}
    if Path(source).is_dir():
        sweep_dir = Path(source).resolve()
        parent_info = read_parent_file(sweep_dir)
        parent_id = parent_info.get("parent_run_id")
        tracking_uri = tracking_uri or parent_info.get("tracking_uri")
    else:
        parent_id = str(source)
    client, parent = None, None
    if parent_id and not _reachable(tracking_uri or _default_uri()):
        if sweep_dir is None:
            raise SystemExit(f"MLflow server {tracking_uri} does not answer; pass --tracking-uri")
        log.warning("MLflow server %s does not answer; using the sweep dir only", tracking_uri)
    elif parent_id:
        try:
            client = MlflowClient(tracking_uri or _default_uri())
            parent = client.get_run(parent_id)
        except Exception as error:
            if sweep_dir is None:
                raise SystemExit(
                    f"{source} is neither a sweep dir nor a run in {tracking_uri}: {error}"
                ) from error
            log.warning("MLflow parent run %s unreadable (%s); using the sweep dir only", parent_id, error)
            client, parent = None, None
    if sweep_dir is None and parent is not None:
        tagged = parent.data.tags.get("sweep.dir")
        if tagged and Path(tagged).is_dir():
            sweep_dir = Path(tagged)
    keys = parent_info.get("swept_keys")
    if keys is None and parent is not None and parent.data.tags.get("sweep.swept_keys") is not None:
        keys = [k for k in parent.data.tags["sweep.swept_keys"].split(",") if k]
    table, keys = gather(sweep_dir, client, parent, keys, final=final)
    best = best_job(table)
    out_dir = Path(
        out_dir or (sweep_dir / OUT_SUBDIR if sweep_dir else Path(f"sweep_{parent_id[:8]}") / OUT_SUBDIR)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "jobs.csv", table.to_csv(index=False))
    write_atomic(out_dir / "jobs.md", markdown_table(table, best))
    summary = {
        "n_jobs": len(table),
        "n_failed": int((table["status"] == "FAILED").sum()),
        "swept_keys": keys,
        "best": best,
        "parent_run_id": parent_id,
        "sweep_dir": str(sweep_dir) if sweep_dir else None,
    }
    write_json(out_dir / "summary.json", summary)
    files = [out_dir / "jobs.csv", out_dir / "jobs.md", out_dir / "summary.json"]
    files.append(plot_cer_by_value(out_dir / "cer_by_swept_value.png", table, keys))
    files.append(plot_base_vs_tuned(out_dir / "base_vs_tuned.png", table, best))
    result = SweepComparison(table, keys, out_dir, files, parent_id, best)
    if log_to_parent and client is not None and parent is not None:
        _log_to_parent(client, parent_id, result)
    return result


def _log_to_parent(client, parent_id: str, result: SweepComparison) -> None:
    client.log_artifacts(parent_id, str(result.out_dir), OUT_SUBDIR)
    import mlflow

    stamp = mlflow.utils.time.get_current_time_millis()
    metrics = {"sweep/n_jobs": len(result.table), "sweep/n_failed": result.n_failed}
    tags = {"sweep.n_failed": str(result.n_failed)}
    if result.best:
        metrics["best/objective_cer"] = result.best["objective"]
        tags |= {
            "sweep.best_job": str(result.best["job"]),
            "sweep.best_overrides": result.best["overrides"],
            "sweep.best_run_id": result.best["run_id"] or "",
        }
    client.log_batch(
        parent_id,
        metrics=[mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
        tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hwocr.compare", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a sweep dir (outputs/sweeps/...) or an MLflow parent run id")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: the sweep's, $MLFLOW_TRACKING_URI, outputs/mlflow.db)"
    )
    parser.add_argument("--out", type=Path, help="output dir (default: SWEEP_DIR/comparison)")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = compare_sweep(args.source, args.tracking_uri, args.out, log_to_parent=not args.no_log)
    print(result.summary())
    print((result.out_dir / "jobs.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

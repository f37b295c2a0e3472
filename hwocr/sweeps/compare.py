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

from hwocr.io import read_json, write_atomic, write_json
from hwocr.report.sweep import plot_base_vs_tuned, plot_cer_by_value
from hwocr.sweeps import resume
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

    resubmit: str | None = None  # the command that finishes the sweep, while jobs are unfinished

    def jobs_with(self, status: str) -> list:
        return [row for row in self.table["job"][self.table["status"] == status]] if len(self.table) else []

    @property
    def n_failed(self) -> int:
        return len(self.jobs_with("FAILED"))

    @property
    def n_unfinished(self) -> int:
        """Jobs that did not finish: failed, interrupted, missing or still running."""
        return int((self.table["status"] != "FINISHED").sum()) if len(self.table) else 0

    def summary(self) -> str:
        parts = [f"{len(self.table)} jobs", f"{self.n_failed} failed"]
        for status in UNFINISHED:
            jobs = self.jobs_with(status)
            if jobs:
                named = ", ".join(map(str, jobs))
                parts.append(f"{len(jobs)} {status.lower()} (job{'s' if len(jobs) > 1 else ''} {named})")
        lines = [f"\nSweep comparison: {', '.join(parts)} -> {self.out_dir}"]
        if self.best:
            lines.append(
                f"  best: job {self.best['job']} ({self.best['overrides']}) "
                f"CER {self.best['objective']:.2%} (tuned, or base where nothing was tuned)"
            )
        lines.append(f"  table: {self.out_dir / 'jobs.md'}")
        if self.resubmit and any(self.jobs_with(status) for status in ("INTERRUPTED", "MISSING")):
            lines.append(f"  resubmit the sweep to finish it: {self.resubmit}")
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


UNFINISHED = ("INTERRUPTED", "RUNNING", "MISSING")


def _status(run, job_dir: Path | None, final: bool) -> str:
    """FINISHED, FAILED, INTERRUPTED (killed or stopped: a resubmission resumes it), RUNNING, or
    MISSING (never started). The job dir, when there is one, is the truth: MLflow may lag behind."""
    state = resume.job_state(job_dir) if job_dir else ""
    if state == "COMPLETED":
        return "FINISHED"
    if state in ("FAILED", "INTERRUPTED", "RUNNING"):
        return state
    mlflow_status = run.info.status if run is not None else None
    if mlflow_status in ("FINISHED", "FAILED"):
        return mlflow_status
    if mlflow_status == "KILLED" or (final and mlflow_status == "RUNNING") or job_dir:
        return "INTERRUPTED"
    return mlflow_status or "MISSING"


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
    sweep_dir: Path | None,
    client=None,
    parent=None,
    swept_keys: list[str] | None = None,
    final: bool = False,
    expected: list[list[str]] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: the union of the sweep dir's job dirs, the parent run's children and the jobs
    the sweep expects (`expected`, every job's overrides: a job never started is MISSING)."""
    dirs = _job_dirs(sweep_dir) if sweep_dir else {}
    runs = _children(client, parent) if client is not None and parent is not None else {}
    planned = {str(num): task for num, task in enumerate(expected or [])}
    keys = list(swept_keys or [])
    rows = []
    for num in sorted(set(dirs) | set(runs) | set(planned), key=natural_key):
        job_dir, run = dirs.get(num), runs.get(num)
        job_status = read_job_status(job_dir) if job_dir else {}
        task = _task_overrides(job_dir, run) or planned.get(num, [])
        row: dict = {"job": int(num) if num.isdigit() else num, "status": _status(run, job_dir, final)}
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
    from hwocr.tracking.store import open_client

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
            client = open_client(tracking_uri or _default_uri())
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
    expected = parent_info.get("expected_jobs")
    if expected is None and isinstance(parent_info.get("n_expected"), int):  # Optuna: trials, not overrides
        expected = [[] for _ in range(parent_info["n_expected"])]
    table, keys = gather(sweep_dir, client, parent, keys, final=final, expected=expected)
    best = best_job(table)
    out_dir = Path(
        out_dir or (sweep_dir / OUT_SUBDIR if sweep_dir else Path(f"sweep_{parent_id[:8]}") / OUT_SUBDIR)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "jobs.csv", table.to_csv(index=False))
    write_atomic(out_dir / "jobs.md", markdown_table(table, best))
    resubmit = (
        resume.resubmit_command(parent_info["command"], sweep_dir)
        if sweep_dir and parent_info.get("command")
        else None
    )
    result = SweepComparison(table, keys, out_dir, [], parent_id, best, resubmit)
    summary = {
        "n_jobs": len(table),
        "n_failed": result.n_failed,
        **{status.lower(): result.jobs_with(status) for status in UNFINISHED},
        "resubmit": resubmit if result.n_unfinished else None,
        "swept_keys": keys,
        "best": best,
        "parent_run_id": parent_id,
        "sweep_dir": str(sweep_dir) if sweep_dir else None,
    }
    write_json(out_dir / "summary.json", summary)
    files = [out_dir / "jobs.csv", out_dir / "jobs.md", out_dir / "summary.json"]
    files.append(plot_cer_by_value(out_dir / "cer_by_swept_value.png", table, keys))
    files.append(plot_base_vs_tuned(out_dir / "base_vs_tuned.png", table, best))
    result.files = files
    if log_to_parent and client is not None and parent is not None:
        _log_to_parent(client, parent_id, result)
    return result


def _log_to_parent(client, parent_id: str, result: SweepComparison) -> None:
    client.log_artifacts(parent_id, str(result.out_dir), OUT_SUBDIR)
    import mlflow

    stamp = mlflow.utils.time.get_current_time_millis()
    metrics = {
        "sweep/n_jobs": len(result.table),
        "sweep/n_failed": result.n_failed,
        "sweep/n_unfinished": result.n_unfinished,
    }
    tags = {"sweep.n_failed": str(result.n_failed), "sweep.n_unfinished": str(result.n_unfinished)}
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

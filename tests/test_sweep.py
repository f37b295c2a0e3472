"""Sweeps end to end: `python -m hwocr.run -m ...` with the basic, joblib and submitit_local launchers,
a real MLflow tracking server over HTTP, the comparison, failed jobs, and the launcher/sweeper presets.

Each sweep runs once per module (module-scoped fixtures) and several tests read it. The tiny model on
the CPU: a job takes ~10 s inside a sweep, plus ~10 s of imports per process.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, server_args, start_mlflow, stop

from tests.conftest import small_demo

REPO = Path(__file__).resolve().parents[1]
SMALL = small_demo()
# the launcher tests need a job that works and one that fails, not training: this halves their time
BASE_EVAL_ONLY = ["stages=[base_eval]", "dataset.max_eval_samples=2"]
SWEEP_TIMEOUT_S = 420

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hwocr_cache")
    return os.environ | {
        "HWOCR_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }


def run_sweep(env: dict, sweep_dir: Path, tracking_uri: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "hwocr.run",
        "-m",
        *SMALL,
        f"tracking.uri={tracking_uri}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    start = time.monotonic()
    # cwd: a sqlite store puts artifacts in ./mlruns of the working directory; keep them in tmp
    result = subprocess.run(
        cmd, cwd=sweep_dir.parent, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )
    (sweep_dir.parent / f"{sweep_dir.name}.log").write_text(result.stdout + result.stderr)
    print(f"sweep {sweep_dir.name}: exit {result.returncode} in {time.monotonic() - start:.1f} s")
    return result


def sweep_runs(client, sweep_dir: Path):
    parent_id = json.loads((sweep_dir / "mlflow_parent.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return parent, {run.data.tags["sweep.job_num"]: run for run in children}


# --- a 2x2 grid with the basic launcher, against a real tracking server over HTTP ------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    proc, url, _ = start_mlflow(server_args(root), root / "server.log")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def grid(server, cache_env, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweeps") / "grid"
    result = run_sweep(cache_env, sweep_dir, server, "lora=r8,r16", "train.lr=1e-3,2e-3")
    assert result.returncode == 0, result.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    return sweep_dir, MlflowClient(server), result


def test_grid_logs_one_parent_and_a_child_per_job(grid):
    sweep_dir, client, _ = grid
    parent, children = sweep_runs(client, sweep_dir)

    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.lora"] == "r8,r16"
    assert parent.data.params["sweep.train.lr"] == "1e-3,2e-3"
    assert parent.data.tags["sweep.dir"] == str(sweep_dir.resolve())
    assert "lora=r8,r16" in parent.data.tags["sweep.command"]
    assert parent.data.tags["sweep.swept_keys"] == "lora,train.lr"

    assert sorted(children) == ["0", "1", "2", "3"]
    combos = {(run.data.params["lora.r"], run.data.params["train.lr"]) for run in children.values()}
    assert combos == {("8", "0.001"), ("8", "0.002"), ("16", "0.001"), ("16", "0.002")}
    for num, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["run_dir"] == str((sweep_dir / num).resolve())
        assert run.data.tags["sweep.overrides"].startswith("lora=r")
        for key in ("base/cer", "tuned/cer", "delta/cer", "train/runtime_s", "train/samples_per_s"):
            assert key in run.data.metrics, key
    # nothing logged outside the sweep: one parent + four children in the experiment
    assert len(client.search_runs([parent.info.experiment_id])) == 5


def test_grid_jobs_keep_the_single_run_layout_and_artifacts_go_through_the_server(grid, tmp_path):
    sweep_dir, client, _ = grid
    _, children = sweep_runs(client, sweep_dir)
    for num in children:
        job_dir = sweep_dir / num
        for path in ("resolved_config.yaml", "eval/base/metrics.json", "eval/comparison.json", "adapter"):
            assert (job_dir / path).exists(), job_dir / path
    run = children["0"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"eval", "plots", "adapter"}
    local = client.download_artifacts(run.info.run_id, "eval/comparison.json", str(tmp_path))
    assert (
        json.loads(Path(local).read_text())["paired"]
        == json.loads((sweep_dir / "0" / "eval" / "comparison.json").read_text())["paired"]
    )
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "plots"))


def test_grid_comparison_table_figures_and_best_job(grid):
    sweep_dir, client, result = grid
    out = sweep_dir / "comparison"
    table = pd.read_csv(out / "jobs.csv")
    assert len(table) == 4
    assert list(table["status"]) == ["FINISHED"] * 4
    assert {"lora", "train.lr", "base_cer", "tuned_cer", "cer_delta", "cer_delta_ci_low"} <= set(
        table.columns
    )
    assert table["train_runtime_s"].notna().all() and table["train_peak_memory_gib"].notna().all()
    for _, row in table.iterrows():
        paired = json.loads((sweep_dir / str(row["job"]) / "eval" / "comparison.json").read_text())["paired"]
        assert row["cer_delta"] == pytest.approx(paired["cer_delta"])
        assert row["cer_delta_ci_low"] <= row["cer_delta"] <= row["cer_delta_ci_high"]

    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["objective"] == pytest.approx(table["tuned_cer"].min())
    assert f"Best: job {best['job']}" in (out / "jobs.md").read_text()
    assert "best: job" in result.stdout
    for png in ("cer_by_swept_value.png", "base_vs_tuned.png"):
        assert (out / png).stat().st_size > 10_000

    parent, _ = sweep_runs(client, sweep_dir)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/jobs.csv", "comparison/jobs.md", "comparison/base_vs_tuned.png"} <= logged
    assert parent.data.tags["sweep.best_job"] == str(best["job"])
    assert parent.data.metrics["sweep/n_jobs"] == 4


def test_compare_on_demand_from_the_parent_run_id(grid, tmp_path, capsys):
    from hwocr.sweeps.compare import main

    sweep_dir, client, _ = grid
    parent, _ = sweep_runs(client, sweep_dir)
    assert (
        main([parent.info.run_id, "--tracking-uri", client.tracking_uri, "--out", str(tmp_path), "--no-log"])
        == 0
    )
    table = pd.read_csv(tmp_path / "jobs.csv")
    assert len(table) == 4 and set(table["status"]) == {"FINISHED"}
    assert "Best: job" in capsys.readouterr().out


# --- one sweep over model families ---------------------------------------------------------------

MODELS = ["tiny", "tiny_paddleocr_vl", "tiny_glm_ocr"]  # DeepSeek-OCR-2, PaddleOCR-VL, GLM-OCR at test size


@pytest.fixture(scope="module")
def model_sweep(cache_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_sweep(cache_env, root / "sweep", uri, f"model={','.join(MODELS)}")
    assert result.returncode == 0, result.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    return root / "sweep", MlflowClient(uri), result


def test_one_sweep_compares_model_families(model_sweep):
    """`-m model=a,b,c`: one parent run, one finished child per model with its own family's metrics,
    and the comparison table and figures across the models."""
    sweep_dir, client, _ = model_sweep
    parent, children = sweep_runs(client, sweep_dir)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.swept_keys"] == "model"
    assert sorted(children) == ["0", "1", "2"]
    assert [children[num].data.params["model.name"] for num in ("0", "1", "2")] == MODELS
    families = [children[num].data.params["model.family"] for num in ("0", "1", "2")]
    assert families == ["ocr2", "paddleocr_vl", "glm_ocr"]
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert {"base/cer", "tuned/cer", "delta/cer", "train/samples_per_s"} <= set(run.data.metrics)

    table = pd.read_csv(sweep_dir / "comparison" / "jobs.csv")
    assert list(table["model"]) == MODELS and list(table["status"]) == ["FINISHED"] * 3
    for _, row in table.iterrows():
        tuned = json.loads((sweep_dir / str(row["job"]) / "eval" / "tuned" / "metrics.json").read_text())
        assert row["tuned_cer"] == pytest.approx(tuned["cer"])
    for png in ("cer_by_swept_value.png", "base_vs_tuned.png"):
        assert (sweep_dir / "comparison" / png).stat().st_size > 10_000
    assert parent.data.metrics["sweep/n_jobs"] == 3


# --- joblib launcher, one job failing before it creates its run ----------------------------------


@pytest.fixture(scope="module")
def joblib_sweep(cache_env, tmp_path_factory):
    # the failing job stops before it touches the cache, so the two parallel jobs cannot race on it
    root = tmp_path_factory.mktemp("joblib")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    good = f"{cache_env['HWOCR_CACHE']}/synth_line"
    result = run_sweep(
        cache_env,
        root / "sweep",
        uri,
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        *BASE_EVAL_ONLY,
        f"dataset.root={good},/proc/hwocr-missing/synth_line",
    )
    from mlflow.tracking import MlflowClient

    return root / "sweep", MlflowClient(uri), result, uri


def test_a_failed_job_does_not_stop_the_sweep(joblib_sweep):
    sweep_dir, client, result, _ = joblib_sweep
    assert result.returncode == 1, result.stderr[-4000:]  # fail_on_job_failure, after the comparison
    assert "JoblibLauncher" in (sweep_dir / "multirun.yaml").read_text()

    parent, children = sweep_runs(client, sweep_dir)
    assert sorted(children) == ["0", "1"]
    assert children["0"].info.status == "FINISHED"
    assert children["1"].info.status == "FAILED"  # created by the callback: the job never got that far
    assert "/proc/hwocr-missing" in children["1"].data.tags["error"]
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.n_failed"] == "1"

    table = pd.read_csv(sweep_dir / "comparison" / "jobs.csv")
    assert list(table["status"]) == ["FINISHED", "FAILED"]
    assert "/proc/hwocr-missing" in table.loc[1, "error"]
    assert "FAILED" in (sweep_dir / "comparison" / "jobs.md").read_text()
    assert json.loads((sweep_dir / "1" / "job_status.json").read_text())["status"] == "FAILED"


# --- submitit_local: every job in its own process, one failing after its run started --------------


def test_submitit_local_jobs_log_under_the_parent(joblib_sweep, cache_env, tmp_path_factory):
    # after joblib_sweep the tiny model and the data are in the cache: the parallel jobs cannot race
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root = tmp_path_factory.mktemp("submitit")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = f"{cache_env['HWOCR_CACHE']}/tiny-deepseek-ocr2"
    result = run_sweep(
        cache_env,
        root / "sweep",
        uri,
        "hydra/launcher=local_processes",
        *BASE_EVAL_ONLY,
        "model.build_tiny=false",
        f"model.source={model},/nonexistent/tiny-model",
    )
    assert result.returncode == 1, result.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    parent, children = sweep_runs(MlflowClient(uri), root / "sweep")
    assert sorted(children) == ["0", "1"]
    assert children["0"].info.status == "FINISHED"
    assert children["1"].info.status == "FAILED"
    assert "base/cer" in children["0"].data.metrics and "base/cer" not in children["1"].data.metrics
    assert list((root / "sweep" / ".submitit").iterdir())  # really went through submitit
    table = pd.read_csv(root / "sweep" / "comparison" / "jobs.csv")
    assert list(table["status"]) == ["FINISHED", "FAILED"]


# --- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key, expected",
    [
        (["hydra/launcher=local_parallel"], "hydra.launcher.n_jobs", 2),
        (["hydra/launcher=local_processes"], "hydra.launcher._target_", "LocalLauncher"),
        (
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hardware=h100"],
            "hydra.launcher.gpus_per_node",
            1,
        ),
        (["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], "hydra.launcher.partition", "gpu"),
        (["hydra/sweeper=optuna_cer"], "hydra.sweeper.direction", "minimize"),
    ],
)
def test_presets_compose(overrides, key, expected):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from hwocr.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=lines", *overrides], return_hydra_config=True)
    value = OmegaConf.select(cfg, key)
    value = getattr(value, "name", value)  # enums (optuna's Direction)
    if isinstance(expected, str) and key.endswith("_target_"):
        assert str(value).endswith(expected)
    else:
        assert str(value) == str(expected)
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "hwocr.sweeps.callback.MlflowSweepCallback"


# --- the MLflow UI in headless Chromium ------------------------------------------------------------


@pytest.mark.ui
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_mlflow_ui_shows_the_sweep_its_metrics_and_plots(joblib_sweep, tmp_path_factory):
    """`mlflow ui` (the command hwocr prints) on a sweep's store, read in headless Chromium:
    the runs table lists the parent and its children, a child's page shows its metrics, and the
    artifact viewer renders a plot. Screenshots go to the test's tmp dir (path printed)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download needed)"
    )
    sweep_dir, client, _, uri = joblib_sweep
    parent, children = sweep_runs(client, sweep_dir)
    child = children["0"]
    experiment = parent.info.experiment_id
    shots = tmp_path_factory.mktemp("ui_screenshots")
    proc, url, _ = start_mlflow(["ui", "--backend-store-uri", uri], shots / "ui.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS[1:],  # Playwright adds --headless and a fresh profile dir itself
            )
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.set_default_timeout(60_000)

            page.goto(f"{url}/#/experiments/{experiment}/runs")
            parent_cell = page.locator("[role=gridcell]", has_text=parent.info.run_name).first
            parent_cell.wait_for()
            parent_cell.locator("button").first.click()  # expand the parent: its jobs appear below it
            for run in children.values():
                page.get_by_text(run.info.run_name).first.wait_for()
            page.screenshot(path=shots / "runs.png")

            page.goto(f"{url}/#/experiments/{experiment}/runs/{child.info.run_id}")
            metric = page.get_by_text("base/cer").first
            metric.wait_for()
            metric.scroll_into_view_if_needed()
            assert page.get_by_text(child.info.run_name).first.is_visible()
            page.screenshot(path=shots / "child_run.png")

            page.goto(
                f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}/artifacts/comparison/base_vs_tuned.png"
            )
            page.get_by_text("comparison/base_vs_tuned.png").first.wait_for()
            image = page.locator("img[src^='blob:']").first  # the viewer fetches the file into a blob
            image.wait_for()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 300", arg=image.element_handle()
            )
            page.screenshot(path=shots / "parent_comparison_plot.png")
            browser.close()
    finally:
        stop(proc)
    print(f"UI screenshots: {shots}")

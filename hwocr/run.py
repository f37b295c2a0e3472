"""The one entrypoint: `python -m hwocr.run +experiment=demo`.

config -> data -> model -> base eval -> train -> tuned eval -> report.

How a job starts and ends (a sweep's resume plan, exit codes, failed jobs that let the sweep go on):
hwocr/sweeps/job.py.
"""

import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from hwocr import distributed
from hwocr.config import Config, flatten, register_schema, to_config
from hwocr.data import load_splits, prepare_dataset
from hwocr.errors import TrainingInterrupted
from hwocr.evaluate.stage import delta_metrics, evaluate_checkpoint, generation_settings
from hwocr.io import write_atomic, write_json
from hwocr.model import (
    attach_adapter,
    load_model,
    load_processor,
    merge_for_evaluation,
    prepare_for_training,
)
from hwocr.model.load import resolve_source, torch_dtype
from hwocr.model.unsloth import for_inference
from hwocr.preflight import preflight
from hwocr.report import write_comparison, write_gallery
from hwocr.report.record import environment_info
from hwocr.report.summary import closing_summary
from hwocr.sweeps.job import run_job
from hwocr.sweeps.jobs import JobContext, job_context
from hwocr.tracking.client import (
    NullTracker,
    Tracker,
    TrainerLogsToMlflow,
    run_tags,
    ui_command,
)
from hwocr.tracking.redact import redact_yaml
from hwocr.train import train
from hwocr.train.progress import TimeLeft

log = logging.getLogger("hwocr")
register_schema()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(composed: DictConfig) -> float:
    return run_job(start, composed)


def start(composed: DictConfig) -> float:
    """Validate the config and check prerequisites, then run here or in hardware.num_devices workers."""
    # --- config ----------------------------------------------------------------------------------------
    cfg = to_config(composed)
    cfg.output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    resolved_yaml = OmegaConf.to_yaml(composed, resolve=True)
    job = job_context()  # parent run + tags when this job is part of a sweep
    preflight(cfg)
    if cfg.hardware.num_devices == 1 or distributed.in_worker():
        return run(cfg, resolved_yaml, job)
    # One command, N workers: they share this job dir and config (composed once, here).
    result = distributed.launch(
        _worker, (cfg, resolved_yaml, job), cfg.hardware.num_devices, cfg.hardware.collective_timeout_s
    )
    if isinstance(result, distributed.Stopped):  # the workers stopped on a signal, checkpoint saved
        raise TrainingInterrupted(result.message, result.step, result.checkpoint)
    return result


def _worker(cfg: Config, resolved_yaml: str, job: JobContext) -> "float | distributed.Stopped":
    distributed.configure_worker_logging()
    try:
        return run(cfg, resolved_yaml, job)
    except TrainingInterrupted as error:  # a return, not a raise: elastic would call it a failed worker
        return distributed.Stopped(str(error), error.step, error.checkpoint)


def _tuned_eval_estimate(cfg: Config, results: dict) -> float | None:
    """Seconds the tuned evaluation will take, as long as the base one did (None: unknown or none)."""
    base = results.get("base")
    if "tuned_eval" not in cfg.stages or base is None or not base.stats.seconds:
        return None
    return base.stats.seconds


def log_gallery(run_dir: Path, results: dict, cfg: Config, tracker: Tracker) -> None:
    """eval/gallery.html from the evaluations so far: base alone first, base and tuned at the end."""
    columns = {name: result.predictions for name, result in results.items()}
    page = run_dir / "eval" / "gallery.html"
    for path in write_gallery(page, columns, cfg.eval.gallery_rows, cfg.train.seed):
        tracker.log_artifact(path, "eval" if path.is_file() else f"eval/{path.name}")


def run(cfg: Config, resolved_yaml: str, job: JobContext) -> float:
    """Run every selected stage; return the tuned corpus CER (the base CER if nothing was tuned)."""
    started = time.monotonic()
    run_dir = Path(cfg.output_dir).resolve()
    rank = distributed.init(cfg.hardware.device)

    # --- tracking: before any data or model work, so an unreachable store fails in seconds -------------
    tracker = (
        Tracker(cfg.tracking, outputs_dir=Path("outputs"), run_dir=run_dir) if rank.is_main else NullTracker()
    )
    tracker.check_reachable()

    # --- data ------------------------------------------------------------------------------------------
    if rank.is_main:
        prepare_dataset(cfg.dataset)
        resolve_source(cfg.model)  # builds the tiny model once, before the other ranks load it
    distributed.barrier()
    splits = load_splits(cfg.dataset, seed=cfg.train.seed)

    with tracker:
        tracker.start(
            run_name=job.run_name or run_dir.name,
            tags=run_tags(cfg, run_dir) | job.tags,
            parent_run_id=job.parent_run_id,
        )
        if rank.is_main:
            tracker.log_params(flatten(OmegaConf.to_container(OmegaConf.structured(cfg))))
            tracker.log_artifact(write_atomic(run_dir / "resolved_config.yaml", redact_yaml(resolved_yaml)))
            environment = environment_info()
            tracker.set_tags({f"env.{k}": v for k, v in environment.items()})
            tracker.log_artifact(write_json(run_dir / "environment.json", environment))
            tracker.log_metrics({f"data/{k}": v for k, v in splits.summary().items()})
            tracker.set_tags({f"data.{split}": how for split, how in splits.provenance.items()})
            tracker.log_artifact(write_json(run_dir / "data_report.json", splits.report()))

        # --- model -------------------------------------------------------------------------------------
        processor = load_processor(cfg.model)
        model = load_model(cfg.model, cfg.hardware, backend=cfg.backend)
        settings = generation_settings(cfg, processor, splits.test)

        # --- base eval ---------------------------------------------------------------------------------
        results, trained = {}, None
        if "base_eval" in cfg.stages:
            results["base"] = evaluate_checkpoint(
                "base", model, processor, splits.test, settings, run_dir, tracker, rank
            )
            if rank.is_main:
                log_gallery(run_dir, results, cfg, tracker)

        # --- train (or an existing adapter) ------------------------------------------------------------
        if "train" in cfg.stages and not cfg.eval.adapter:
            set_seed(cfg.train.seed)  # LoRA init draws random numbers: same seed, same starting adapter
            model = prepare_for_training(model, cfg.lora, cfg.hardware, cfg.backend)
            trained = train(
                model,
                processor,
                splits.train,
                splits.val,
                cfg,
                run_dir,
                callbacks=[TrainerLogsToMlflow(tracker), TimeLeft(_tuned_eval_estimate(cfg, results))],
                pixel_dtype=torch_dtype(cfg.hardware),
            )
            tracker.log_metrics(trained.metrics())
            if rank.is_main:
                write_json(run_dir / "train_summary.json", trained.metrics())
            tracker.log_artifact(trained.adapter_dir, "adapter")
        elif cfg.eval.adapter:
            model = attach_adapter(model, Path(cfg.eval.adapter))

        # --- tuned eval --------------------------------------------------------------------------------
        if "tuned_eval" in cfg.stages and ("train" in cfg.stages or cfg.eval.adapter):
            if cfg.backend == "unsloth":
                for_inference(model)  # Unsloth leaves training mode (no KV cache) on after training
            elif cfg.eval.merge_adapter and merge_for_evaluation(model):
                log.info(
                    "tuned evaluation: the LoRA merged into the model's weights (the saved adapter is as trained)"
                )
            results["tuned"] = evaluate_checkpoint(
                "tuned", model, processor, splits.test, settings, run_dir, tracker, rank
            )
            if rank.is_main:
                log_gallery(run_dir, results, cfg, tracker)

        # --- report ------------------------------------------------------------------------------------
        if {"base", "tuned"} <= results.keys() and rank.is_main:
            comparison = write_comparison(
                run_dir / "eval",
                run_dir / "plots",
                results["base"].predictions,
                results["tuned"].predictions,
                n_boot=cfg.eval.bootstrap_samples,
                seed=cfg.train.seed,
            )
            tracker.log_metrics(delta_metrics(comparison["paired"]))
            tracker.log_artifact(run_dir / "eval" / "comparison.json", "eval")
        tracker.log_artifact(run_dir / "plots", "plots")

    if not rank.is_main:
        return float("nan")  # rank 0 reports and returns the job's result
    print(
        closing_summary(
            cfg,
            run_dir,
            splits.summary(),
            results,
            trained,
            processor.tokenizer,
            [s.text for s in splits.train],
            time.monotonic() - started,
        )
    )
    print(f"MLflow run {tracker.run_id} in {tracker.uri}\n  view it with: {ui_command(tracker.uri)}")
    if tracker.pending_sync_command():
        print(f"  MLflow missed part of this run; upload it with: {tracker.pending_sync_command()}")
    cer = {name: result.metrics["cer"] for name, result in results.items()}
    return cer.get("tuned", cer.get("base", float("nan")))


if __name__ == "__main__":
    main()

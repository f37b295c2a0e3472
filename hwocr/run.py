"""The one entrypoint: `python -m hwocr.run +experiment=demo`.

config -> data -> model -> base eval -> train -> tuned eval -> report.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hwocr.config import Config, ConfigError, register_schema, to_config
from hwocr.data import DatasetError, load_splits, prepare_dataset
from hwocr.evaluate import delta_metrics, evaluate_checkpoint, generation_settings
from hwocr.model import ModelLoadError, attach_adapter, load_model, load_processor, prepare_for_training
from hwocr.preflight import PreflightError, check_hardware, torch_dtype
from hwocr.report import write_comparison, write_json
from hwocr.tracking import Tracker, TrackingError, TrainerLogsToMlflow, flatten, run_tags, ui_command
from hwocr.train import train

log = logging.getLogger("hwocr")
register_schema()

USER_ERRORS = (ConfigError, DatasetError, ModelLoadError, PreflightError, TrackingError)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(composed: DictConfig) -> float:
    try:
        return run(to_config(composed), OmegaConf.to_yaml(composed, resolve=True))
    except USER_ERRORS as error:
        log.error("%s", error)
        sys.exit(2)


def run(cfg: Config, resolved_yaml: str) -> float:
    """Run every selected stage; return the tuned corpus CER (the base CER if nothing was tuned)."""
    run_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir).resolve()
    check_hardware(cfg.hardware)

    prepare_dataset(cfg.dataset)
    splits = load_splits(cfg.dataset, seed=cfg.train.seed)

    tracker = Tracker(cfg.tracking, outputs_dir=Path("outputs"))
    tracker.check_reachable()
    with tracker:
        tracker.start(run_name=run_dir.name, tags=run_tags(cfg, run_dir))
        tracker.log_params(flatten(OmegaConf.to_container(OmegaConf.structured(cfg))))
        (run_dir / "resolved_config.yaml").write_text(resolved_yaml)
        tracker.log_artifact(run_dir / "resolved_config.yaml")
        tracker.log_metrics({f"data/{k}": v for k, v in splits.summary().items()})
        data_report = {"summary": splits.summary(), "skipped": [vars(s) for s in splits.skipped]}
        tracker.log_artifact(write_json(run_dir / "data_report.json", data_report))

        processor = load_processor(cfg.model)
        model = load_model(cfg.model, cfg.hardware)
        settings = generation_settings(cfg, processor, splits.test)

        results = {}
        if "base_eval" in cfg.stages:
            results["base"] = evaluate_checkpoint(
                "base", model, processor, splits.test, settings, run_dir, tracker
            )

        if "train" in cfg.stages and not cfg.eval.adapter:
            model = prepare_for_training(model, cfg.lora, cfg.hardware)
            trained = train(
                model,
                processor,
                splits.train,
                splits.val,
                cfg,
                run_dir,
                callbacks=[TrainerLogsToMlflow(tracker)],
                pixel_dtype=torch_dtype(cfg.hardware),
            )
            tracker.log_metrics(trained.metrics())
            tracker.log_artifact(trained.adapter_dir, "adapter")
        elif cfg.eval.adapter:
            model = attach_adapter(model, Path(cfg.eval.adapter))

        if "tuned_eval" in cfg.stages and ("train" in cfg.stages or cfg.eval.adapter):
            results["tuned"] = evaluate_checkpoint(
                "tuned", model, processor, splits.test, settings, run_dir, tracker
            )

        if {"base", "tuned"} <= results.keys():
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

    summary = {name: result.metrics["cer"] for name, result in results.items()}
    print(f"\nResults: {run_dir}")
    for name, cer in summary.items():
        print(f"  {name:5s} CER {cer:.2%}  ({run_dir / 'eval' / name / 'metrics.json'})")
    print(f"MLflow run {tracker.run_id} in {tracker.uri}\n  view it with: {ui_command(tracker.uri)}")
    return summary.get("tuned", summary.get("base", float("nan")))


if __name__ == "__main__":
    main()

"""Evaluate one checkpoint on the test set and write its report files."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwocr.config import Config
from hwocr.data import Sample
from hwocr.evaluate.generate import EvalStats, GenerationSettings, max_new_tokens_for, transcribe
from hwocr.metrics import Prediction
from hwocr.report import plot_single_eval, write_eval

if TYPE_CHECKING:  # mlflow stays out of benchmark and predict imports
    from hwocr.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "GenerationSettings",
    "delta_metrics",
    "evaluate_checkpoint",
    "generation_settings",
    "transcribe",
]


@dataclass
class EvalResult:
    predictions: list[Prediction]
    metrics: dict
    stats: EvalStats


def generation_settings(cfg: Config, processor, test: list[Sample]) -> GenerationSettings:
    """One set of settings for base and tuned alike, so the comparison is fair."""
    return GenerationSettings(
        prompt=cfg.model.prompt,
        max_new_tokens=max_new_tokens_for(
            [s.text for s in test], processor.tokenizer, cfg.eval.max_new_tokens_margin
        ),
        no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size,
        batch_size=cfg.eval.batch_size or cfg.hardware.eval_batch,
    )


def evaluate_checkpoint(
    name: str,
    model,
    processor,
    test: list[Sample],
    settings: GenerationSettings,
    run_dir: Path,
    tracker: "Tracker",
) -> EvalResult:
    predictions, stats = transcribe(model, processor, test, settings, desc=f"{name} eval")
    out_dir = run_dir / "eval" / name
    extra = {
        "images_per_s": stats.images_per_s,
        "eval_seconds": stats.seconds,
        "eval_batch_size": stats.batch_size,
    }
    metrics = write_eval(out_dir, predictions, extra=extra)
    log.info(
        "%s: CER %.2f%% on %d samples (%.1f images/s)",
        name,
        100 * metrics["cer"],
        len(test),
        stats.images_per_s,
    )
    plot_single_eval(run_dir / "plots", predictions, name)
    tracker.log_metrics({f"{name}/{k}": v for k, v in metrics.items()})
    tracker.log_artifact(out_dir, f"eval/{name}")
    return EvalResult(predictions, metrics, stats)


def delta_metrics(paired: dict) -> dict[str, float]:
    """`delta/*` metrics (tuned minus base) from a paired comparison."""
    return {
        f"delta/{key.removeprefix('cer_delta_').replace('cer_delta', 'cer')}": value
        for key, value in paired.items()
        if not key.startswith(("base_", "tuned_", "n_", "seed")) and isinstance(value, (int, float))
    }

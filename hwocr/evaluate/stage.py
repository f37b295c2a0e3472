"""Evaluate one checkpoint on the test set and write its report files."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwocr import distributed
from hwocr.config import Config
from hwocr.data import Sample
from hwocr.distributed import Rank
from hwocr.evaluate.generate import (
    EvalStats,
    GenerationSettings,
    configured_settings,
    max_new_tokens_for,
    transcribe,
)
from hwocr.evaluate.partial import PartialPredictions, eval_key
from hwocr.io import read_json
from hwocr.metrics import Prediction
from hwocr.report import PREDICTIONS_TABLE, plot_single_eval, write_eval

if TYPE_CHECKING:  # mlflow stays out of benchmark and predict imports
    from hwocr.tracking.client import Tracker

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
    margin = cfg.eval.max_new_tokens_margin
    max_new_tokens = max_new_tokens_for([s.text for s in test], processor.tokenizer, margin)
    return configured_settings(cfg.model, cfg.eval, processor.tokenizer, max_new_tokens, cfg.backend)


def evaluate_checkpoint(
    name: str,
    model,
    processor,
    test: list[Sample],
    settings: GenerationSettings,
    run_dir: Path,
    tracker: "Tracker",
    rank: Rank | None = None,
) -> EvalResult:
    """Each rank transcribes its shard; every rank gets all predictions in order; rank 0 reports.

    Resumable: each batch is appended to eval/<name>/predictions.partial.jsonl as it finishes, and a
    rerun transcribes only the samples not predicted yet (hwocr/evaluate/partial.py)."""
    rank = rank or Rank()
    out_dir = run_dir / "eval" / name
    shard = distributed.shard(test, rank)
    partial = PartialPredictions(out_dir, eval_key(name, settings, test, model), rank.rank)
    done = partial.load()
    todo = [s for s in shard if s.id not in done]
    if len(todo) < len(shard):
        log.info(
            "%s eval: %d of %d samples were predicted by an earlier attempt (%s); transcribing the other %d",
            name,
            len(shard) - len(todo),
            len(shard),
            partial.path,
            len(todo),
        )
    if todo:
        new_predictions, shard_stats = transcribe(
            model, processor, todo, settings, desc=f"{name} eval", on_batch=partial.append
        )
    else:
        new_predictions, shard_stats = [], EvalStats(0.0, 0.0, settings.batch_size, 0)
    by_id = done | {p.id: p for p in new_predictions}
    shard_predictions = [by_id[s.id] for s in shard]
    predictions = distributed.gather_in_order(shard_predictions, rank)
    stats = _combined(distributed.gather_in_order([shard_stats], rank), len(predictions))
    if not rank.is_main:
        return EvalResult(predictions, {}, stats)
    extra = {
        "images_per_s": stats.images_per_s,
        "eval_seconds": stats.seconds,
        "eval_batch_size": stats.batch_size,
        # samples whose output the repetition guard changed (it banned a token greedy decoding chose)
        "n_repetition_guarded": sum(p.guarded for p in predictions),
    }
    if stats.seconds == 0.0:
        # every prediction came from an earlier attempt: keep the throughput that attempt measured
        previous = read_json(out_dir / "metrics.json")
        extra = {k: previous.get(k, v) for k, v in extra.items()}
    metrics = write_eval(out_dir, predictions, extra=extra)
    log.info(
        "%s: CER %.2f%% on %d samples (%.1f images/s; the repetition guard changed %d)",
        name,
        100 * metrics["cer"],
        len(test),
        stats.images_per_s,
        metrics["n_repetition_guarded"],
    )
    plot_single_eval(run_dir / "plots", predictions, name)
    tracker.log_metrics({f"{name}/{k}": v for k, v in metrics.items()})
    tracker.log_artifact(out_dir, f"eval/{name}")
    tracker.declare_table(f"eval/{name}/{PREDICTIONS_TABLE}")
    return EvalResult(predictions, metrics, stats)


def _combined(per_rank: list[EvalStats], n_samples: int) -> EvalStats:
    """Throughput of all ranks together: they run in parallel, so the slowest sets the time."""
    seconds = max(s.seconds for s in per_rank)
    return EvalStats(
        images_per_s=n_samples / seconds if seconds else 0.0,
        seconds=seconds,
        batch_size=per_rank[0].batch_size,
        n_failed=sum(s.n_failed for s in per_rank),
    )


def delta_metrics(paired: dict) -> dict[str, float]:
    """`delta/*` metrics (tuned minus base) from a paired comparison."""
    return {
        f"delta/{key.removeprefix('cer_delta_').replace('cer_delta', 'cer')}": value
        for key, value in paired.items()
        if not key.startswith(("base_", "tuned_", "n_", "seed")) and isinstance(value, (int, float))
    }

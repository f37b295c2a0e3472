"""Paired comparison of two checkpoints evaluated on the same samples.

The bootstrap resamples *sample indices* and recomputes corpus CER on both sides from the per-sample
edit counts, so the pairing (same image, both models) is kept and the interval reflects
between-sample variance only.
"""

import numpy as np

from hwocr.metrics.cer import Prediction, SampleScore, score_all, summarize
from hwocr.text import normalize_text

# Resamples drawn per numpy batch: bounds memory at _BATCH x n_samples indices.
_BATCH = 250
_SUMMARY_KEYS = ("cer", "mean_cer", "median_cer", "perfect_match_rate")


def match_by_id(base: list[Prediction], tuned: list[Prediction]) -> tuple[list, list]:
    """(base, tuned reordered to base's order); ValueError naming the ids on any mismatch."""
    for name, preds in (("base", base), ("tuned", tuned)):
        if len({p.id for p in preds}) != len(preds):
            raise ValueError(f"duplicate sample ids in {name} predictions")
    base_ids, tuned_by_id = {p.id for p in base}, {p.id: p for p in tuned}
    only_base, only_tuned = sorted(base_ids - tuned_by_id.keys()), sorted(tuned_by_id.keys() - base_ids)
    if only_base or only_tuned:
        raise ValueError(
            f"base and tuned differ in sample ids: {len(only_base)} only in base {only_base[:10]}, "
            f"{len(only_tuned)} only in tuned {only_tuned[:10]}"
        )
    tuned_matched = [tuned_by_id[p.id] for p in base]
    for b, t in zip(base, tuned_matched, strict=True):
        if normalize_text(b.reference) != normalize_text(t.reference):
            raise ValueError(f"sample {b.id!r} has different references in base and tuned")
    return base, tuned_matched


def bootstrap_cer_delta(
    base_errors: np.ndarray, tuned_errors: np.ndarray, ref_lens: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Corpus CER (tuned - base) of `n_boot` paired resamples of the samples."""
    rng = np.random.default_rng(seed)
    n = len(ref_lens)
    deltas = []
    for start in range(0, n_boot, _BATCH):
        idx = rng.integers(0, n, size=(min(_BATCH, n_boot - start), n))
        # max(.,1): a resample of only empty references has no characters; its CER is then the raw count.
        chars = np.maximum(ref_lens[idx].sum(axis=1), 1)
        deltas.append((tuned_errors[idx].sum(axis=1) - base_errors[idx].sum(axis=1)) / chars)
    return np.concatenate(deltas)


def paired_comparison(
    base: list[Prediction], tuned: list[Prediction], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Corpus CER delta (tuned - base) with a paired-bootstrap 95% interval, and per-sample shares."""
    base, tuned = match_by_id(base, tuned)
    base_scores, tuned_scores = score_all(base), score_all(tuned)
    base_summary, tuned_summary = summarize(base_scores), summarize(tuned_scores)

    def errors(scores: list[SampleScore]) -> np.ndarray:
        return np.array([s.errors for s in scores], dtype=np.int64)

    ref_lens = np.array([s.ref_len for s in base_scores], dtype=np.int64)
    deltas = bootstrap_cer_delta(errors(base_scores), errors(tuned_scores), ref_lens, n_boot, seed)
    sample_delta = np.array([t.cer - b.cer for b, t in zip(base_scores, tuned_scores, strict=True)])
    cer_delta = tuned_summary["cer"] - base_summary["cer"]
    return {
        "n_samples": len(base),
        "n_boot": n_boot,
        "seed": seed,
        "cer_delta": cer_delta,
        "cer_delta_ci_low": float(np.percentile(deltas, 2.5)),
        "cer_delta_ci_high": float(np.percentile(deltas, 97.5)),
        "cer_relative_change": cer_delta / base_summary["cer"] if base_summary["cer"] else 0.0,
        # Share of resamples where tuned is not better: a one-sided bootstrap p-value for "tuned helps".
        "bootstrap_p_no_improvement": float(np.mean(deltas >= 0)),
        "mean_cer_delta": float(sample_delta.mean()),
        "share_improved": float(np.mean(sample_delta < 0)),
        "share_worse": float(np.mean(sample_delta > 0)),
        "share_unchanged": float(np.mean(sample_delta == 0)),
    } | {
        f"{side}_{key}": summary[key]
        for side, summary in (("base", base_summary), ("tuned", tuned_summary))
        for key in _SUMMARY_KEYS
    }

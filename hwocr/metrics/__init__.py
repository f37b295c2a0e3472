"""OCR metrics: CER/WER per sample and over a corpus, Vietnamese error breakdown, paired comparison."""

from hwocr.metrics.cer import (
    Prediction,
    SampleScore,
    best_blind_guess,
    by_length_bucket,
    by_writer,
    cer_by_group,
    confusion_pairs,
    corpus_metrics,
    error_rate,
    score,
    score_all,
    summarize,
)
from hwocr.metrics.paired import match_by_id, paired_comparison
from hwocr.metrics.vietnamese import classify_edit, strip_diacritics, strip_tones

__all__ = [
    "Prediction",
    "SampleScore",
    "best_blind_guess",
    "by_length_bucket",
    "by_writer",
    "cer_by_group",
    "classify_edit",
    "confusion_pairs",
    "error_rate",
    "corpus_metrics",
    "match_by_id",
    "paired_comparison",
    "score",
    "score_all",
    "strip_diacritics",
    "strip_tones",
    "summarize",
]

"""Character and word error rates, per sample and over a corpus.

Both sides are passed through `normalize_text` (NFC + whitespace collapse + strip) before scoring:
NFC vs NFD of the same Vietnamese text would otherwise score CER ~0.65.

Empty references: the naive per-sample CER of an empty reference is the number of inserted
characters, unbounded, and one such sample can dominate the mean. Here the per-sample CER of an
empty reference is 0.0 when the prediction is empty too, else 1.0 ("completely wrong"). Corpus
counts still add every insertion, so corpus CER is not softened.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from hwocr.metrics.vietnamese import vietnamese_counts
from hwocr.text import natural_key, normalize_text

LENGTH_EDGES = (20, 40, 60)


@dataclass
class Prediction:
    """One evaluated sample; a failed generation has prediction "" and a non-empty error."""

    id: str
    writer: str
    image: str
    reference: str
    prediction: str
    error: str = ""
    guarded: bool = False  # the repetition guard changed a token greedy decoding chose


@dataclass(frozen=True)
class SampleScore:
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_len: int
    hits: int
    word_errors: int
    word_ref_len: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def error_rate(errors: int, ref_len: int) -> float:
    """errors / ref_len, with the empty-reference rule of this module: 0.0 if no errors, else 1.0."""
    if ref_len == 0:
        return float(errors > 0)
    return errors / ref_len


def score(reference: str, prediction: str) -> SampleScore:
    """S/D/I from rapidfuzz editops on the normalised strings, plus word errors for WER."""
    return _score_normalized(normalize_text(reference), normalize_text(prediction))


def _score_normalized(ref: str, pred: str) -> SampleScore:
    substitutions = deletions = insertions = 0
    # A plain loop: Counter over the tags costs twice as much at 10k lines.
    for tag, _, _ in Levenshtein.editops(ref, pred):
        if tag == "replace":
            substitutions += 1
        elif tag == "delete":
            deletions += 1
        else:
            insertions += 1
    ref_words = ref.split()
    return SampleScore(
        cer=error_rate(substitutions + deletions + insertions, len(ref)),
        substitutions=substitutions,
        deletions=deletions,
        insertions=insertions,
        ref_len=len(ref),
        hits=len(ref) - substitutions - deletions,
        # rapidfuzz compares lists element-wise, so this is a word-level Levenshtein distance.
        word_errors=Levenshtein.distance(ref_words, pred.split()),
        word_ref_len=len(ref_words),
    )


def score_all(preds: list[Prediction]) -> list[SampleScore]:
    return [score(p.reference, p.prediction) for p in preds]


def summarize(scores: list[SampleScore]) -> dict:
    """Corpus and per-sample aggregates of already computed scores."""
    if not scores:
        raise ValueError("no samples to summarize")
    ref_chars = sum(s.ref_len for s in scores)
    substitutions = sum(s.substitutions for s in scores)
    deletions = sum(s.deletions for s in scores)
    insertions = sum(s.insertions for s in scores)
    cers = np.array([s.cer for s in scores])
    return {
        "cer": error_rate(substitutions + deletions + insertions, ref_chars),
        "mean_cer": float(cers.mean()),
        "median_cer": float(np.median(cers)),
        "perfect_match_rate": sum(s.errors == 0 for s in scores) / len(scores),
        "substitutions": substitutions,
        "deletions": deletions,
        "insertions": insertions,
        "substitution_rate": error_rate(substitutions, ref_chars),
        "deletion_rate": error_rate(deletions, ref_chars),
        "insertion_rate": error_rate(insertions, ref_chars),
        "wer": error_rate(sum(s.word_errors for s in scores), sum(s.word_ref_len for s in scores)),
        "n_samples": len(scores),
    }


def _vietnamese_breakdown(refs: list[str], hyps: list[str]) -> dict:
    """`vi_*` keys: tone / vowel-diacritic / base error counts and rates, CER ignoring tones or all marks."""
    counts = vietnamese_counts(refs, hyps)
    return {
        "vi_base_errors": counts.base_errors,
        "vi_tone_errors": counts.tone_errors,
        "vi_diacritic_errors": counts.diacritic_errors,
        "vi_base_error_rate": error_rate(counts.base_errors, counts.ref_chars),
        "vi_tone_error_rate": error_rate(counts.tone_errors, counts.ref_chars),
        "vi_diacritic_error_rate": error_rate(counts.diacritic_errors, counts.ref_chars),
        "vi_cer_no_tone": error_rate(counts.no_tone_edits, counts.no_tone_ref_chars),
        "vi_cer_no_diacritics": error_rate(counts.no_diacritic_edits, counts.no_diacritic_ref_chars),
    }


def corpus_metrics(preds: list[Prediction]) -> dict:
    """Flat metrics dict; failed samples are scored (as all deletions), never dropped."""
    # Normalise once: it is a third of the cost at 10k lines.
    refs = [normalize_text(p.reference) for p in preds]
    hyps = [normalize_text(p.prediction) for p in preds]
    return (
        summarize([_score_normalized(r, h) for r, h in zip(refs, hyps, strict=True)])
        | {"n_failed": sum(bool(p.error) for p in preds)}
        | _vietnamese_breakdown(refs, hyps)
    )


def confusion_pairs(preds: list[Prediction], top: int = 20) -> list[tuple[str, str, int]]:
    """Most frequent (ref_char, pred_char, count); deletions are (c, ""), insertions ("", c)."""
    pairs: Counter[tuple[str, str]] = Counter()
    for p in preds:
        ref, pred = normalize_text(p.reference), normalize_text(p.prediction)
        for tag, i, j in Levenshtein.editops(ref, pred):
            pairs["" if tag == "insert" else ref[i], "" if tag == "delete" else pred[j]] += 1
    return [(r, h, n) for (r, h), n in pairs.most_common(top)]


def by_writer(pred: Prediction) -> str:
    return pred.writer


def by_length_bucket(pred: Prediction, edges: tuple[int, ...] = LENGTH_EDGES) -> str:
    """Reference-length bucket label: "0-20", "20-40", "40-60", "60+" for the default edges."""
    length = len(normalize_text(pred.reference))
    lower = 0
    for upper in edges:
        if length < upper:
            return f"{lower}-{upper}"
        lower = upper
    return f"{lower}+"


def cer_by_group(preds: list[Prediction], key: Callable[[Prediction], str]) -> list[dict]:
    """Corpus CER per group (e.g. key=by_writer or by_length_bucket), in natural label order."""
    groups: dict[str, list[SampleScore]] = {}
    for p in preds:
        groups.setdefault(key(p), []).append(score(p.reference, p.prediction))
    return [
        {
            "group": label,
            "n_samples": len(scores),
            "ref_chars": sum(s.ref_len for s in scores),
            "cer": error_rate(sum(s.errors for s in scores), sum(s.ref_len for s in scores)),
            "mean_cer": float(np.mean([s.cer for s in scores])),
        }
        for label, scores in sorted(groups.items(), key=lambda item: natural_key(item[0]))
    ]


def best_blind_guess(
    train_texts: list[str], references: list[str], candidates: int = 200
) -> tuple[str, float]:
    """The score to beat for a model that claims to read: one training text written for every test
    image, whichever of the `candidates` most common ones gives the lowest corpus CER on
    `references`. Returns that text and its corpus CER."""
    refs = [normalize_text(r) for r in references]
    ref_chars = sum(len(r) for r in refs)
    counts = Counter(normalize_text(t) for t in train_texts)
    best = ("", error_rate(ref_chars, ref_chars))  # writing nothing deletes every character
    for guess, _ in counts.most_common(candidates):
        cer = error_rate(sum(Levenshtein.distance(r, guess) for r in refs), ref_chars)
        if cer < best[1]:
            best = (guess, cer)
    return best

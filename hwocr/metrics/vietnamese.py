"""Vietnamese error breakdown: which character errors are tone marks, vowel diacritics or base letters.

Method: align reference and prediction at the NFC character level (rapidfuzz editops), then compare
the NFD decomposition of each substituted pair:

- different base letter (case included)          -> base error
- same base, different tone mark                 -> tone error
- same base, different vowel diacritic or đ/d    -> diacritic error
- same base, both differ ("ớ" -> "o")            -> counted once in *each* of tone and diacritic,
  so the three buckets can add up to more than S+D+I; each bucket reads as "how many reference
  characters carry this kind of error".

đ/d is a diacritic error: like ă/a or ơ/o it is a letter "with a mark" that the writer or the model can
drop, and `strip_diacritics` folds it the same way. Insertions and deletions are base errors, except a
lone combining mark (one NFC cannot compose onto its letter), which goes to its own bucket.
"""

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz.distance import Levenshtein

# The five Vietnamese tones: huyền, sắc, hỏi, ngã, nặng.
TONE_MARKS = frozenset("\u0300\u0301\u0309\u0303\u0323")
# Vowel diacritics: breve (ă), circumflex (â ê ô), horn (ơ ư).
VOWEL_MARKS = frozenset("\u0306\u0302\u031b")
# đ has no NFD decomposition, so its stroke is modelled as a pseudo-mark on d.
_STROKE = "stroke"
_STROKED = {"đ": "d", "Đ": "D"}


def _nfc_strip_table(marks: frozenset[str]) -> dict[int, str | None]:
    """str.translate table taking each precomposed Latin letter straight to its form without `marks`.

    Translating NFC text directly skips NFD -> drop marks -> NFC, which matters at 10k lines.
    Lone combining marks (ones NFC could not compose onto their letter) are dropped too.
    """
    table: dict[int, str | None] = {ord(mark): None for mark in marks}
    for code in [*range(0x00C0, 0x0250), *range(0x1E00, 0x1F00)]:
        nfd = unicodedata.normalize("NFD", chr(code))
        stripped = unicodedata.normalize("NFC", "".join(c for c in nfd if c not in marks))
        if stripped != chr(code):
            table[code] = stripped
    return table


_TONE_TABLE = _nfc_strip_table(TONE_MARKS)
# The Combining Diacritical Marks block holds every mark Vietnamese uses.
_DIACRITIC_TABLE = _nfc_strip_table(frozenset(map(chr, range(0x0300, 0x0370)))) | {
    ord(k): v for k, v in _STROKED.items()
}


@dataclass(frozen=True)
class VietnameseCounts:
    """Raw counts; `hwocr.metrics.cer.corpus_metrics` turns them into rates over `ref_chars`."""

    base_errors: int
    tone_errors: int
    diacritic_errors: int
    ref_chars: int
    no_tone_edits: int
    no_tone_ref_chars: int
    no_diacritic_edits: int
    no_diacritic_ref_chars: int


def strip_tones(text: str) -> str:
    """Remove the five tone marks of NFC text, keep vowel diacritics: "người" -> "ngươi"."""
    return text.translate(_TONE_TABLE)


def strip_diacritics(text: str) -> str:
    """Remove every mark of NFC Latin text and fold đ -> d: "đường" -> "duong"."""
    return text.translate(_DIACRITIC_TABLE)


@lru_cache(maxsize=4096)
def _decompose(char: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """(base letters, tone marks, other marks) of one NFC character."""
    if char in _STROKED:
        return _STROKED[char], frozenset(), frozenset({_STROKE})
    nfd = unicodedata.normalize("NFD", char)
    marks = {c for c in nfd if unicodedata.combining(c)}
    base = "".join(c for c in nfd if not unicodedata.combining(c))
    tones = frozenset(marks & TONE_MARKS)
    return base, tones, frozenset(marks - tones)


@lru_cache(maxsize=65536)
def classify_edit(ref_char: str, pred_char: str) -> tuple[str, ...]:
    """Error kinds ("base", "tone", "diacritic") of one aligned edit; "" marks an insertion/deletion."""
    if not ref_char or not pred_char:
        char = ref_char or pred_char
        if char in TONE_MARKS:
            return ("tone",)
        return ("diacritic",) if unicodedata.combining(char) else ("base",)
    ref_base, ref_tones, ref_marks = _decompose(ref_char)
    pred_base, pred_tones, pred_marks = _decompose(pred_char)
    if ref_base != pred_base:
        return ("base",)
    kinds = []
    if ref_tones != pred_tones:
        kinds.append("tone")
    if ref_marks != pred_marks:
        kinds.append("diacritic")
    # Same letter, same marks, yet NFC-different cannot happen for NFC input; treat it as a base error.
    return tuple(kinds) or ("base",)


def vietnamese_counts(references: list[str], predictions: list[str]) -> VietnameseCounts:
    """Count error kinds over NFC-normalised (reference, prediction) pairs."""
    kinds = {"base": 0, "tone": 0, "diacritic": 0}
    no_tone_edits = no_diacritic_edits = no_tone_ref = no_diacritic_ref = 0
    for ref, pred in zip(references, predictions, strict=True):
        for tag, i, j in Levenshtein.editops(ref, pred):
            ref_char = "" if tag == "insert" else ref[i]
            pred_char = "" if tag == "delete" else pred[j]
            for kind in classify_edit(ref_char, pred_char):
                kinds[kind] += 1
        ref_no_tone, ref_plain = strip_tones(ref), strip_diacritics(ref)
        no_tone_edits += Levenshtein.distance(ref_no_tone, strip_tones(pred))
        no_diacritic_edits += Levenshtein.distance(ref_plain, strip_diacritics(pred))
        no_tone_ref += len(ref_no_tone)
        no_diacritic_ref += len(ref_plain)
    return VietnameseCounts(
        base_errors=kinds["base"],
        tone_errors=kinds["tone"],
        diacritic_errors=kinds["diacritic"],
        ref_chars=sum(map(len, references)),
        no_tone_edits=no_tone_edits,
        no_tone_ref_chars=no_tone_ref,
        no_diacritic_edits=no_diacritic_edits,
        no_diacritic_ref_chars=no_diacritic_ref,
    )

"""Character diff of a prediction against its reference, for the error gallery.

The alignment is rapidfuzz's Levenshtein opcodes on the normalised strings, the same alignment that
scores S/D/I (hwocr/metrics/cer.py), so the marks on a line add up to its counts. Each edited
character is then classified by the Vietnamese breakdown (hwocr/metrics/vietnamese.py): a
substitution that keeps the base letter is a tone error, a vowel-diacritic (or đ/d) error, or both,
and is shown as such rather than as a plain substitution.
"""

from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from hwocr.metrics import classify_edit
from hwocr.text import normalize_text

EQUAL, SUBSTITUTION, DELETION, INSERTION = "equal", "substitution", "deletion", "insertion"
TONE, DIACRITIC = "tone", "diacritic"
# Every error kind a segment can carry, in the order the gallery lists them.
ERROR_KINDS = (SUBSTITUTION, DELETION, INSERTION, TONE, DIACRITIC)


@dataclass(frozen=True)
class Segment:
    """A run of characters with one operation. `kinds` is () for equal text, else the error kinds:
    (substitution,), (deletion,), (insertion,), or some of (tone, diacritic) for a same-letter edit."""

    op: str  # equal | replace | delete | insert (rapidfuzz's tags)
    reference: str
    prediction: str
    kinds: tuple[str, ...] = ()


def _kinds(op: str, ref_char: str, pred_char: str) -> tuple[str, ...]:
    marks = classify_edit(ref_char, pred_char)  # ("base",) or some of ("tone", "diacritic")
    if "base" not in marks:
        return marks
    return ({"replace": SUBSTITUTION, "delete": DELETION, "insert": INSERTION}[op],)


def align(reference: str, prediction: str) -> list[Segment]:
    """Segments covering both normalised strings in order; neighbours of one kind are merged."""
    ref, pred = normalize_text(reference), normalize_text(prediction)
    segments: list[Segment] = []

    def add(op: str, ref_part: str, pred_part: str, kinds: tuple[str, ...]) -> None:
        last = segments[-1] if segments else None
        if last and last.op == op and last.kinds == kinds:
            segments[-1] = Segment(op, last.reference + ref_part, last.prediction + pred_part, kinds)
        else:
            segments.append(Segment(op, ref_part, pred_part, kinds))

    for block in Levenshtein.opcodes(ref, pred):
        ref_part, pred_part = ref[block.src_start : block.src_end], pred[block.dest_start : block.dest_end]
        if block.tag == EQUAL:
            add(EQUAL, ref_part, pred_part, ())
        elif block.tag == "replace":  # rapidfuzz's replace blocks pair characters one to one
            for r, p in zip(ref_part, pred_part, strict=True):
                add("replace", r, p, _kinds("replace", r, p))
        elif block.tag == "delete":
            for r in ref_part:
                add("delete", r, "", _kinds("delete", r, ""))
        else:
            for p in pred_part:
                add("insert", "", p, _kinds("insert", "", p))
    return segments


def error_kinds(segments: list[Segment]) -> set[str]:
    return {kind for segment in segments for kind in segment.kinds}

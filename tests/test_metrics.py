import random
import unicodedata

import jiwer
import numpy as np
import pytest
from spec import METRIC_KEYS, VIETNAMESE_KEYS

from hwocr.metrics import (
    Prediction,
    by_length_bucket,
    by_writer,
    cer_by_group,
    classify_edit,
    confusion_pairs,
    corpus_metrics,
    paired_comparison,
    score,
    strip_diacritics,
    strip_tones,
)
from hwocr.text import normalize_text


def pred(reference: str, prediction: str, id: str = "", writer: str = "w1", error: str = "") -> Prediction:
    return Prediction(id or reference, writer, f"{id}.jpg", reference, prediction, error)


def test_substitution():
    s = score("abc", "abd")
    assert (s.substitutions, s.deletions, s.insertions, s.hits, s.ref_len) == (1, 0, 0, 2, 3)
    assert s.cer == pytest.approx(1 / 3)


def test_deletion_and_insertion():
    deleted = score("abcd", "abd")
    assert (deleted.substitutions, deleted.deletions, deleted.insertions) == (0, 1, 0)
    assert deleted.cer == pytest.approx(1 / 4)
    inserted = score("abc", "abxc")
    assert (inserted.substitutions, inserted.deletions, inserted.insertions) == (0, 0, 1)
    assert inserted.cer == pytest.approx(1 / 3)


def test_identical_is_perfect():
    metrics = corpus_metrics([pred("xin chào", "xin chào")])
    assert metrics["cer"] == 0 and metrics["wer"] == 0 and metrics["perfect_match_rate"] == 1


def test_nfc_vs_nfd_and_whitespace_score_zero():
    text = "Tiếng Việt có dấu"
    s = score(text, "  " + unicodedata.normalize("NFD", text).replace(" ", "   ") + "\n")
    assert s.cer == 0 and s.word_errors == 0


def test_empty_reference_is_capped_per_sample_but_counted_in_corpus():
    assert score("", "").cer == 0
    assert score("", "abcde").cer == 1.0
    metrics = corpus_metrics([pred("", "abcde", id="a"), pred("abcde", "abcde", id="b")])
    assert metrics["insertions"] == 5
    assert metrics["cer"] == pytest.approx(5 / 5)  # corpus: 5 insertions over 5 reference chars
    assert metrics["mean_cer"] == pytest.approx(0.5)


def test_empty_prediction_is_all_deletions():
    s = score("abc", "")
    assert (s.deletions, s.cer) == (3, 1.0)


def test_failed_sample_counted_and_scored():
    metrics = corpus_metrics([pred("abcd", "", id="a", error="CUDA OOM"), pred("abcd", "abcd", id="b")])
    assert metrics["n_failed"] == 1 and metrics["n_samples"] == 2
    assert metrics["deletions"] == 4 and metrics["cer"] == pytest.approx(4 / 8)


def test_evaluate_has_exact_keys():
    assert set(corpus_metrics([pred("a b", "a c")])) == METRIC_KEYS | VIETNAMESE_KEYS


def test_evaluate_rejects_empty_list():
    with pytest.raises(ValueError):
        corpus_metrics([])


def _random_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    alphabet = "aăâbcdđeêoôơuưáàảãạớ "
    pairs = []
    for _ in range(n):
        ref = normalize_text("".join(rng.choices(alphabet, k=rng.randint(1, 40)))) or "a"
        hyp = list(ref)
        for _ in range(rng.randint(0, 8)):
            op, pos = rng.random(), rng.randrange(len(hyp) + 1)
            if op < 0.4 and pos < len(hyp):
                hyp[pos] = rng.choice(alphabet)
            elif op < 0.7 and pos < len(hyp):
                del hyp[pos]
            else:
                hyp.insert(pos, rng.choice(alphabet))
        pairs.append((ref, normalize_text("".join(hyp))))
    return pairs


def test_agrees_with_jiwer():
    pairs = _random_pairs(300, seed=1)
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    expected = jiwer.process_characters(refs, hyps)
    metrics = corpus_metrics([pred(r, h, id=str(i)) for i, (r, h) in enumerate(pairs)])
    assert (metrics["substitutions"], metrics["deletions"], metrics["insertions"]) == (
        expected.substitutions,
        expected.deletions,
        expected.insertions,
    )
    assert metrics["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    non_empty = [(r, h) for r, h in pairs if r.split()]
    with_words = corpus_metrics([pred(r, h, id=str(i)) for i, (r, h) in enumerate(non_empty)])
    assert with_words["wer"] == pytest.approx(jiwer.wer([r for r, _ in non_empty], [h for _, h in non_empty]))


@pytest.mark.parametrize(
    ("ref", "hyp", "kinds"),
    [
        ("ọ", "o", ("tone",)),
        ("ư", "u", ("diacritic",)),
        ("ớ", "o", ("tone", "diacritic")),
        ("đ", "d", ("diacritic",)),  # đ/d is a vowel-mark-like diacritic error, see vietnamese.py
        ("a", "b", ("base",)),
        ("á", "b", ("base",)),
        ("A", "a", ("base",)),
        ("a", "", ("base",)),
        ("", "\u0301", ("tone",)),
    ],
)
def test_classify_edit(ref, hyp, kinds):
    assert classify_edit(ref, hyp) == kinds


def test_vietnamese_breakdown():
    tone = corpus_metrics([pred("học", "hoc")])
    assert (tone["vi_tone_errors"], tone["vi_diacritic_errors"], tone["vi_base_errors"]) == (1, 0, 0)
    assert tone["vi_tone_error_rate"] == pytest.approx(1 / 3)
    assert tone["vi_cer_no_tone"] == 0
    wet = corpus_metrics([pred("ướt", "uot")])  # ư->u: diacritic; ớ->o: tone and diacritic
    assert (wet["vi_tone_errors"], wet["vi_diacritic_errors"], wet["vi_base_errors"]) == (1, 2, 0)
    assert wet["vi_cer_no_tone"] == pytest.approx(2 / 3)
    assert wet["vi_cer_no_diacritics"] == 0
    go = corpus_metrics([pred("đi", "di")])
    assert (go["vi_diacritic_errors"], go["vi_base_errors"], go["vi_cer_no_diacritics"]) == (1, 0, 0)
    missing = corpus_metrics([pred("ba", "b")])
    assert missing["vi_base_errors"] == 1


def test_strip_marks():
    assert strip_tones("Người Việt") == "Ngươi Viêt"
    assert strip_diacritics("Đường phố ướt") == "Duong pho uot"


def test_confusion_pairs():
    pairs = confusion_pairs([pred("học", "hoc", id="a"), pred("ọc", "o", id="b"), pred("a", "ab", id="c")])
    assert pairs[0] == ("ọ", "o", 2)
    assert ("c", "", 1) in pairs and ("", "b", 1) in pairs


def test_cer_by_group():
    preds = [
        pred("abcd", "abcd", id="1", writer="10"),
        pred("abcd", "abce", id="2", writer="9"),
        pred("a" * 30, "a" * 30, id="3", writer="9"),
        pred("a" * 70, "b" * 70, id="4", writer="10"),
    ]
    writers = cer_by_group(preds, by_writer)
    assert [row["group"] for row in writers] == ["9", "10"]
    assert writers[0]["cer"] == pytest.approx(1 / 34) and writers[0]["n_samples"] == 2
    buckets = cer_by_group(preds, by_length_bucket)
    assert [row["group"] for row in buckets] == ["0-20", "20-40", "60+"]
    assert buckets[-1]["cer"] == 1.0


def _paired(base_hyps: list[str], tuned_hyps: list[str], refs: list[str]):
    base = [pred(r, h, id=str(i)) for i, (r, h) in enumerate(zip(refs, base_hyps, strict=True))]
    tuned = [pred(r, h, id=str(i)) for i, (r, h) in enumerate(zip(refs, tuned_hyps, strict=True))]
    return base, tuned


def test_paired_shares_and_point_estimate():
    refs = ["abcd", "abcd", "abcd", "abcd"]
    base, tuned = _paired(["abxx", "abcd", "abcx", "xxxx"], ["abcd", "abcx", "abcx", "abxx"], refs)
    result = paired_comparison(base, list(reversed(tuned)), n_boot=500)
    assert (result["share_improved"], result["share_worse"], result["share_unchanged"]) == (0.5, 0.25, 0.25)
    assert result["cer_delta"] == pytest.approx(4 / 16 - 7 / 16)
    assert result["base_cer"] == pytest.approx(7 / 16) and result["tuned_cer"] == pytest.approx(4 / 16)
    assert result["cer_delta_ci_low"] <= result["cer_delta"] <= result["cer_delta_ci_high"]


def test_paired_ci_is_narrow_for_uniform_effect():
    rng = random.Random(0)
    refs = ["".join(rng.choices("abcdef", k=50)) for _ in range(400)]
    # Every sample loses exactly 5 errors: the delta is the same whichever samples are drawn.
    base, tuned = _paired([r[:40] for r in refs], [r[:45] for r in refs], refs)
    result = paired_comparison(base, tuned, n_boot=1000, seed=3)
    assert result["cer_delta"] == pytest.approx(-0.1)
    assert result["cer_delta_ci_high"] - result["cer_delta_ci_low"] < 1e-9
    assert result["bootstrap_p_no_improvement"] == 0
    assert np.isclose(result["mean_cer_delta"], -0.1)


def test_paired_is_reproducible():
    refs = [r for r, _ in _random_pairs(50, seed=2)]
    base, tuned = _paired([r[::-1] for r in refs], [r[:-1] for r in refs], refs)
    assert paired_comparison(base, tuned, seed=7) == paired_comparison(base, tuned, seed=7)


def test_paired_mismatched_ids_raise():
    base = [pred("a", "a", id="x"), pred("b", "b", id="y")]
    tuned = [pred("a", "a", id="x"), pred("b", "b", id="z")]
    with pytest.raises(ValueError, match=r"'y'.*'z'"):
        paired_comparison(base, tuned)


def test_paired_different_references_raise():
    with pytest.raises(ValueError, match="different references"):
        paired_comparison([pred("a", "a", id="x")], [pred("b", "a", id="x")])

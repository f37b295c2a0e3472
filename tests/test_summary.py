"""The closing summary says only what the run shows, and the time-left estimate does its arithmetic."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from hwocr.metrics import Prediction
from hwocr.report.summary import checks, closing_summary, learning, reading, unigram_entropy
from hwocr.train.progress import TimeLeft, duration


class Tokenizer:
    """Characters as tokens, EOS id 0: a 5-token vocabulary."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [" ab".index(c) + 1 for c in text]}

    def __len__(self):
        return 5


@dataclass
class Trained:
    log_history: list
    steps: int = 4


@dataclass
class Result:
    predictions: list
    metrics: dict


def result(predictions: list[str]) -> Result:
    preds = [Prediction(str(i), "w", f"{i}.jpg", "ab", p) for i, p in enumerate(predictions)]
    return Result(preds, {"cer": 0.5, "n_samples": len(preds), "n_failed": 0})


def test_unigram_entropy_counts_eos_like_the_training_loss():
    # "ab" twice: tokens a, b, EOS equally often
    assert unigram_entropy(["ab", "ab"], Tokenizer()) == pytest.approx(math.log(3))


def test_the_loss_is_described_by_where_it_ended():
    texts, tokenizer = ["ab", "ab"], Tokenizer()  # unigram 1.10 nats, uniform 1.61
    below = learning(Trained([{"loss": 1.6, "step": 1}, {"loss": 0.9, "step": 4}]), tokenizer, texts)
    assert "1.60 at step 1, 0.90 at step 4" in below[0] and "scores 1.61" in below[0] and "1.10" in below[0]
    assert "below the unigram figure" in below[1]
    toward = learning(Trained([{"loss": 1.6, "step": 1}, {"loss": 1.3, "step": 4}]), tokenizer, texts)
    assert "fell toward the unigram figure" in toward[1]
    flat = learning(
        Trained([{"loss": 1.6, "step": 1}, {"eval_loss": 1.6, "step": 2}, {"loss": 1.59, "step": 4}]),
        tokenizer,
        texts,
    )
    assert "did not fall" in flat[1] and len(flat) == 2  # one validation loss is no trend
    assert "fewer than two" in learning(Trained([{"loss": 1.6, "step": 1}]), tokenizer, texts)[0]


def result_of(references: list[str], predictions: list[str]) -> Result:
    from hwocr.metrics import corpus_metrics

    preds = [
        Prediction(str(i), "w", f"{i}.jpg", r, p)
        for i, (r, p) in enumerate(zip(references, predictions, strict=True))
    ]
    return Result(preds, corpus_metrics(preds))


def test_the_blind_guess_is_the_training_text_that_scores_best_on_the_test_set():
    from hwocr.metrics import best_blind_guess

    # "ba" is the most common training text, but "hai" is nearer the test references
    guess, cer = best_blind_guess(["ba", "ba", "ba", "hai"], ["hai", "hai", "hay"])
    assert guess == "hai" and cer == pytest.approx(1 / 9)
    assert best_blind_guess([], ["ab"]) == ("", 1.0)  # writing nothing deletes every character


def test_the_verdict_follows_the_cer_against_the_blind_guess():
    refs, train = ["một", "hai", "ba", "bốn"], ["một", "hai", "ba", "bốn"]
    read = reading({"base": result_of(refs, ["x"] * 4), "tuned": result_of(refs, refs)}, train)
    assert (
        "reads 4 of them exactly and writes 4 distinct" in read[0] and "base 100.00%, tuned 0.00%" in read[0]
    )
    assert "under half the image-blind guess" in read[1]
    blind = reading({"tuned": result_of(refs, ["ba"] * 4)}, train)
    assert "reads 1 of them exactly and writes 1 distinct" in blind[0]
    assert "no better than the image-blind guess" in blind[1]
    close = reading({"tuned": result_of(refs, ["một", "hai", "bốn", "ba"])}, train)
    assert "beats the image-blind guess, but by less than half" in close[1]


def test_checks_name_what_is_missing(tmp_path):
    data = {"n_train": 8, "n_val": 2, "n_test": 2, "skipped_total": 0}
    for name in ("data_report.json", "resolved_config.yaml", "eval/gallery.html"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    lines = checks(tmp_path, data, {"base": result(["x"])}, Trained([]))
    assert [line.split()[:2] for line in lines] == [
        ["data", "ok"],
        ["base", "eval"],
        ["training", "MISSING"],
        ["report", "ok"],
    ]
    assert "MISSING eval/base/metrics.json, eval/base/predictions.csv" in lines[1]
    assert "checkpoints/checkpoint-4/hwocr_complete.json" in lines[2]


def test_a_real_model_s_run_ends_with_its_cer(tmp_path):
    cfg = SimpleNamespace(model=SimpleNamespace(build_tiny=False, image_size=1024))
    tuned = result_of(["ab", "ab"], ["a", "ab"])
    text = closing_summary(cfg, Path("/run"), {}, {"tuned": tuned}, None, Tokenizer(), ["ab"], 75)
    assert "the stages took 1m15s" in text and "tuned CER 25.00%" in text
    assert "The best guess that ignores the image (writing 'ab' for every image) scores 0.00%" in text


class State(SimpleNamespace):
    is_world_process_zero = True


def test_time_left_is_steps_left_at_the_measured_pace_plus_the_tuned_evaluation(monkeypatch, caplog):
    clock = iter([100.0, 110.0, 150.0])
    monkeypatch.setattr("hwocr.train.progress.time.monotonic", lambda: next(clock))
    callback, state = TimeLeft(after_training_s=30.0), State(global_step=0, max_steps=100)
    callback.on_train_begin(None, state, None)
    with caplog.at_level(logging.INFO, logger="hwocr"):
        state.global_step = 5  # 5 steps in 10 s: 95 steps left at 2 s
        callback.on_step_end(None, state, None)
        state.global_step = 10  # not yet the next report (every 10 steps)
        callback.on_step_end(None, state, None)
        state.global_step = 15  # 15 steps in 50 s
        callback.on_step_end(None, state, None)
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [
        " about 3m40s left in this job (3m10s of training, then the tuned evaluation, taken to last as "
        "long as the base one",
        " about 5m13s left in this job (4m43s of training, then the tuned evaluation, taken to last as "
        "long as the base one",
    ]
    assert duration(59.4) == "59s" and duration(3600) == "60m00s"

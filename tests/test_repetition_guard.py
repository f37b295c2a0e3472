"""The repetition guard (hwocr/evaluate/guard.py): what it bans, that it breaks loops, that it leaves
a non-looping output token-identical, and that metrics.json counts the samples it changed."""

import json
import random

import pytest
import torch

from hwocr.config import HardwareConfig, compose_config, register_schema, to_config
from hwocr.errors import ConfigError
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.evaluate.guard import WindowedNoRepeatNGram
from hwocr.evaluate.stage import evaluate_checkpoint
from hwocr.model import load_model, load_processor
from hwocr.tracking.client import NullTracker

PROMPT = "<image>\nFree OCR."
VOCAB = 12

register_schema()


def banned_by_definition(generated: list[int], n: int, window: int, whitelist=()) -> set[int]:
    """Tokens that would complete an n-gram already among the last `window` generated tokens."""
    t = len(generated)
    if t < n:
        return set()
    first = max(0, t - window) if window else 0
    prefix = generated[t - n + 1 :]
    return {
        generated[i + n - 1]
        for i in range(first, t - n + 1)
        if generated[i : i + n - 1] == prefix and generated[i + n - 1] not in whitelist
    }


@pytest.mark.parametrize("n, window", [(1, 5), (2, 0), (3, 7), (4, 20), (3, 3)])
def test_bans_exactly_the_tokens_that_repeat_an_ngram_within_the_window(n, window):
    rng = random.Random(n * 100 + window)
    prompt = [7, 7, 7, 7]  # a prompt's repeated tokens are not part of the generation
    whitelist = (5,)
    for _ in range(30):
        rows = [
            [rng.randrange(4) if rng.random() < 0.7 else rng.randrange(VOCAB) for _ in range(25)]
            for _ in range(3)
        ]
        guard = WindowedNoRepeatNGram(n, window, len(prompt), whitelist=whitelist)
        input_ids = torch.tensor([prompt + row for row in rows])
        scores = torch.randn(3, VOCAB)
        out = guard(input_ids, scores.clone())
        for row, row_scores, original in zip(rows, out, scores, strict=True):
            want = banned_by_definition(row, n, window, whitelist)
            assert {i for i in range(VOCAB) if row_scores[i] == float("-inf")} == want
            kept = [i for i in range(VOCAB) if i not in want]
            assert torch.equal(row_scores[kept], original[kept])


def greedy(next_scores, steps: int, guard: WindowedNoRepeatNGram | None) -> list[int]:
    """Greedy decoding of a scripted model (history -> scores), through the processor as
    transformers' generate calls it."""
    tokens: list[int] = []
    for _ in range(steps):
        scores = next_scores(tokens)[None]
        if guard is not None:
            scores = guard(torch.tensor([tokens], dtype=torch.long).reshape(1, -1), scores)
        tokens.append(int(scores.argmax()))
    return tokens


def looping_model(history: list[int]) -> torch.Tensor:
    """Prefers to continue the cycle 1 2 3 1 2 3 ...; the next-best choice is 4, then 5, ..."""
    scores = -torch.arange(VOCAB, dtype=torch.float)
    scores[(history[-1] % 3) + 1 if history else 1] = 10.0
    return scores


def test_a_looping_model_stops_looping():
    n, window = 4, 9
    plain = greedy(looping_model, 30, None)
    assert plain[:9] == [1, 2, 3] * 3  # it loops
    guard = WindowedNoRepeatNGram(n, window, prompt_length=0)
    guarded = greedy(looping_model, 30, guard)
    for t in range(n, len(guarded)):  # no n-gram repeats within the window
        assert guarded[t] not in banned_by_definition(guarded[:t], n, window)
    assert guarded != plain and bool(guard.changed.all())


def test_a_non_looping_output_is_token_identical():
    def counting_model(history):
        scores = torch.zeros(VOCAB)
        scores[len(history) % VOCAB] = 1.0  # 0 1 2 ... 11 0 1 ...: repeats only after 12 tokens
        return scores

    guard = WindowedNoRepeatNGram(3, 10, prompt_length=0)  # a window shorter than the period
    assert greedy(counting_model, 40, guard) == greedy(counting_model, 40, None)
    assert not bool(guard.changed.any())


def test_rows_that_have_stopped_are_neither_banned_nor_counted():
    eos = 9
    guard = WindowedNoRepeatNGram(2, 0, prompt_length=1, stop_ids=(eos,))
    input_ids = torch.tensor([[0, 4, eos, 0, 0, 0], [0, 4, 4, 4, 4, 4]])  # row 0 stopped, then padding
    scores = torch.zeros(2, VOCAB)
    scores[:, 4] = 1.0  # the greedy choice of both rows
    out = guard(input_ids, scores)
    assert torch.isfinite(out[0]).all()
    assert out[1, 4] == float("-inf")
    assert guard.changed.tolist() == [False, True]


# ---------------------------------------------------------------------------------------------
# on the tiny model, through transcribe / generate

LETTERS = "abcdefghij"


@pytest.fixture(scope="module")
def stuck_model(tiny_model_config):
    """The tiny model with an output head that ignores its input: letters in a fixed order of
    preference, never EOS. Greedy decoding writes 'aaaa...'."""
    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, HardwareConfig())
    head = model.lm_head
    stuck = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        stuck.weight.zero_()
        stuck.bias.fill_(-100.0)
        for rank, letter in enumerate(LETTERS):
            token_id = processor.tokenizer.convert_tokens_to_ids(letter)
            assert token_id != processor.tokenizer.unk_token_id
            stuck.bias[token_id] = 10.0 - rank
    model.lm_head = stuck
    return model, processor


@pytest.fixture(scope="module")
def lines(render_lines):
    return render_lines([(300, 60), (600, 60), (400, 60)])


def settings(n: int, window: int = 0) -> GenerationSettings:
    return GenerationSettings(
        PROMPT, max_new_tokens=20, batch_size=3, no_repeat_ngram=n, no_repeat_window=window
    )


def test_the_guard_breaks_a_real_generation_loop(stuck_model, lines):
    model, processor = stuck_model
    plain, _ = transcribe(model, processor, lines, settings(0))
    assert [p.prediction for p in plain] == ["a" * 20] * 3 and not any(p.guarded for p in plain)
    guarded, _ = transcribe(model, processor, lines, settings(2))
    for p in guarded:
        text = p.prediction
        assert len(text) == 20 and set(text) <= set(LETTERS)
        bigrams = [text[i : i + 2] for i in range(len(text) - 1)]
        assert len(set(bigrams)) == len(bigrams)  # window 0: no bigram twice in the whole output
        assert p.guarded


@pytest.mark.slow
def test_untouched_samples_are_unchanged_on_the_tiny_model(tiny_model_config, lines):
    """A sample the guard did not change equals the unguarded output; one it changed differs."""
    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, HardwareConfig())
    plain, _ = transcribe(model, processor, lines, settings(0))
    touched = []
    # the random tiny model loops with a period of 4 tokens: a 4-gram recurs just beyond a window of 4
    for n, window in ((4, 4), (6, 0)):
        guarded, _ = transcribe(model, processor, lines, settings(n, window))
        for a, b in zip(plain, guarded, strict=True):
            assert (a.prediction != b.prediction) == b.guarded, (n, a.prediction, b.prediction)
        touched.append(sum(p.guarded for p in guarded))
    assert touched == [0, len(lines)]  # both cases occur


@pytest.mark.parametrize("n, expected", [(0, 0), (2, 3)])
def test_metrics_json_counts_the_samples_the_guard_changed(stuck_model, lines, tmp_path, n, expected):
    model, processor = stuck_model
    result = evaluate_checkpoint(
        "base", model, processor, lines, settings(n), tmp_path / str(n), NullTracker()
    )
    written = json.loads((tmp_path / str(n) / "eval" / "base" / "metrics.json").read_text())
    assert written["n_repetition_guarded"] == result.metrics["n_repetition_guarded"] == expected
    rows = (tmp_path / str(n) / "eval" / "base" / "predictions.csv").read_text().splitlines()
    assert sum(row.endswith(",True") for row in rows[1:]) == expected


@pytest.mark.parametrize("experiment", ["lines", "words", "paragraphs"])
def test_real_presets_crop_as_deepseek_does_and_guard_repetition(experiment):
    cfg = to_config(compose_config(f"+experiment={experiment}"))
    assert cfg.model.name == "deepseek_ocr2" and cfg.model.image_mode == "dynamic"
    assert (cfg.model.image_size, cfg.model.tile_size) == (1024, 768)  # DeepSeek's base/image size
    guard = cfg.eval.repetition_guard
    assert (guard.ngram, guard.window, guard.whitelist) == (20, 90, ["<td>", "</td>"])
    v1 = to_config(compose_config(f"+experiment={experiment}", "model=deepseek_ocr", "model.revision=abc"))
    assert v1.eval.repetition_guard.ngram == 20


def test_guard_settings_are_checked():
    assert to_config(compose_config()).eval.repetition_guard.ngram == 20  # on unless a preset says otherwise
    with pytest.raises(ConfigError, match="eval.repetition_guard"):
        to_config(compose_config("eval.repetition_guard.ngram=30", "eval.repetition_guard.window=10"))
    demo = to_config(compose_config("+experiment=demo")).eval.repetition_guard
    assert (demo.ngram, demo.window) == (4, 0)

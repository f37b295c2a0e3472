"""Batches encoded in worker processes (hwocr/evaluate/encoding.py) are the inputs one processor
call gives, bit for bit, and transcribe through them predicts what it predicts through a thread."""

import logging
from dataclasses import replace

import pytest
import torch

from hwocr.config import ConfigError, HardwareConfig
from hwocr.evaluate import encoding
from hwocr.evaluate.encoding import BatchEncoder, encode_samples, join_slices
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.model import load_model, load_processor

PROMPT = "<image>\nFree OCR."
# wide lines crop into different numbers of tiles in crop mode, so their prompts differ in length
SIZES = [(400, 40), (100, 100), (300, 60), (40, 200), (250, 30)]


@pytest.fixture(scope="module")
def lines(render_lines):
    return render_lines(SIZES)


def _equal(a, b) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("mode", ["dynamic", "base"])
def test_slices_joined_are_the_inputs_of_one_processor_call(tiny_model_config, lines, mode):
    processor = load_processor(replace(tiny_model_config, image_mode=mode))
    whole = encode_samples(processor, lines, PROMPT)
    parts = [dict(encode_samples(processor, part, PROMPT)) for part in (lines[:2], lines[2:3], lines[3:])]
    lengths = {part["input_ids"].shape[1] for part in parts}
    assert len(lengths) > 1 or mode == "base", "the slices should need padding again"
    _equal(join_slices(parts, processor.tokenizer), whole)


def test_a_key_it_does_not_know_is_refused(tiny_model_config, lines):
    processor = load_processor(tiny_model_config)
    part = dict(encode_samples(processor, lines[:1], PROMPT))
    with pytest.raises(ValueError, match="image_sizes"):
        join_slices([{**part, "image_sizes": torch.zeros(1, 2)}], processor.tokenizer)


def test_negative_workers_are_a_config_error():
    from hwocr.config import Config, validate

    cfg = Config()
    cfg.eval.encode_workers = -1
    with pytest.raises(ConfigError, match="eval.encode_workers"):
        validate(cfg)


def test_a_processor_that_cannot_be_pickled_is_encoded_in_the_thread(tiny_model_config, lines, caplog):
    processor = load_processor(tiny_model_config)
    processor.hwocr_unpicklable = lambda: None  # a worker gets the processor pickled
    with (
        caplog.at_level(logging.WARNING, logger="hwocr.evaluate.encoding"),
        BatchEncoder(processor, PROMPT, workers=2) as encoder,
    ):
        encoder.submit(lines[:1]).result()
        inputs = encoder.submit(lines).result()
        assert encoder.workers == 0
    assert "could not start" in caplog.text
    _equal(inputs, encode_samples(processor, lines, PROMPT))


def test_negative_workers_are_refused_by_predict_too(tmp_path):
    from hwocr.predict import PredictConfig, predict

    with pytest.raises(ConfigError, match="encode_workers"):
        predict(PredictConfig(images=str(tmp_path), encode_workers=-2))


@pytest.mark.slow
def test_worker_processes_encode_what_the_thread_encodes(tiny_model_config, lines, monkeypatch):
    processor = load_processor(replace(tiny_model_config, image_mode="dynamic"))
    joined = []
    monkeypatch.setattr(
        encoding, "join_slices", lambda parts, *a: joined.append(len(parts)) or join_slices(parts, *a)
    )
    with BatchEncoder(processor, PROMPT, workers=2) as encoder:
        first = encoder.submit(lines[:2]).result()  # in the thread; the workers start after it
        [started.result() for started in encoding.start_workers(processor, 2).started]
        second = encoder.submit(lines).result()
    _equal(first, encode_samples(processor, lines[:2], PROMPT))
    _equal(second, encode_samples(processor, lines, PROMPT))
    assert joined == [2]


@pytest.mark.slow
def test_transcribe_through_workers_predicts_what_it_predicts_through_a_thread(
    tiny_model_config, lines, tmp_path, monkeypatch
):
    crops = replace(tiny_model_config, image_mode="dynamic")
    processor = load_processor(crops)
    model = load_model(crops, HardwareConfig(device="cpu", dtype="fp32")).eval()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [*lines[:3], replace(lines[3], id="test/broken", image=broken), *lines[3:]]
    settings = GenerationSettings(prompt=PROMPT, max_new_tokens=6, batch_size=2)
    in_thread, _ = transcribe(model, processor, samples, settings)
    joined = []
    # started and ready beforehand (as after base evaluation): else the thread encodes meanwhile
    [started.result() for started in encoding.start_workers(processor, 2).started]
    monkeypatch.setattr(
        encoding, "join_slices", lambda parts, *a: joined.append(len(parts)) or join_slices(parts, *a)
    )
    in_workers, _ = transcribe(model, processor, samples, replace(settings, encode_workers=2))
    # every batch went to the workers: the second failed there (the broken image) and was retried
    # one by one, the others came back as two slices each and were joined
    assert joined == [2, 2]
    assert [p.prediction for p in in_workers] == [p.prediction for p in in_thread]
    assert [bool(p.error) for p in in_workers] == [p.id == "test/broken" for p in samples]
    assert in_workers[3].error == in_thread[3].error

"""Batches encoded in slices by threads (hwocr/evaluate/fast/encoding.py) are the inputs one processor
call gives, bit for bit, and transcribe through them predicts what it predicts through one thread."""

import weakref
from dataclasses import replace

import pytest
import torch

from hwocr.config import ConfigError, HardwareConfig
from hwocr.evaluate.fast import encoding
from hwocr.evaluate.fast.encoding import BatchEncoder, join_slices
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import encode_samples
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


def test_no_encoding_thread_is_a_config_error():
    from hwocr.config import Config, validate

    cfg = Config()
    cfg.eval.encode_threads = 0
    with pytest.raises(ConfigError, match="eval.encode_threads"):
        validate(cfg)


def _counting_joins(monkeypatch, pins: list | None = None) -> list[int]:
    """Slices per joined batch; `pins` gets whether each was to be page-locked (joined pageable:
    a CPU build of torch has no page-locked memory)."""
    joined: list[int] = []

    def join(parts, tokenizer, pin=False):
        joined.append(len(parts))
        if pins is not None:
            pins.append(pin)
        return join_slices(parts, tokenizer)

    monkeypatch.setattr(encoding, "join_slices", join)
    return joined


@pytest.mark.parametrize("mode", ["dynamic", "base"])
def test_threads_encode_what_one_processor_call_encodes(tiny_model_config, lines, mode, monkeypatch):
    processor = load_processor(replace(tiny_model_config, image_mode=mode))
    pins: list[bool] = []
    joined = _counting_joins(monkeypatch, pins)
    with BatchEncoder(processor, PROMPT, threads=3, pin=True) as encoder:
        batches = [encoder.submit(lines).result(), encoder.submit(lines[:2]).result()]
    assert joined == [3, 2]  # a batch smaller than the thread count: one slice per sample
    assert pins == [True, True]
    _equal(batches[0], encode_samples(processor, lines, PROMPT))
    _equal(batches[1], encode_samples(processor, lines[:2], PROMPT))


def test_transcribe_through_threads_predicts_what_it_predicts_through_one(
    tiny_model_config, lines, tmp_path, monkeypatch
):
    crops = replace(tiny_model_config, image_mode="dynamic")
    processor = load_processor(crops)
    model = load_model(crops, HardwareConfig(device="cpu", dtype="fp32")).eval()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples = [*lines[:3], replace(lines[3], id="test/broken", image=broken), *lines[3:]]
    settings = GenerationSettings(prompt=PROMPT, max_new_tokens=6, batch_size=3)
    alone, _ = transcribe(model, processor, samples, replace(settings, encode_threads=1))
    joined = _counting_joins(monkeypatch)
    sliced, _ = transcribe(model, processor, samples, replace(settings, encode_threads=2))
    # the first batch came back as two slices, joined; the second failed in a slice (the broken
    # image) and was retried one by one
    assert joined == [2]
    assert [p.prediction for p in sliced] == [p.prediction for p in alone]
    assert [bool(p.error) for p in sliced] == [p.id == "test/broken" for p in samples]
    assert sliced[3].error == alone[3].error


@pytest.mark.parametrize("threads", [1, 2])
def test_the_encoder_never_encodes_with_the_callers_processor(tiny_model_config, lines, threads, monkeypatch):
    """The caller decodes with its processor's tokenizer while the next batch is encoded."""
    processor = load_processor(tiny_model_config)
    used = []
    encode = encoding.encode_samples
    monkeypatch.setattr(encoding, "encode_samples", lambda p, *a: used.append(p) or encode(p, *a))
    with BatchEncoder(processor, PROMPT, threads=threads) as encoder:
        inputs = encoder.submit(lines).result()
    assert len(used) == threads and all(p is not processor for p in used)
    _equal(inputs, encode(processor, lines, PROMPT))


@pytest.fixture
def allocator_settings(monkeypatch):
    """The settings torch's allocators run with, read back from torch (which has no public getter),
    on what passes for a GPU host with no allocator variables set; torch's own settings after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    before = torch._C._accelerator_getAllocatorSettings()
    torch._C._accelerator_setAllocatorSettings("")
    yield torch._C._accelerator_getAllocatorSettings
    torch._C._accelerator_setAllocatorSettings(before)


REGISTERING = "pinned_use_cuda_host_register:True"


def test_page_locking_goes_through_registration_unless_the_user_says_how(allocator_settings, monkeypatch):
    """Joined batches are page-locked by registering them (several times faster than cudaHostAlloc
    on GPU hosts); allocator settings naming pinned_ keys are the user's and stand."""
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "pinned_num_register_threads:2")
    torch._C._accelerator_setAllocatorSettings("pinned_num_register_threads:2")  # as torch read it at start
    encoding.prefer_registered_page_locking()
    assert allocator_settings() == "pinned_num_register_threads:2"
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # says nothing of page-locking
    encoding.prefer_registered_page_locking()
    assert REGISTERING in allocator_settings()


def test_the_encoder_registers_only_when_it_page_locks(tiny_model_config, allocator_settings):
    processor = load_processor(tiny_model_config)
    with BatchEncoder(processor, PROMPT, threads=2):
        pass
    assert REGISTERING not in allocator_settings()
    with BatchEncoder(processor, PROMPT, threads=2, pin=True):
        pass
    assert REGISTERING in allocator_settings()


def test_the_benchmarks_plain_pass_encodes_float_views(tiny_model_config, lines):
    """bench.py's plain pass: the processor's float32 views instead of the product's 8-bit ones."""
    from benchmarks import bench

    processor = load_processor(replace(tiny_model_config, image_mode="dynamic"))
    with bench.float_views(), BatchEncoder(processor, PROMPT, threads=2) as encoder:
        floats = encoder.submit(lines).result()
    with BatchEncoder(processor, PROMPT, threads=2) as encoder:
        eight_bit = encoder.submit(lines).result()
    assert floats["pixel_values"].dtype == torch.float32
    assert eight_bit["pixel_values"].dtype == torch.uint8
    assert torch.equal(floats["input_ids"], eight_bit["input_ids"])


def test_the_benchmarks_timeline_reads_transcribes_own_profiler_ranges(tiny_model_config, lines):
    """bench.py --timeline: one row per batch, from the ranges the product marks (hwocr/trace_markers.py)."""
    from benchmarks import bench

    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, HardwareConfig(device="cpu", dtype="fp32")).eval()
    settings = GenerationSettings(prompt=PROMPT, max_new_tokens=3, batch_size=2, encode_threads=2)
    rows: list[dict] = []
    with bench.batch_timeline(rows):
        transcribe(model, processor, lines, settings)
    assert len(rows) == 3  # 5 lines in batches of 2
    assert all(
        {"to_device_s", "generate_s", "encode_s_threads", "join_pageable_s"} <= set(row) for row in rows
    )
    assert all("waited_before_s" in row for row in rows[1:])
    assert all(0 <= row["to_device_s"] <= row["generate_s"] for row in rows)


def test_no_joined_batch_is_held_when_transcribe_hands_page_locked_memory_back(
    tiny_model_config, lines, monkeypatch
):
    """A block still referenced stays page-locked through emptying (and then through training):
    each batch gives its host tensors up on its way to the device (pixels_to_device)."""
    from hwocr.evaluate import generate

    processor = load_processor(replace(tiny_model_config, image_mode="dynamic"))
    model = load_model(
        replace(tiny_model_config, image_mode="dynamic"), HardwareConfig(device="cpu", dtype="fp32")
    )
    joined: list[weakref.ref] = []

    def join(parts, tokenizer, pin=False):  # CPU: joined as on a GPU, nothing page-locked
        out = join_slices(parts, tokenizer)
        joined.append(weakref.ref(out["pixel_values"]))
        return out

    held_at_emptying: list[int] = []
    monkeypatch.setattr(encoding, "join_slices", join)
    monkeypatch.setattr(generate, "BatchEncoder", lambda *a, pin: BatchEncoder(*a, pin=True))
    monkeypatch.setattr(
        generate, "empty_pinned_cache", lambda: held_at_emptying.append(sum(r() is not None for r in joined))
    )
    settings = GenerationSettings(prompt=PROMPT, max_new_tokens=4, batch_size=2, encode_threads=2)
    transcribe(model.eval(), processor, lines, settings)
    assert len(joined) == 3  # 5 lines in batches of 2
    assert held_at_emptying == [0]


def test_nothing_is_page_locked_or_registered_without_joined_batches(tiny_model_config, allocator_settings):
    with BatchEncoder(load_processor(tiny_model_config), PROMPT, threads=1, pin=True) as encoder:
        assert not encoder.pin
    assert REGISTERING not in allocator_settings()

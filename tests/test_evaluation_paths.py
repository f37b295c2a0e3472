"""The fast evaluation path decodes the reference path's tokens: the tiny DeepSeek-OCR-2 in fp32.

On a CPU these parts of the fast path run: the encoding threads (slices encoded apart and joined),
the compiled tower's padded chunks and its patch embedding as a matmul (torch.compile itself left
out: tests/test_optimizations.py compiles for real, as a slow test), and the graphed decoder's
static cache and step, run eagerly. The CUDA graph capture and page-locking need a GPU
(tests/test_decode.py's gpu tests capture it against the eager steps).
"""

import threading
from dataclasses import replace

import pytest
import torch

import hwocr.evaluate.fast.vision as fast_vision
from hwocr.config import DEFAULT_PROMPT, HardwareConfig
from hwocr.evaluate import generate, reference
from hwocr.evaluate.fast import encoding
from hwocr.evaluate.fast.encoding import BatchEncoder
from hwocr.evaluate.generate import GenerationSettings, generate_ids, transcribe
from hwocr.evaluate.reference import InlineEncoder
from hwocr.model import load_model, load_processor, vision_tower
from hwocr.model.vision import chunking


@pytest.fixture(scope="module")
def tiny(tiny_model_config):
    """Crop mode (prompts of different lengths: a left-padded batch) with language-model weights
    redrawn so that rows decode apart and the repetition guard has loops to ban."""
    cfg = replace(tiny_model_config, image_mode="dynamic")
    model = load_model(cfg, HardwareConfig(device="cpu", dtype="fp32")).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.model.language_model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    return model, load_processor(cfg)


@pytest.fixture(scope="module")
def lines(render_lines):
    return render_lines([(300, 64), (1200, 100), (900, 80), (640, 120)])


SETTINGS = GenerationSettings(
    DEFAULT_PROMPT, max_new_tokens=16, no_repeat_ngram=2, no_repeat_window=0, encode_threads=3
)


def test_the_fast_path_decodes_the_reference_paths_tokens(tiny, lines, monkeypatch):
    model, processor = tiny
    cpu, fp32 = torch.device("cpu"), torch.float32
    with InlineEncoder(processor, DEFAULT_PROMPT) as encoder:
        inputs = encoder.submit(lines).result()
    expected, prompt_length, reference_guard = generate_ids(
        model, processor, inputs, SETTINGS.reference(), cpu, fp32
    )

    used = []  # evidence that each fast part ran
    join, decode, unfold = encoding.join_slices, generate.greedy_generate, fast_vision.patches_as_matmul
    monkeypatch.setattr(encoding, "join_slices", lambda *a, **k: used.append("joined") or join(*a, **k))
    monkeypatch.setattr(
        generate, "greedy_generate", lambda *a, **k: used.append("decoder") or decode(*a, **k)
    )
    monkeypatch.setattr(fast_vision, "patches_as_matmul", lambda *a: used.append("matmul") or unfold(*a))
    monkeypatch.setattr(generate, "can_graph", lambda model: True)  # its steps run eagerly on the CPU
    monkeypatch.setattr(fast_vision.torch, "compile", lambda forward, dynamic: forward)
    tower = vision_tower(model)
    monkeypatch.setattr(chunking(tower), "size", 4)  # several chunks, the last one padded
    with BatchEncoder(processor, DEFAULT_PROMPT, threads=SETTINGS.encode_threads) as encoder:
        inputs = encoder.submit(lines).result()
    with fast_vision.compiled_vision(tower):
        got, _, guard = generate_ids(model, processor, inputs, SETTINGS, cpu, fp32)

    assert {"joined", "decoder", "matmul"} <= set(used)
    assert prompt_length < expected.shape[1]
    assert torch.equal(got, expected)
    assert bool(reference_guard.changed.any())  # the guard banned tokens on both paths alike
    assert torch.equal(guard.changed, reference_guard.changed)


def test_transcribe_on_the_reference_path_encodes_in_the_callers_thread(tiny, lines, monkeypatch):
    model, processor = tiny
    threads = []
    encode = reference.encode_samples
    monkeypatch.setattr(
        reference, "encode_samples", lambda *a: threads.append(threading.get_ident()) or encode(*a)
    )
    settings = replace(SETTINGS.reference(), batch_size=1, max_new_tokens=2)
    predictions, stats = transcribe(model, processor, lines[:2], settings)
    assert [p.id for p in predictions] == [s.id for s in lines[:2]] and stats.n_failed == 0
    assert threads == [threading.get_ident()] * 2

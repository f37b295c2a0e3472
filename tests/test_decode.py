"""greedy_generate (hwocr/evaluate/fast/decoding.py) decodes what model.generate(do_sample=False) decodes.

CPU tests run its steps eagerly on the tiny DeepSeek-OCR-2: the static cache, masks, positions,
stopping and logits processors are the same code the graph captures. The `gpu` tests capture it.
"""

import logging
from dataclasses import replace

import pytest
import torch
from transformers import LogitsProcessorList

import hwocr.evaluate.generate as generate_module
from hwocr.config import DEFAULT_PROMPT, HardwareConfig
from hwocr.evaluate.fast.decoding import can_graph, greedy_generate
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.evaluate.guard import WindowedNoRepeatNGram
from hwocr.inputs import encode
from hwocr.model import load_model, load_processor
from hwocr.model.adapt import unwrap

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def crops(tiny_model_config):
    """DeepSeek's crop mode: the number of crops, so the prompt's length, varies with the width."""
    return replace(tiny_model_config, image_mode="dynamic")


@pytest.fixture(scope="module")
def tiny(crops):
    processor = load_processor(crops)
    model = load_model(crops, HardwareConfig(device="cpu", dtype="fp32")).eval()
    _decode_apart(model)
    return model, processor


def _decode_apart(model):
    """Redraw the language model's matrices: the tiny model's own weights decode the same tokens for
    every image, and rows that differ are what tests of padding and stopping need."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.model.language_model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)


@pytest.fixture(scope="module")
def lines(render_lines):
    """Different widths: prompts of different lengths, so the batch is left-padded."""
    return render_lines([(300, 64), (1600, 120), (900, 80), (1200, 60), (640, 120)])


def _inputs(processor, samples, device="cpu", dtype=torch.float32):
    """The processor's batch on `device`, its pixel views in the model's `dtype`."""
    from PIL import Image

    images = [Image.open(s.image).convert("RGB") for s in samples]
    inputs = encode(processor, images, [DEFAULT_PROMPT] * len(images), padding=True, return_tensors="pt")
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


def _generate(model, inputs, eos, pad, processors=()):
    with torch.inference_mode():
        return model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList(list(processors)),
        )


def test_the_batch_is_left_padded(tiny, lines):
    # the premise of the tests below: rows of different prompt lengths
    lengths = _inputs(tiny[1], lines)["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1


def test_decoder_equals_generate_on_a_left_padded_batch(tiny, lines):
    model, processor = tiny
    tokenizer = processor.tokenizer
    inputs = _inputs(processor, lines)
    expected = _generate(model, inputs, tokenizer.eos_token_id, tokenizer.pad_token_id)
    got = greedy_generate(model, inputs, NEW_TOKENS, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert torch.equal(got, expected)


def test_rows_that_finish_early_are_padded_and_decoding_stops_as_generate_stops(tiny, lines):
    model, processor = tiny
    tokenizer = processor.tokenizer
    inputs = _inputs(processor, lines)
    prompt = inputs["input_ids"].shape[1]
    free = _generate(model, inputs, tokenizer.eos_token_id, tokenizer.pad_token_id)[:, prompt:]
    # a token some rows produce early and others later (or never) plays EOS

    def first_at(token: int) -> list[int | None]:
        return [(row == token).nonzero()[0, 0].item() if (row == token).any() else None for row in free]

    eos = next((int(t) for t in free.unique() if len(set(first_at(int(t)))) > 1), None)
    assert eos is not None, free  # the redrawn weights decode the rows apart
    first_at = first_at(eos)
    expected = _generate(model, inputs, eos, tokenizer.pad_token_id)
    got = greedy_generate(model, inputs, NEW_TOKENS, eos, tokenizer.pad_token_id)
    assert torch.equal(got, expected)
    if all(at is not None for at in first_at):  # every row stopped: so did decoding
        assert got.shape[1] == prompt + max(first_at) + 1


def test_logits_processors_see_what_they_see_under_generate(tiny, lines):
    model, processor = tiny
    tokenizer = processor.tokenizer
    inputs = _inputs(processor, lines)
    prompt = inputs["input_ids"].shape[1]
    guards = [WindowedNoRepeatNGram(4, 8, prompt) for _ in range(2)]  # the tiny model loops: it bans
    expected = _generate(model, inputs, tokenizer.eos_token_id, tokenizer.pad_token_id, [guards[0]])
    got = greedy_generate(
        model,
        inputs,
        NEW_TOKENS,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        LogitsProcessorList([guards[1]]),
    )
    assert bool(guards[0].changed.any())
    assert torch.equal(got, expected)
    assert torch.equal(guards[1].changed, guards[0].changed)


def test_transcribe_through_the_decoder_gives_generates_texts(tiny, lines, monkeypatch):
    model, processor = tiny
    settings = GenerationSettings(
        DEFAULT_PROMPT, max_new_tokens=NEW_TOKENS, batch_size=2, no_repeat_ngram=2, no_repeat_window=0
    )
    plain, _ = transcribe(
        model, processor, lines, GenerationSettings(**{**vars(settings), "graph_decoding": False})
    )
    monkeypatch.setattr(generate_module, "can_graph", lambda model: True)  # eager steps on the CPU
    decoded, _ = transcribe(model, processor, lines, settings)
    assert [(p.prediction, p.guarded) for p in decoded] == [(p.prediction, p.guarded) for p in plain]
    assert any(p.guarded for p in plain)


@pytest.mark.parametrize("backend,graphed", [("hf", True), ("unsloth", False)])
def test_evaluation_graphs_decoding_only_through_transformers_own_forward(tiny, backend, graphed):
    from hwocr.config import Config, LoraConfig
    from hwocr.evaluate.stage import generation_settings

    cfg = Config(backend=backend, lora=LoraConfig(experts=False))
    assert generation_settings(cfg, tiny[1], []).graph_decoding is graphed


@pytest.mark.parametrize("family, fast", [("ocr2", True), ("paddleocr_vl", False), ("glm_ocr", False)])
def test_only_deepseek_ocr2_takes_the_fast_path_in_run_and_predict(tiny, family, fast):
    """eval.* asks for every speedup; families without DeepSeek-OCR-2's get the reference path."""
    from hwocr.config import Config, EvalConfig, ModelConfig
    from hwocr.evaluate.generate import configured_settings
    from hwocr.evaluate.stage import generation_settings

    speedups = EvalConfig(compile_vision=True, graph_decoding=True, encode_threads=2)
    model = ModelConfig(family=family)
    for settings in (
        generation_settings(Config(model=model, eval=speedups), tiny[1], []),
        configured_settings(model, speedups, tiny[1].tokenizer, 16),  # hwocr.predict's
    ):
        asked = (settings.compile_vision, settings.graph_decoding, settings.encode_threads > 0)
        assert asked == (fast, fast, fast), settings


# ------------------------------------------------------------------------------------------------
# captured on a GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def on_gpu(crops, lines):
    """(model, inputs, (eos, pad)): the tiny model in bf16 on the GPU and the left-padded batch."""
    processor = load_processor(crops)
    model = load_model(crops, HardwareConfig(device="cuda", dtype="bf16")).eval()
    _decode_apart(model)
    tokenizer = processor.tokenizer
    inputs = _inputs(processor, lines, "cuda", torch.bfloat16)
    return model, inputs, (tokenizer.eos_token_id, tokenizer.pad_token_id)


@pytest.mark.gpu
@gpu
def test_graphed_steps_equal_the_eager_steps_on_a_gpu(on_gpu, monkeypatch, caplog):
    model, inputs, ids = on_gpu
    assert can_graph(model)
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda g: replays.append(1) or replay(g))
    with caplog.at_level(logging.WARNING, logger="hwocr.evaluate.fast.decoding"):
        got = greedy_generate(model, inputs, NEW_TOKENS, *ids)
    assert replays and "could not be captured" not in caplog.text  # it really was captured
    # the same kernels as the eager steps, which the CPU tests hold to generate's output
    assert torch.equal(got, greedy_generate(model, inputs, NEW_TOKENS, *ids, graph=False))


@pytest.mark.gpu
@gpu
def test_capturing_keeps_the_allocators_cached_memory(on_gpu):
    """torch.cuda.graph() would empty the cache, and the next batch would allocate it all again."""
    model, inputs, ids = on_gpu
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    del block  # now cached, free
    cached = torch.cuda.memory_reserved()
    greedy_generate(model, inputs, NEW_TOKENS, *ids)
    assert torch.cuda.memory_reserved() >= cached


@pytest.mark.gpu
@gpu
def test_a_step_that_cannot_be_captured_runs_eagerly_and_says_so(on_gpu, caplog):
    model, inputs, ids = on_gpu

    def sync_while_capturing(module, args, output):  # an op a graph cannot hold
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.current_stream().synchronize()

    handle = unwrap(model).lm_head.register_forward_hook(sync_while_capturing)
    try:
        with caplog.at_level(logging.WARNING, logger="hwocr.evaluate.fast.decoding"):
            got = greedy_generate(model, inputs, NEW_TOKENS, *ids)
    finally:
        handle.remove()
    assert "could not be captured" in caplog.text
    assert torch.equal(got, greedy_generate(model, inputs, NEW_TOKENS, *ids, graph=False))
    # the failed capture leaves the device's random numbers usable (training's dropout comes next)
    torch.nn.functional.dropout(torch.ones(8, device="cuda"), 0.5, training=True)
    torch.rand(8, device="cuda")

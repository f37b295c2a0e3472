"""The memory/speed optimizations compute the same function as the plain recipe.

CPU tests run on the tiny DeepSeek-OCR-2; the `gpu` tests repeat the checks on the full-size
architecture (random weights) and are skipped without CUDA.
"""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hwocr.config import DEFAULT_PROMPT, HardwareConfig, LoraConfig, ModelConfig
from hwocr.data import Sample
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import OcrCollator
from hwocr.model import load_model, load_processor, prepare_for_training
from hwocr.model.vision import chunk_vision_tower, chunking, fold_sam_rel_pos
from hwocr.train.loss import causal_lm_loss_on_targets, target_columns

PROMPT = DEFAULT_PROMPT
HARDWARE = HardwareConfig()


def plain(cfg: ModelConfig) -> ModelConfig:
    """The stock model: none of hwocr's memory optimizations."""
    return replace(cfg, memory_optimizations=False)


@pytest.fixture(scope="module")
def lines(render_lines) -> list[Sample]:
    """Real-size lines (1600x120), as in the GPU measurements."""
    return render_lines([(1600, 120)] * 5)


def _batch(cfg, samples):
    return OcrCollator(load_processor(cfg), PROMPT)(samples)


def test_target_columns_cover_every_label():
    labels = torch.tensor([[-100, -100, 5, 6, 1, -100], [-100, -100, 7, 1, -100, -100]])
    assert target_columns(labels).tolist() == [1, 2, 3]


@pytest.mark.parametrize("mode", ["base", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_target_logits_loss_equals_full_logits_loss(tiny_model_config, lines, mode):
    cfg = replace(tiny_model_config, image_mode=mode)
    model = prepare_for_training(load_model(plain(cfg), HARDWARE), LoraConfig(), HARDWARE)
    batch = _batch(cfg, lines)
    torch.manual_seed(0)
    full = model(**batch).loss
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    ours, _ = causal_lm_loss_on_targets(model, batch)
    ours.backward()
    assert ours.item() == pytest.approx(full.item(), rel=1e-6)
    for a, p in zip(full_grads, [p for p in model.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
    # gradient accumulation divides by the tokens of all micro-batches
    n = int((batch["labels"] != -100).sum())
    summed, _ = causal_lm_loss_on_targets(model, batch, num_items_in_batch=2 * n)
    assert summed.item() == pytest.approx(full.item() / 2, rel=1e-6)


def test_folded_rel_pos_attention_equals_stock_attention(tiny_model_config):
    model = load_model(plain(tiny_model_config), HARDWARE)
    tower = model.model.vision_tower
    pixels = torch.randn(3, 3, 128, 128)
    for (
        module
    ) in tower.modules():  # the tiny_model_config checkpoint has zero rel-pos tables: make them count
        if hasattr(module, "rel_pos_h"):
            torch.nn.init.normal_(module.rel_pos_h, std=0.3)
            torch.nn.init.normal_(module.rel_pos_w, std=0.3)
    with torch.no_grad():
        reference = tower(pixels).last_hidden_state
        folded = copy.deepcopy(tower)
        assert fold_sam_rel_pos(folded) > 0
        out = folded(pixels).last_hidden_state
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_the_tiny_models_vision_features_depend_on_the_image(tiny_model_config):
    """Else every vision-path test here compares constants (transformers' init leaves SAM at ~0)."""
    tower = load_model(plain(tiny_model_config), HARDWARE).model.vision_tower
    with torch.no_grad():
        out = tower(torch.randn(2, 3, 128, 128)).last_hidden_state
    assert float((out[0] - out[1]).abs().max()) > 1e-2


def test_chunked_vision_tower_gives_the_same_features(tiny_model_config):
    tower = load_model(plain(tiny_model_config), HARDWARE).model.vision_tower
    pixels = torch.randn(5, 3, 128, 128)
    with torch.no_grad():
        reference = tower(pixels).last_hidden_state
        assert chunk_vision_tower(tower, 2)
        out = tower(pixels).last_hidden_state
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_compiled_vision_pads_every_chunk_and_restores_the_eager_layers(tiny_model_config, monkeypatch):
    """compiled_vision hands its compiled layers one batch size only (tails padded with blank views)
    and gives the same features; afterwards the layers are the class's eager forward again."""
    import hwocr.evaluate.fast.vision as vision
    from hwocr.evaluate.fast.vision import patches_as_matmul

    tower = load_model(plain(tiny_model_config), HARDWARE).model.vision_tower
    pixels = torch.randn(5, 3, 128, 128)
    seen = []
    unfolded = []
    monkeypatch.setattr(
        vision, "patches_as_matmul", lambda self, x: unfolded.append(x.shape[0]) or patches_as_matmul(self, x)
    )

    def fake_compile(forward, dynamic):  # records the batch sizes the "compiled" layers see
        assert dynamic is False

        def compiled(hidden_states, *args, **kwargs):
            seen.append(hidden_states.shape[0])
            return forward(hidden_states, *args, **kwargs)

        return compiled

    monkeypatch.setattr(vision.torch, "compile", fake_compile)
    with torch.no_grad():
        reference = tower(pixels).last_hidden_state
        assert chunk_vision_tower(tower, 2)
        with vision.compiled_vision(tower):
            out = tower(pixels).last_hidden_state
            small = tower(pixels[:1]).last_hidden_state
        assert not chunking(tower).padded
        assert all("forward" not in vars(layer) for layer in tower.sam_encoder.layers)
        assert "forward" not in vars(tower.sam_encoder.patch_embed)  # the convolution again
        seen_inside = len(seen)
        again = tower(pixels).last_hidden_state
    layers = len(tower.sam_encoder.layers) + len(tower.vision_encoder.layers)
    assert seen_inside == layers * (3 + 1)  # 5 views in 3 chunks of 2, then 1 view in 1 chunk
    assert set(seen) == {2}
    assert unfolded == [2, 2, 2, 2]  # inside the context, the patch embedding is the matmul
    assert len(seen) == seen_inside  # outside the context nothing goes through the compiled layers
    # the patch embedding as a matmul sums in another order than the convolution: rounding apart
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(small, reference[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, reference, rtol=1e-5, atol=1e-6)  # the eager layers again


@pytest.mark.slow
def test_really_compiled_vision_tower_gives_the_same_features(tiny_model_config):
    import hwocr.evaluate.fast.vision as vision

    tower = load_model(plain(tiny_model_config), HARDWARE).model.vision_tower
    pixels = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        reference = tower(pixels).last_hidden_state
        chunk_vision_tower(tower, 2)
        with vision.compiled_vision(tower):
            out = tower(pixels).last_hidden_state
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_quantized_experts_equal_nf4_rounded_weights(tiny_model_config, lines):
    """Packed NF4 experts compute what the same model computes with NF4-rounded expert weights."""
    import bitsandbytes.functional as bnbf

    from hwocr.model.experts import QuantizedExpertsMixin, quantize_experts

    model = load_model(plain(tiny_model_config), HARDWARE)
    reference = copy.deepcopy(model)
    assert quantize_experts(model) > 0
    experts = [m for m in model.modules() if isinstance(m, QuantizedExpertsMixin)]
    assert experts and all(not hasattr(m, "gate_up_proj") or m.gate_up_proj is None for m in experts)
    with torch.no_grad():
        for module in reference.modules():
            if hasattr(module, "gate_up_proj") and isinstance(module.gate_up_proj, torch.nn.Parameter):
                for name in ("gate_up_proj", "down_proj"):
                    weight = getattr(module, name)
                    packed, state = bnbf.quantize_4bit(
                        weight.data, blocksize=64, compress_statistics=True, quant_type="nf4"
                    )
                    weight.copy_(bnbf.dequantize_4bit(packed, state))
    batch = _batch(tiny_model_config, lines)
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_optimized_qlora_step_matches_plain_recipe(tiny_model_config, lines):
    """4-bit load + every optimization: same loss as the plain 4-bit recipe up to NF4 rounding of experts."""
    losses = {}
    hw = replace(HARDWARE, load_in_4bit=True)
    for name, cfg in (("plain", plain(tiny_model_config)), ("optimized", tiny_model_config)):
        model = prepare_for_training(load_model(cfg, hw), LoraConfig(), hw)
        batch = _batch(cfg, lines)
        if cfg.memory_optimizations:
            loss, _ = causal_lm_loss_on_targets(model, batch)
        else:
            loss = model(**batch).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        losses[name] = loss.item()
    assert losses["optimized"] == pytest.approx(losses["plain"], rel=1e-3)


@pytest.mark.slow
def test_optimized_batched_generation_equals_unbatched(tiny_model_config, lines):
    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, replace(HARDWARE, load_in_4bit=True))
    texts = {}
    for batch_size in (1, len(lines)):
        settings = GenerationSettings(PROMPT, max_new_tokens=12, batch_size=batch_size)
        predictions, _ = transcribe(model, processor, lines, settings)
        texts[batch_size] = [p.prediction for p in predictions]
    assert texts[1] == texts[len(lines)]


# ------------------------------------------------------------------------------------------------
# full size, on a GPU

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _bench(tmp_path: Path, *args) -> dict:
    from benchmarks import bench

    return bench.main([*args, "--json", str(tmp_path / "bench.json")])


@pytest.mark.gpu
@pytest.mark.slow
@gpu
@pytest.mark.parametrize("dtype,four_bit", [("fp16", True), ("bf16", False)])
def test_full_size_optimized_loss_matches_plain_recipe(tmp_path, dtype, four_bit):
    result = _bench(
        tmp_path,
        "--model",
        "full",
        "--dtype",
        dtype,
        *(["--load-in-4bit"] if four_bit else []),
        "--batch",
        "4",
        "--task",
        "loss-match",
    )["loss_match"]
    # same weights: target-only logits vs full logits
    assert result["same_weights_rel_diff"] < 1e-2
    # plain recipe vs optimized (NF4 experts under 4-bit, folded SAM attention): fp16/bf16 tolerance
    assert result["baseline_vs_optimized_rel_diff"] < 2e-2


@pytest.mark.gpu
@pytest.mark.slow
@gpu
@pytest.mark.xfail(
    strict=False,
    raises=AssertionError,  # only the identity check may fail: an error elsewhere fails the test
    reason="measured 1/4 identical on an H100 in bf16 with random weights: "
    "batch-shape-dependent rounding flips near-tied argmaxes (benchmarks/README.md)",
)
def test_full_size_batched_generation_equals_unbatched(tmp_path):
    result = _bench(
        tmp_path,
        "--model",
        "full",
        "--dtype",
        "bf16",
        "--task",
        "generate",
        "--gen-images",
        "8",
        "--new-tokens",
        "16",
        "--check-unbatched",
        "4",
    )["generate"]
    assert result["failed"] == 0
    assert result["unbatched_identical"] == "4/4"


@pytest.mark.slow
def test_padding_to_a_multiple_changes_shapes_not_the_loss(tiny_model_config, lines):
    """Batches padded to a multiple of 32 tokens (fewer distinct shapes) give the same loss and
    gradients as batches padded to their longest sample."""
    processor = load_processor(tiny_model_config)
    tight = OcrCollator(processor, PROMPT, pad_to_multiple_of=1)(lines)
    padded = OcrCollator(processor, PROMPT, pad_to_multiple_of=32)(lines)
    assert padded["input_ids"].shape[1] % 32 == 0
    assert padded["input_ids"].shape[1] > tight["input_ids"].shape[1]  # the check pads something
    model = prepare_for_training(load_model(plain(tiny_model_config), HARDWARE), LoraConfig(), HARDWARE)
    model.eval()  # no dropout: the same function on both batches
    results = []
    for batch in (tight, padded):
        model.zero_grad()
        loss, _ = causal_lm_loss_on_targets(model, batch)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (tight_loss, tight_grads), (padded_loss, padded_grads) = results
    assert padded_loss == pytest.approx(tight_loss, rel=1e-5)
    for a, b in zip(tight_grads, padded_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("side", [128, 136])  # 136: not a multiple of the patch, the rest dropped
def test_patch_embedding_as_a_matmul_equals_the_convolution(tiny_model_config, side):
    import types

    from hwocr.evaluate.fast.vision import _patches_tile, patches_as_matmul

    embedding = load_model(plain(tiny_model_config), HARDWARE).model.vision_tower.sam_encoder.patch_embed
    assert _patches_tile(embedding.projection)
    pixels = torch.randn(3, 3, side, side + 16)
    with torch.no_grad():
        reference = embedding(pixels)
        out = types.MethodType(patches_as_matmul, embedding)(pixels)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)

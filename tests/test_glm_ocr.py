"""GLM-OCR (model.family=glm_ocr) on its tiny random checkpoint, where it differs from PaddleOCR-VL:
generation stops where GLM-OCR's does, the right parts train, 4-bit loading spares the vision tower,
the released shapes, and image features that differ (the premise of
tests/test_learning.py::test_glm_ocr_learns_to_tell_images_apart). What the chat-template families
share (the model card's inputs, training rows, batching, presets, the demo) is tests/test_families.py."""

import pytest
import torch
from learning import WORDS, word_image
from PIL import Image, ImageDraw

from hwocr.config import HardwareConfig, LoraConfig, ModelConfig
from hwocr.data import Sample
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import encode
from hwocr.model import load_model, load_processor, prepare_for_training


@pytest.fixture(scope="module")
def glm(tiny_glm_ocr_config) -> ModelConfig:
    return tiny_glm_ocr_config


@pytest.fixture(scope="module")
def processor(glm):
    return load_processor(glm)


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> Sample:
    path = tmp_path_factory.mktemp("glm-images") / "line.png"
    image = Image.new("RGB", (1600, 120), "white")
    ImageDraw.Draw(image).text((10, 60), "line chữ viết tay", fill="black")
    image.save(path)
    return Sample(id="line", writer="w", split="test", image=path, text="line đẹp")


def test_transcription_ends_at_every_eos_of_the_generation_config(glm, processor, line):
    """GLM-OCR ends a turn with <|user|> as well as <|endoftext|>: what follows is not transcribed."""
    model = load_model(glm, HardwareConfig())
    tokenizer = processor.tokenizer
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    assert user in model.generation_config.eos_token_id and user != tokenizer.eos_token_id
    first, after = (
        tokenizer("ba", add_special_tokens=False)["input_ids"][0],
        tokenizer.convert_tokens_to_ids("a"),
    )
    script = [first, user]  # the model writes one token, then <|user|>, then `after` forever

    def force(module, args, logits):
        step = force.calls
        force.calls += 1
        forced = torch.full_like(logits[:, -1], -1e4)
        forced[:, script[step] if step < len(script) else after] = 0
        logits[:, -1] = forced
        return logits

    force.calls = 0
    handle = model.lm_head.register_forward_hook(force)
    try:
        settings = GenerationSettings(prompt=glm.prompt, max_new_tokens=12, batch_size=1).reference()
        [prediction], _ = transcribe(model, processor, [line], settings)
    finally:
        handle.remove()
    assert prediction.prediction == tokenizer.decode([first])


@pytest.mark.parametrize(
    ("lora", "trained"),
    [
        (LoraConfig(), ("model.language_model.",)),
        (LoraConfig(vision="encoder"), ("model.language_model.", "model.visual.blocks.")),
        (
            LoraConfig(vision="tower"),
            ("model.language_model.", "model.visual.blocks.", "model.visual.merger."),
        ),
        (LoraConfig(enabled=False), ("model.language_model.", "lm_head.")),
        (LoraConfig(enabled=False, vision="tower"), ("model.language_model.", "lm_head.", "model.visual.")),
    ],
    ids=["lora", "lora-encoder", "lora-tower", "full", "full-tower"],
)
def test_what_trains(glm, lora, trained):
    """LoRA adapts the decoder (and the vision parts lora.vision names); full fine-tuning trains the
    decoder and head, the vision tower frozen unless lora.vision says otherwise."""
    model = prepare_for_training(load_model(glm, HardwareConfig()), lora, HardwareConfig())
    names = [
        name.removeprefix("base_model.model.") for name, p in model.named_parameters() if p.requires_grad
    ]
    prefixes = {prefix for prefix in trained if any(name.startswith(prefix) for name in names)}
    assert prefixes == set(trained), names
    assert all(name.startswith(trained) for name in names), names


def test_four_bit_quantizes_the_decoder_alone(glm):
    pytest.importorskip("bitsandbytes")
    model = load_model(glm, HardwareConfig(load_in_4bit=True))
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == "Linear4bit"
    assert kinds["model.language_model.layers.0.mlp.gate_up_proj"] == "Linear4bit"
    assert kinds["model.visual.blocks.0.attn.qkv"] == "Linear"
    assert kinds["lm_head"] == "Linear"


def test_the_released_shapes():
    """The full-size config builds the released model: 1.1 B weights, the vision tower 0.43 B of
    them, and a 1600x120 line becomes 228 image tokens through the released image processor."""
    from transformers import GlmOcrForConditionalGeneration

    from hwocr.model.glm_ocr.architecture import full_size_config
    from hwocr.model.glm_ocr.tiny import RELEASED_PIXELS, build_processor

    with torch.device("meta"):
        model = GlmOcrForConditionalGeneration(full_size_config())
    assert round(model.num_parameters() / 1e9, 2) == 1.11
    assert round(sum(p.numel() for p in model.model.visual.parameters()) / 1e9, 2) == 0.43
    image_processor = build_processor(RELEASED_PIXELS, patch_size=14).image_processor
    assert image_processor.get_number_of_image_patches(120, 1600, {}) // 4 == 228


def test_image_features_differ_across_images(glm, processor):
    """What the decoder receives differs from image to image (the learning test's premise)."""
    from learning import relative_spread

    model = load_model(glm, HardwareConfig()).eval()
    images = [word_image(word, (128, 128)) for word in WORDS]
    inputs = encode(processor, images, [glm.prompt] * len(images), padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    assert relative_spread(features.view(len(images), -1)) >= 0.10


@pytest.mark.slow
def test_the_benchmark_measures_glm_ocr(tmp_path):
    """benchmarks/bench.py's GLM-OCR target (the GPU suite's `glm` phase) on the tiny model."""
    from benchmarks import bench

    result = bench.main(
        [
            *("--model", "tiny_glm_ocr", "--dtype", "fp32", "--device", "cpu", "--lora-r", "8"),
            *(
                "--batch",
                "2",
                "--steps",
                "2",
                "--task",
                "both",
                "--gen-images",
                "4",
                "--check-unbatched",
                "4",
            ),
            *("--checkpoint-dir", str(tmp_path), "--json", str(tmp_path / "bench.json")),
        ]
    )
    assert result["train"]["nonfinite_losses"] == 0 and result["trainable_parameters"] > 0
    assert "vision: encoder" in result["weights_gib_by_component"]  # the tower is accounted as vision
    assert result["generate"]["failed"] == 0 and result["generate"]["unbatched_identical"] == "4/4"

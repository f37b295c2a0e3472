"""8-bit views normalised on the device (hwocr/inputs/pixels.py) equal the processor's own, bit for bit."""

import numpy as np
import pytest
import torch
from PIL import Image

from hwocr.config import ModelConfig
from hwocr.inputs import encode, pixels_to_device
from hwocr.inputs.pixels import normalization_table
from hwocr.model.load import load_processor

PROMPT = "<image>\nFree OCR."
# wide (crops in dynamic mode), an odd margin (the global view rolled by views.py), tall, square
SIZES = [(1600, 163), (1603, 120), (120, 400), (50, 50)]


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in SIZES]


@pytest.mark.parametrize("mode", ["dynamic", "base", "small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_normalisation_equals_the_processors(tiny_model_config, mode, dtype):
    processor = load_processor(ModelConfig(**{**vars(tiny_model_config), "image_mode": mode}))
    images = pictures()
    prompts = [PROMPT] * len(images)
    reference = encode(processor, images, prompts, padding=True, return_tensors="pt")
    raw = encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")
    assert raw["pixel_values"].dtype == torch.uint8
    moved = pixels_to_device(raw, processor, "cpu", dtype)
    keys = [k for k in ("pixel_values", "pixel_values_local") if k in reference]
    assert ("pixel_values_local" in keys) == (mode == "dynamic")
    for key in keys:
        assert moved[key].dtype == dtype
        assert torch.equal(moved[key], reference[key].to(dtype)), key
    assert torch.equal(moved["input_ids"], reference["input_ids"])


def test_the_table_is_the_processors_arithmetic(tiny_model_config):
    """Not an affine guess: each entry is what rescale + normalize give that 8-bit value."""
    processor = load_processor(tiny_model_config)
    ip = processor.image_processor
    table = normalization_table(ip)
    value = np.full((3, 1, 1), 37, dtype=np.uint8)
    expected = ip.normalize(ip.rescale(value, ip.rescale_factor), ip.image_mean, ip.image_std)
    assert table.shape == (3, 256)
    assert torch.equal(table[:, 37], torch.from_numpy(expected[:, 0, 0]))
    assert float(table[0, 0]) == pytest.approx(-1.0) and float(table[0, 255]) == pytest.approx(1.0)


def test_a_table_that_cannot_be_built_leaves_normalising_to_the_processor(
    tiny_model_config, monkeypatch, caplog
):
    import hwocr.inputs.pixels as pixels

    def broken(image_processor):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(pixels, "normalization_table", broken)
    processor = load_processor(tiny_model_config)
    raw = encode(
        processor, pictures(), [PROMPT] * len(SIZES), raw_pixels=True, padding=True, return_tensors="pt"
    )
    assert raw["pixel_values"].dtype == torch.float32  # the processor's own normalised views
    assert "8-bit views off" in caplog.text and "unhashable" in caplog.text
    moved = pixels_to_device(raw, processor, "cpu", torch.bfloat16)
    assert moved["pixel_values"].dtype == torch.bfloat16

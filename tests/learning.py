"""Helpers for the learning checks: distinct word images, the spread of image features, and a way
to take the image away from the model.

`python tests/learning.py cut-images OVERRIDES...` runs `python -m hwocr.run OVERRIDES...` with the
pixels zeroed before the vision tower, in training and evaluation alike: the control that a check of
learning from images must fail.
"""

import contextlib
import json
import runpy
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2

FONT = Path(__file__).resolve().parents[1] / "hwocr" / "data" / "fonts" / "mali.ttf"
WORDS = ["một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám"]


def word_image(word: str, size: tuple[int, int]) -> Image.Image:
    """`word` drawn large in black on white, left-aligned and vertically centred."""
    image = Image.new("RGB", size, "white")
    font = ImageFont.truetype(str(FONT), int(size[1] * 0.45))
    ImageDraw.Draw(image).text((size[1] // 8, size[1] // 2), word, font=font, fill="black", anchor="lm")
    return image


def write_word_dataset(root: Path, words: list[str] = WORDS, size: tuple[int, int] = (128, 128)) -> Path:
    """One image per word in the UIT-HWDB layout, the same images as train_data and test_data
    (two writers, so that each split has more than one folder)."""
    for split in ("train_data", "test_data"):
        for writer in range(2):
            folder = root / split / f"w{writer}"
            folder.mkdir(parents=True, exist_ok=True)
            labels = {}
            for i, word in enumerate(words[writer::2]):
                word_image(word, size).save(folder / f"{i + 1}.png")
                labels[f"{i + 1}.png"] = word
            (folder / "label.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return root


def relative_spread(features: torch.Tensor) -> float:
    """How far each image's features lie from the mean over images, relative to their size:
    mean_i ||f_i - mean f|| / mean_i ||f_i||. 0 when every image gives the same features."""
    flat = features.flatten(1).double()
    return float((flat - flat.mean(0)).norm(dim=1).mean() / flat.norm(dim=1).mean())


@torch.no_grad()
def stage_spreads(model, pixel_values: torch.Tensor) -> dict[str, float]:
    """relative_spread of the global view's features after SAM, the encoder and the projector."""
    tower = model.model.vision_tower
    pixel_values = pixel_values.to(model.device, model.dtype)
    encoded = tower(pixel_values).last_hidden_state
    return {
        "pixels": relative_spread(pixel_values),
        "sam": relative_spread(tower.sam_encoder(pixel_values).last_hidden_state),
        "encoder": relative_spread(encoded),
        "projector": relative_spread(model.model.multi_modal_projector(encoded)),
    }


def checkpoint_spreads(checkpoint: Path, dataset: Path, image_size: int = 1024) -> dict[str, float]:
    """stage_spreads of a saved DeepSeek-OCR-2 checkpoint over a word dataset's test images."""
    from hwocr.config import HardwareConfig, ModelConfig
    from hwocr.inputs import encode
    from hwocr.model.load import load_model, load_processor

    cuda = torch.cuda.is_available()
    hardware = HardwareConfig(device="cuda" if cuda else "cpu", dtype="bf16" if cuda else "fp32")
    cfg = ModelConfig(name="checkpoint", source=str(checkpoint), image_mode="base", image_size=image_size)
    model = load_model(cfg, hardware).eval()
    images = [Image.open(path).convert("RGB") for path in sorted(dataset.glob("test_data/*/*.png"))]
    pixels = encode(load_processor(cfg), images, [cfg.prompt] * len(images), return_tensors="pt")
    return {"images": len(images), **stage_spreads(model, pixels["pixel_values"])}


@contextlib.contextmanager
def images_cut():
    """Zero every pixel before DeepSeek-OCR-2's vision tower sees it: all images look alike."""
    original = modeling_deepseek_ocr2.DeepseekOcr2Model.get_image_features

    def blind(self, pixel_values, pixel_values_local=None, *args, **kwargs):
        if pixel_values_local is not None:
            pixel_values_local = torch.zeros_like(pixel_values_local)
        return original(self, torch.zeros_like(pixel_values), pixel_values_local, *args, **kwargs)

    modeling_deepseek_ocr2.DeepseekOcr2Model.get_image_features = blind
    try:
        yield
    finally:
        modeling_deepseek_ocr2.DeepseekOcr2Model.get_image_features = original


if __name__ == "__main__":
    if sys.argv[1:2] == ["write-words"]:  # python tests/learning.py write-words ROOT WIDTH HEIGHT
        write_word_dataset(Path(sys.argv[2]), size=(int(sys.argv[3]), int(sys.argv[4])))
        sys.exit(0)
    if sys.argv[1:2] == ["spread"]:  # python tests/learning.py spread CHECKPOINT WORDS [SIZE] (GPU: bf16)
        print(
            json.dumps(
                checkpoint_spreads(Path(sys.argv[2]), Path(sys.argv[3]), int((sys.argv[4:] or [1024])[0]))
            )
        )
        sys.exit(0)
    cut = sys.argv[1:2] == ["cut-images"]
    sys.argv = ["hwocr.run", *sys.argv[1 + cut :]]
    with images_cut() if cut else contextlib.nullcontext():
        runpy.run_module("hwocr.run", run_name="__main__", alter_sys=True)

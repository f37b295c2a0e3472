"""DeepSeek-OCR v1 inputs (hwocr/model/ocr1.py) against v1's own layout, without its remote code.

The expected counts are v1's formula, written out here: a view of side S is S/64 rows of S/64
features plus a newline each, then one view separator; gundam adds (10w+1)*10h for a w x h grid of
640-pixel tiles.
"""

import pytest
import torch
from PIL import Image

from hwocr.config import DEFAULT_PROMPT
from hwocr.data import Sample, load_image
from hwocr.inputs import IGNORE_INDEX, OcrCollator
from hwocr.model import load_processor
from hwocr.model.ocr1 import Ocr1Processor, closest_grid

PROMPT = DEFAULT_PROMPT


def view(side: int) -> int:
    n = side // 64
    return n * (n + 1)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_config):
    return load_processor(tiny_model_config).tokenizer  # has <image>, BOS, EOS and pad


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("tiny", (1600, 120), view(512) + 1),  # 73
        ("small", (1600, 120), view(640) + 1),  # 111
        ("base", (1600, 120), view(1024) + 1),  # 273
        ("large", (1600, 120), view(1280) + 1),  # 421
        ("gundam", (500, 400), view(1024) + 1),  # within 640x640: no tiles
        ("gundam", (1600, 120), view(1024) + 1 + (10 * 9 + 1) * 10),  # a 9x1 grid: 1183
        ("gundam", (1300, 1300), view(1024) + 1 + (10 * 2 + 1) * 20),  # square: 2x2 (693)...
        ("gundam", (2000, 2000), view(1024) + 1 + (10 * 3 + 1) * 30),  # ...3x3 when large: 1203
    ],
)
def test_image_token_counts_follow_v1(tokenizer, mode, size, expected):
    processor = Ocr1Processor(tokenizer, mode)
    inputs = processor([Image.new("RGB", size, "white")], PROMPT)
    assert processor.image_token_count(*size) == expected
    assert int(inputs["images_seq_mask"].sum()) == expected
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert inputs["input_ids"][inputs["images_seq_mask"]].eq(image_id).all()
    assert inputs["input_ids"][0, 0].item() == tokenizer.bos_token_id  # BOS, then the image run


def test_gundam_tiles_a_wide_line_into_a_row(tokenizer):
    assert closest_grid(1600, 120, 640) == (9, 1)
    assert closest_grid(120, 1600, 640) == (1, 9)
    tiles, global_view, grid = Ocr1Processor(tokenizer, "gundam").views(Image.new("RGB", (1600, 120)))
    assert grid == (9, 1) and tiles.shape == (9, 3, 640, 640) and global_view.shape == (1, 3, 1024, 1024)


def test_views_are_normalised_and_letterboxed_in_grey(tokenizer):
    tiles, global_view, _ = Ocr1Processor(tokenizer, "base").views(Image.new("RGB", (1600, 120), "white"))
    assert tiles.abs().sum() == 0  # no tiles: v1 checks for an all-zero tile tensor
    assert global_view.max() == 1.0  # white
    grey = (127 / 255 - 0.5) / 0.5
    assert torch.allclose(global_view[0, :, 0, 0], torch.full((3,), grey))  # padding above the line
    assert global_view[0, :, 512, 512].eq(1.0).all()  # the line itself, centred
    squashed = Ocr1Processor(tokenizer, "small").views(Image.new("RGB", (1600, 120), "white"))[1]
    assert squashed.eq(1.0).all()  # small mode stretches the line to fill the square
    dark = Ocr1Processor(tokenizer, "large").views(Image.new("RGB", (900, 1400), "black"))[1]
    assert dark.min() == -1.0 and dark.max() <= 1.0  # [-1, 1]: black is -1


def test_exif_rotation_is_applied_before_tiles_and_tokens_are_counted(tokenizer, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 120x1600, shown as a 1600x120 line
    Image.new("RGB", (120, 1600), "white").save(path, exif=exif)
    inputs = Ocr1Processor(tokenizer, "gundam")([load_image(path)], PROMPT)
    assert inputs["images_spatial_crop"].tolist() == [[9, 1]]
    assert int(inputs["images_seq_mask"].sum()) == view(1024) + 1 + (10 * 9 + 1) * 10


def test_unknown_mode_is_refused(tokenizer):
    with pytest.raises(ValueError, match="image mode"):
        Ocr1Processor(tokenizer, "huge")


def test_batches_are_left_padded_for_generation(tokenizer):
    processor = Ocr1Processor(tokenizer, "gundam")
    inputs = processor([Image.new("RGB", (500, 400)), Image.new("RGB", (1600, 120))], PROMPT, padding=True)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    assert lengths[1] - lengths[0] == 910 and inputs["attention_mask"][0, :910].eq(0).all()
    assert inputs["images_spatial_crop"].tolist() == [[1, 1], [9, 1]]
    assert not inputs["images_seq_mask"][0, :910].any()


def test_collator_labels_only_the_target_and_aligns_the_image_mask(tokenizer, tmp_path):
    processor = Ocr1Processor(tokenizer, "base")
    samples = []
    for i, text in enumerate(["xin chào", "Việt Nam đẹp lắm"]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (300 + 200 * i, 60), "white").save(path)
        samples.append(Sample(id=f"w/{i}", writer="w", image=path, text=text, split="train"))
    batch = OcrCollator(processor, PROMPT, pixel_dtype=torch.bfloat16)(samples)
    assert batch["images_seq_mask"].shape == batch["input_ids"].shape
    for row, sample in enumerate(samples):
        target = tokenizer(sample.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labelled = batch["labels"][row] != IGNORE_INDEX
        assert batch["labels"][row][labelled].tolist() == target
        assert int(batch["images_seq_mask"][row].sum()) == view(1024) + 1
        assert not (batch["images_seq_mask"][row] & labelled).any()
    assert all(t.dtype == torch.bfloat16 and g.dtype == torch.bfloat16 for t, g in batch["images"])


def test_processor_round_trips_through_save(tokenizer, tmp_path):
    Ocr1Processor(tokenizer, "large").save_pretrained(str(tmp_path))
    loaded = Ocr1Processor.from_pretrained(str(tmp_path), image_mode="large")
    assert loaded.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert (tmp_path / "hwocr_ocr1_processor.json").is_file()

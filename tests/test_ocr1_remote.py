"""DeepSeek-OCR v1's own remote code against hwocr's v1 inputs (hwocr/model/ocr1.py, the collator).

Opt-in: it needs a v1 checkpoint directory and a transformers that imports v1's remote code (4.56-4.57
with unsloth/DeepSeek-OCR's files: the ocr1 profile; transformers 5, what CI runs, cannot):

    HWOCR_V1_CHECKPOINT=/path/to/DeepSeek-OCR python -m pytest -q tests/test_ocr1_remote.py

It runs in fp32 on the CPU, so the checkpoint's forward must not call .cuda() (unsloth's code does
not; deepseek-ai's original does, and imports only under transformers 4.46 anyway).
"""

import os
import sys

import pytest
import torch
from PIL import Image, ImageDraw

from hwocr.data import Sample, load_image
from hwocr.inputs import IGNORE_INDEX, OcrCollator
from hwocr.model.ocr1 import Ocr1Processor, closest_grid

CHECKPOINT = os.environ.get("HWOCR_V1_CHECKPOINT", "")
PROMPT = "<image>\nFree OCR. "  # the model card's prompt; both sides strip the trailing space

pytestmark = pytest.mark.skipif(
    not os.path.isdir(CHECKPOINT), reason="set HWOCR_V1_CHECKPOINT to a DeepSeek-OCR v1 checkpoint directory"
)

# infer()'s (base_size, image_size, crop_mode) for each mode, as the model card lists them
INFER_ARGS = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}


@pytest.fixture(scope="module")
def model():
    import transformers
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(CHECKPOINT, trust_remote_code=True, dtype=torch.float32)
    except ImportError as error:  # transformers 5: the remote code imports names it no longer has
        pytest.skip(f"transformers {transformers.__version__} cannot import v1's remote code: {error}")
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(model):
    return Ocr1Processor.from_pretrained(CHECKPOINT).tokenizer


def line_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A text line on a noisy background: every pixel matters when views are compared."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(150, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(noise.numpy(), "RGB")
    ImageDraw.Draw(image).text((8, height // 2 - 6), "Tôi yêu tiếng Việt", fill="black")
    return image


def infer_inputs(model, tokenizer, monkeypatch, tmp_path, image_path, mode) -> dict:
    """What v1's infer() passes to generate() for this image: its own preparation, intercepted."""
    captured = {}

    def generate(input_ids, **kwargs):
        captured.update(input_ids=input_ids, **kwargs)
        return torch.cat([input_ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)

    base_size, image_size, crop_mode = INFER_ARGS[mode]
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # infer() assumes CUDA
        patch.setattr(model, "generate", generate)
        patch.setattr(model, "disable_torch_init", lambda: None)  # it patches torch.nn for everyone
        model.infer(
            tokenizer,
            prompt=PROMPT,
            image_file=str(image_path),
            output_path=str(tmp_path / "infer"),
            base_size=base_size,
            image_size=image_size,
            crop_mode=crop_mode,
            eval_mode=True,
        )
    return captured


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("tiny", (1600, 120)),
        ("small", (300, 500)),
        ("base", (1600, 120)),
        ("large", (900, 1400)),
        ("gundam", (500, 400)),  # within 640x640: no tiles
        ("gundam", (1600, 120)),  # a 9x1 row of tiles
        ("gundam", (700, 1000)),
    ],
)
def test_inputs_equal_the_remote_preparation(model, tokenizer, monkeypatch, tmp_path, mode, size):
    path = tmp_path / "line.png"
    line_image(*size).save(path)
    theirs = infer_inputs(model, tokenizer, monkeypatch, tmp_path, path, mode)
    ours = Ocr1Processor(tokenizer, mode, image_size=1024, tile_size=640)([load_image(path)], PROMPT)

    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["images_seq_mask"].tolist() == theirs["images_seq_mask"].tolist()
    assert ours["images_spatial_crop"].tolist() == theirs["images_spatial_crop"].tolist()
    (our_tiles, our_view), (their_tiles, their_view) = ours["images"][0], theirs["images"][0]
    assert our_view.shape == their_view.shape and our_tiles.shape == their_tiles.shape
    # infer() casts the views to bf16/fp16; the same cast of ours must give the same numbers
    assert torch.equal(our_view.to(their_view.dtype), their_view)
    assert torch.equal(our_tiles.to(their_tiles.dtype), their_tiles)


def test_exif_rotated_photo_is_prepared_upright_like_the_remote(model, tokenizer, monkeypatch, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored 120x1600 is shown as a 1600x120 line
    line_image(120, 1600).save(path, exif=exif, quality=95)
    theirs = infer_inputs(model, tokenizer, monkeypatch, tmp_path, path, "gundam")
    ours = Ocr1Processor(tokenizer, "gundam")([load_image(path)], PROMPT)
    assert ours["images_spatial_crop"].tolist() == theirs["images_spatial_crop"].tolist() == [[9, 1]]
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert torch.equal(ours["images"][0][1].to(theirs["images"][0][1].dtype), theirs["images"][0][1])


def test_tile_grid_equals_the_remote_choice(model):
    remote = sys.modules[type(model).__module__]
    sizes = [
        (w, h) for w in (641, 700, 960, 1280, 1300, 1600, 1920, 2600) for h in (100, 320, 641, 1000, 1920)
    ]
    for width, height in sizes:
        _, grid = remote.dynamic_preprocess(Image.new("RGB", (width, height)))
        assert closest_grid(width, height, 640) == tuple(grid), (width, height)


def test_collator_batch_gives_a_loss_and_gradients(model, tokenizer, tmp_path):
    samples = []
    for i, (size, text) in enumerate([((600, 90), "xin chào"), ((900, 120), "Đường về quê hương")]):
        path = tmp_path / f"{i}.png"
        line_image(*size, seed=i).save(path)
        samples.append(Sample(id=f"w/{i}", writer="w", split="train", image=path, text=text))
    batch = OcrCollator(Ocr1Processor(tokenizer, "tiny"), PROMPT)(samples)
    model.train()
    try:
        output = model(**batch)
        output.loss.backward()
        lm_head_grad = model.lm_head.weight.grad
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(output.loss)
    # v1 computes the loss itself: mean cross-entropy of next-token logits on the labelled positions
    logits, labels = output.logits[:, :-1].float(), batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(output.loss, expected, atol=1e-5)
    assert lm_head_grad is not None and torch.isfinite(lm_head_grad).all() and lm_head_grad.abs().sum() > 0


def test_left_padded_batch_generates_what_single_images_do(model, tokenizer):
    # gundam's layout at smaller views (512 global, 320 tiles) keeps the CPU time down; widths give
    # 0, 2 and 3 tiles, so the prompts differ in length and the batch is left-padded
    processor = Ocr1Processor(tokenizer, "gundam", image_size=512, tile_size=320)
    images = [line_image(300, 200, seed=1), line_image(700, 300, seed=2), line_image(1000, 300, seed=3)]
    eos = tokenizer.eos_token_id

    def generate(batch: list[Image.Image]) -> tuple[list[list[int]], torch.Tensor]:
        inputs = processor(batch, PROMPT, padding=True)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=8,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
        rows = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [row[: row.index(eos) + 1] if eos in row else row for row in rows], inputs["attention_mask"]

    batched, attention_mask = generate(images)
    assert attention_mask.eq(0).any(dim=1).tolist() == [True, True, False]  # left padding happened
    assert batched == [generate([image])[0][0] for image in images]


def test_benchmark_measures_v1(tmp_path):
    """benchmarks/bench.py --model v1: LoRA steps and batched generation through hwocr's code."""
    from benchmarks import bench

    result = bench.main(
        ["--model", "v1", "--v1-checkpoint", CHECKPOINT, "--dtype", "fp32", "--image-mode", "tiny"]
        + ["--batch", "1", "--steps", "2", "--warmup", "1", "--task", "both", "--gen-images", "2"]
        + ["--new-tokens", "4", "--device", "cpu", "--checkpoint-dir", str(tmp_path)]
        + ["--json", str(tmp_path / "v1.json")]
    )
    assert result["settings"]["model"] == "v1" and result["settings"]["backend"] == "hf"
    assert result["train"]["nonfinite_losses"] == 0 and result["train"]["samples_per_s"] > 0
    assert result["weights_gib_by_component"]["vision: SAM"] > 0  # v1's names are grouped
    assert result["generate"]["images"] == 2 and result["generate"]["failed"] == 0

"""Model families beside DeepSeek-OCR-2, on their tiny random checkpoints: hwocr feeds each model what
its model card's transformers snippet feeds it, trains on the transcription alone, transcribes a batch
as it transcribes each image alone, and runs the product end to end."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from hwocr.config import FAMILIES, HardwareConfig, register_schema
from hwocr.data import Sample
from hwocr.errors import ConfigError
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import OcrCollator, encode, encode_samples
from hwocr.inputs.chat import IGNORE_INDEX
from hwocr.model.load import load_model, load_processor
from tests.conftest import composed, small_demo

register_schema()

FONT = "hwocr/data/fonts/mali.ttf"
# a word, a line and a paragraph, at the sizes of UIT-HWDB's (scaled to the tiny processor's range)
PAGES = {
    "word": ("chào", (90, 48)),
    "line": ("Tôi yêu tiếng Việt và học sinh đi học", (800, 60)),
    "paragraph": ("mưa rơi ướt át\nĐường về quê hương\nxin chào bạn", (420, 300)),
}


def page(text: str, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).multiline_text((6, 4), text, fill="black", font=ImageFont.truetype(FONT, 16))
    return image


@pytest.fixture(scope="module")
def paddle(tiny_paddleocr_vl_config):
    return load_processor(tiny_paddleocr_vl_config), tiny_paddleocr_vl_config


def card_inputs(processor, images: list, prompt: str):
    """The model card's snippet (huggingface.co/PaddlePaddle/PaddleOCR-VL): a user turn with the image
    and the prompt through the processor's chat template, tokenized, as a batch where several."""
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        for image in images
    ]
    processor.tokenizer.padding_side = "left"  # transformers' advice for batched generation
    return processor.apply_chat_template(
        messages if len(images) > 1 else messages[0],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )


def assert_same_inputs(ours, theirs):
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_inputs_equal_the_model_cards(paddle, kind):
    processor, cfg = paddle
    image = page(*PAGES[kind])
    ours = encode(processor, [image], [cfg.prompt], return_tensors="pt")
    assert_same_inputs(ours, card_inputs(processor, [image], cfg.prompt))
    # the image tokens: one per 2 x 2 patches of the grid, in one run after <|IMAGE_START|>
    ids = ours["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|IMAGE_PLACEHOLDER|>")
    positions = (ids == image_id).nonzero().flatten()
    assert len(positions) == int(ours["image_grid_thw"][0].prod()) // 4
    assert torch.equal(positions, torch.arange(positions[0], positions[0] + len(positions)))
    assert torch.equal(ours["mm_token_type_ids"][0].bool(), ids == image_id)
    text = processor.tokenizer.decode(ids[ids != image_id])
    assert text == "<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_END|>OCR:\nAssistant:\n"


def test_a_left_padded_batch_equals_the_card_and_each_image_alone(paddle, tmp_path):
    processor, cfg = paddle
    samples = []
    for name, (text, size) in PAGES.items():
        page(text, size).save(tmp_path / f"{name}.png")
        samples.append(Sample(id=name, writer="w", split="test", image=tmp_path / f"{name}.png", text=text))
    batch = encode_samples(processor, samples, cfg.prompt)
    images = [Image.open(s.image).convert("RGB") for s in samples]
    assert_same_inputs(batch, card_inputs(processor, images, cfg.prompt))
    start = 0
    for row, image in enumerate(images):
        alone = encode(processor, [image], [cfg.prompt], return_tensors="pt")
        real = batch["attention_mask"][row].bool()
        assert not real[: len(real) - real.sum()].any(), "padding must be on the left"
        assert torch.equal(batch["input_ids"][row][real], alone["input_ids"][0])
        n = len(alone["pixel_values"])
        assert torch.equal(batch["pixel_values"][start : start + n], alone["pixel_values"])
        start += n


def test_training_labels_are_the_transcription_and_the_eos_after_generations_prompt(paddle, tmp_path):
    processor, cfg = paddle
    text, size = PAGES["line"]
    page(text, size).save(tmp_path / "line.png")
    sample = Sample(id="l", writer="w", split="train", image=tmp_path / "line.png", text=text)
    batch = OcrCollator(processor, cfg.prompt)([sample])
    prompt = encode(processor, [page(text, size)], [cfg.prompt], return_tensors="pt")
    n = prompt["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0, :n], prompt["input_ids"][0])
    assert torch.equal(batch["mm_token_type_ids"][0, :n], prompt["mm_token_type_ids"][0])
    labels = batch["labels"][0]
    assert (labels[:n] == IGNORE_INDEX).all()
    target = labels[labels != IGNORE_INDEX]
    assert target[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(target[:-1]) == text
    assert torch.equal(target, batch["input_ids"][0, n : n + len(target)])


def test_batched_and_one_by_one_transcriptions_are_identical(paddle, tmp_path):
    processor, cfg = paddle
    model = load_model(cfg, HardwareConfig())
    samples = []
    for i, (text, size) in enumerate([*PAGES.values(), ("một", (60, 40)), ("hai ba", (300, 50))]):
        page(text, size).save(tmp_path / f"{i}.png")
        samples.append(Sample(id=str(i), writer="w", split="test", image=tmp_path / f"{i}.png", text=text))
    settings = GenerationSettings(prompt=cfg.prompt, max_new_tokens=12, no_repeat_ngram=4).reference()
    batched, _ = transcribe(model, processor, samples, replace(settings, batch_size=5))
    alone, _ = transcribe(model, processor, samples, replace(settings, batch_size=1))
    assert [p.prediction for p in batched] == [p.prediction for p in alone]
    assert len({p.prediction for p in alone}) > 1  # the random model writes different texts: a real check
    assert not any(p.error for p in batched)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.memory_optimizations=true"], "model.memory_optimizations"),
        (["backend=unsloth", "hardware=t4"], "backend=unsloth"),
        (["model.image_mode=dynamic"], "model.image_mode"),
    ],
)
def test_deepseek_only_settings_are_refused_by_key(overrides, key):
    from hwocr.config import to_config

    with pytest.raises(ConfigError, match=key):
        to_config(composed("model=paddleocr_vl", *overrides))


def test_the_real_preset_is_pinned_and_full_fine_tuning():
    from hwocr.config import to_config

    cfg = to_config(composed("+experiment=lines_paddleocr_vl"))
    assert cfg.model.family == "paddleocr_vl" and len(cfg.model.revision) == 40
    assert not cfg.lora.enabled and cfg.model.prompt == "OCR:"
    assert FAMILIES["paddleocr_vl"].full_fine_tuning


def test_the_demo_runs_end_to_end(run_cli, tmp_path, tiny_paddleocr_vl_config):
    code = run_cli(
        *small_demo({"train.max_steps": 4}),
        "model=tiny_paddleocr_vl",
        f"model.source={tiny_paddleocr_vl_config.source}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    run = tmp_path / "run"
    assert code == 0, (run / "run.log").read_text()[-3000:]
    for stage in ("base", "tuned"):
        metrics = json.loads((run / "eval" / stage / "metrics.json").read_text())
        assert metrics["n_samples"] == 4 and metrics["n_failed"] == 0, metrics
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "gallery.html").is_file() or (run / "eval" / "gallery.html").is_file()

"""GLM-OCR (model.family=glm_ocr) on its tiny random checkpoint: the inputs are the model card's, the
loss is on the answer alone, generation stops where GLM-OCR's does, batching changes nothing, the
right parts train, and the demo runs. That training teaches it to tell images apart:
tests/test_learning.py::test_glm_ocr_learns_to_tell_images_apart."""

import json
from dataclasses import replace

import pytest
import torch
from learning import WORDS, word_image
from PIL import Image, ImageDraw

from hwocr.config import HardwareConfig, LoraConfig, ModelConfig, register_schema, to_config
from hwocr.data import Sample
from hwocr.errors import ConfigError
from hwocr.evaluate.generate import GenerationSettings, transcribe
from hwocr.inputs import IGNORE_INDEX, OcrCollator, encode_samples
from hwocr.model import load_model, load_processor, prepare_for_training
from tests.conftest import composed

register_schema()

PROMPT = "Text Recognition:"  # the model card's
# a line, a word and a paragraph, as wide, square and tall-ish images
SIZES = {"line": (1600, 120), "word": (128, 128), "paragraph": (1200, 800)}


@pytest.fixture(scope="module")
def glm(tiny_glm_ocr_config) -> ModelConfig:
    return tiny_glm_ocr_config


@pytest.fixture(scope="module")
def processor(glm):
    return load_processor(glm)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("glm-images")
    result = []
    for kind, size in SIZES.items():
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).text((10, size[1] // 2), f"{kind} chữ viết tay", fill="black")
        image.save(folder / f"{kind}.png")
        result.append(
            Sample(id=kind, writer="w", split="test", image=folder / f"{kind}.png", text=f"{kind} đẹp")
        )
    return result


def card_snippet(processor, images: list, **kwargs):
    """The model card's transformers snippet (its batch form for several images)."""
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}]}]
        for image in images
    ]
    return processor.apply_chat_template(
        messages if len(images) > 1 else messages[0],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
        **kwargs,
    )


def expected_prompt(processor, n_image_tokens: int) -> str:
    """What zai-org/GLM-OCR's chat template renders for one image and the prompt."""
    return (
        "[gMASK]<sop><|user|>\n<|begin_of_image|>"
        + "<|image|>" * n_image_tokens
        + f"<|end_of_image|>{PROMPT}<|assistant|>\n"
    )


@pytest.mark.parametrize("kinds", [["line"], ["word"], ["paragraph"], ["line", "word", "paragraph"]])
def test_inputs_are_the_model_cards(processor, samples, kinds):
    """hwocr's generation inputs (one image, or a left-padded batch) equal the model card's snippet
    run through the processor: ids, mask, modality types, pixels, grids, image-token positions."""
    chosen = [s for s in samples if s.id in kinds]
    ours = encode_samples(processor, chosen, PROMPT)
    images = [Image.open(s.image).convert("RGB") for s in chosen]
    theirs = (
        card_snippet(processor, images, processor_kwargs={"padding": True})
        if len(kinds) > 1
        else card_snippet(processor, images)
    )
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    image_id = processor.image_token_id
    assert torch.equal(ours["input_ids"] == image_id, theirs["input_ids"] == image_id)
    tokenizer = processor.tokenizer
    for row, grid in zip(ours["input_ids"], ours["image_grid_thw"], strict=True):
        text = tokenizer.decode(row[row != tokenizer.pad_token_id])
        assert text == expected_prompt(processor, int(grid.prod()) // 4)
    if len(kinds) > 1:  # left padding: every row ends with the generation prompt
        assert (ours["attention_mask"][:, -1] == 1).all() and (ours["attention_mask"][:, 0] == 0).any()


def test_training_examples_are_the_generation_prompt_then_the_answer_and_eos(processor, samples):
    """A training row is generation's inputs followed by the answer's tokens and GLM's EOS; labels are
    on those alone, the modality types mark them as text, the pixels are the snippet's."""
    collator = OcrCollator(processor, PROMPT, pad_to_multiple_of=1)
    batch = collator(samples)
    tokenizer = processor.tokenizer
    pixels_at = 0
    for row, sample in enumerate(samples):
        theirs = card_snippet(processor, [Image.open(sample.image).convert("RGB")])
        prompt_length = theirs["input_ids"].shape[1]
        answer = [*tokenizer(sample.text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        length = int(batch["attention_mask"][row].sum())
        assert length == prompt_length + len(answer)
        assert torch.equal(batch["input_ids"][row, :prompt_length], theirs["input_ids"][0])
        assert batch["input_ids"][row, prompt_length:length].tolist() == answer
        assert (batch["labels"][row, :prompt_length] == IGNORE_INDEX).all()
        assert batch["labels"][row, prompt_length:length].tolist() == answer
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        types = batch["mm_token_type_ids"][row]
        assert torch.equal(types[:prompt_length], theirs["mm_token_type_ids"][0])
        assert (types[prompt_length:] == 0).all()
        n = theirs["pixel_values"].shape[0]
        assert torch.equal(batch["pixel_values"][pixels_at : pixels_at + n], theirs["pixel_values"])
        pixels_at += n
    assert tokenizer.eos_token == "<|endoftext|>"


def _settings(**changes) -> GenerationSettings:
    return replace(GenerationSettings(prompt=PROMPT, max_new_tokens=12), **changes).reference()


def test_batched_and_one_by_one_transcriptions_are_identical(glm, processor, samples):
    """With a short repetition guard, each token is the best one not banned: small differences in
    the logits (padding that leaks into attention or positions) change the text."""
    model = load_model(glm, HardwareConfig())
    guard = {"no_repeat_ngram": 1, "no_repeat_window": 0}
    batched, _ = transcribe(model, processor, samples, _settings(batch_size=len(samples), **guard))
    alone, _ = transcribe(model, processor, samples, _settings(batch_size=1, **guard))
    assert [p.prediction for p in batched] == [p.prediction for p in alone]
    assert any(p.prediction for p in batched)  # random weights still write something


def test_transcription_ends_at_every_eos_of_the_generation_config(glm, processor, samples):
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
        [prediction], _ = transcribe(model, processor, samples[:1], _settings(batch_size=1))
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


def test_the_demo_runs_end_to_end(run_cli, tmp_path):
    code = run_cli(
        "+experiment=demo",
        "model=tiny_glm_ocr",
        f"model.source={tmp_path / 'tiny-glm-ocr'}",
        "train.max_steps=2",
        "train.save_steps=100",
        "train.eval_steps=100",
        "dataset.max_train_samples=8",
        "dataset.max_eval_samples=4",
        "dataset.synth.lines_per_writer=4",
        "eval.bootstrap_samples=100",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert code == 0, (tmp_path / "run" / "run.log").read_text()[-3000:]
    for stage in ("base", "tuned"):
        metrics = json.loads((tmp_path / "run" / "eval" / stage / "metrics.json").read_text())
        assert metrics["n_samples"] == 4
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_image_features_differ_across_images(glm, processor):
    """What the decoder receives differs from image to image (the learning test's premise)."""
    from learning import relative_spread

    model = load_model(glm, HardwareConfig()).eval()
    images = [word_image(word, (128, 128)) for word in WORDS]
    inputs = card_snippet(processor, images, processor_kwargs={"padding": True})
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


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.memory_optimizations=true"], "model.memory_optimizations"),
        (["backend=unsloth", "hardware=t4"], "backend=unsloth"),
        (["model.image_mode=dynamic"], "model.image_mode"),
    ],
)
def test_deepseek_only_settings_are_refused_by_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        to_config(composed("model=glm_ocr", *overrides))


def test_the_real_preset_is_pinned_and_validates(caplog):
    """`+experiment=lines_glm_ocr` loads zai-org/GLM-OCR at a commit: no unpinned warning."""
    from hwocr.model.load import warn_unpinned

    cfg = to_config(composed("+experiment=lines_glm_ocr"))
    assert cfg.model.family == "glm_ocr" and cfg.model.source == "zai-org/GLM-OCR"
    with caplog.at_level("WARNING"):
        warn_unpinned(cfg.model)
    assert "unpinned" not in caplog.text
    with caplog.at_level("WARNING"):
        warn_unpinned(replace(cfg.model, revision="main"))
    assert "unpinned" in caplog.text

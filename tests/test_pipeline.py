"""The model layer, training and evaluation on the tiny DeepSeek-OCR-2, on CPU."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from hwocr.config import DEFAULT_PROMPT, HardwareConfig, LoraConfig, ModelConfig
from hwocr.data import Sample
from hwocr.evaluate.fast.decoding import GROUPED_MM_KEPT, grouped_experts_while_decoding
from hwocr.evaluate.generate import (
    GenerationSettings,
    max_new_tokens_for,
    transcribe,
)
from hwocr.inputs import IGNORE_INDEX, OcrCollator, image_mode_settings
from hwocr.model import attach_adapter, load_model, load_processor, prepare_for_training, vision_tower

PROMPT = DEFAULT_PROMPT


@pytest.fixture(scope="session")
def line_samples(render_lines) -> list[Sample]:
    """Lines of varying width, so dynamic mode crops differently per image."""
    return render_lines([(300 + 280 * i, 60) for i in range(5)])


@pytest.mark.parametrize("mode", ["base", "small", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_collator_masks_everything_but_the_target(tiny_model_config, line_samples, mode):
    cfg = replace(tiny_model_config, image_mode=mode)
    processor = load_processor(cfg)
    model = load_model(cfg, HardwareConfig())
    batch = OcrCollator(processor, PROMPT)(line_samples)
    tokenizer = processor.tokenizer

    for row, sample in enumerate(line_samples):
        labelled = batch["labels"][row] != IGNORE_INDEX
        target = tokenizer(sample.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert batch["labels"][row][labelled].tolist() == target
        assert batch["input_ids"][row][labelled].tolist() == target
        # labels sit at the end of the real (unpadded) tokens
        n_real = int(batch["attention_mask"][row].sum())
        assert labelled[:n_real].tolist()[-len(target) :] == [True] * len(target)
        assert not labelled[n_real:].any()

    # image-token count matches the features the vision tower produces, image by image
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum().item()
    with torch.no_grad():
        features = model.model.get_image_features(
            batch["pixel_values"], batch.get("pixel_values_local"), batch["num_local_patches"]
        ).pooler_output
    assert n_image_tokens == sum(f.shape[0] for f in features)
    expected_global = {"base": 257, "small": 145, "dynamic": 257}[mode]
    assert (batch["input_ids"][0] == model.config.image_token_id).sum().item() >= expected_global
    if mode == "dynamic":
        assert batch["num_local_patches"].max() > 0
    else:
        assert batch["num_local_patches"].sum() == 0
    # and the forward pass accepts the batch (a mismatch raises inside transformers)
    assert torch.isfinite(model(**batch).loss)


def test_image_modes_use_fewer_tokens_for_lines():
    cfg = ModelConfig(source="x", image_size=1024, tile_size=768)
    assert image_mode_settings(replace(cfg, image_mode="base"))["crop_to_patches"] is False
    assert image_mode_settings(replace(cfg, image_mode="small"))["size"] == {"height": 768, "width": 768}
    assert image_mode_settings(replace(cfg, image_mode="dynamic"))["crop_to_patches"] is True


def test_lora_adapts_only_the_language_model_and_keeps_the_tower_out_of_backward(
    tiny_model_config, line_samples
):
    processor = load_processor(tiny_model_config)
    model = prepare_for_training(
        load_model(tiny_model_config, HardwareConfig()), LoraConfig(), HardwareConfig()
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in name and "lora_" in name for name in trainable)

    seen_grad_mode = []
    tower = vision_tower(model)
    tower.sam_encoder.register_forward_hook(lambda *_: seen_grad_mode.append(torch.is_grad_enabled()))
    batch = OcrCollator(processor, PROMPT)(line_samples[:2])
    model(**batch).loss.backward()
    assert seen_grad_mode == [False]
    assert all(p.grad is None for p in tower.parameters())


def test_full_finetuning_trains_the_language_model_not_the_tower(tiny_model_config):
    model = prepare_for_training(
        load_model(tiny_model_config, HardwareConfig()), LoraConfig(enabled=False), HardwareConfig()
    )
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("language_model" in n for n in names)
    assert not any("vision_tower" in n for n in names)


def _trained_lora_model(model_config, samples, steps: int, lr: float, lora: LoraConfig | None = None):
    """A LoRA model after `steps` AdamW steps on one batch, and its losses."""
    torch.manual_seed(0)
    processor = load_processor(model_config)
    model = prepare_for_training(
        load_model(model_config, HardwareConfig()), lora or LoraConfig(), HardwareConfig()
    )
    batch = OcrCollator(processor, PROMPT)(samples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model, processor, losses


def test_a_few_training_steps_lower_the_loss(tiny_model_config, line_samples):
    # LoRA and the output head, as the demo trains them: the tiny model's random head alone keeps the
    # logits near uniform (6.95 -> 6.71 in 8 steps with LoRA only; 6.95 -> 2.72 with the head)
    head = LoraConfig(modules_to_save=["lm_head"])
    _, _, losses = _trained_lora_model(tiny_model_config, line_samples, steps=8, lr=1e-2, lora=head)
    assert losses[-1] < losses[0] - 2.0, losses


def _settings(processor, samples, batch_size):
    return GenerationSettings(
        prompt=PROMPT,
        max_new_tokens=max_new_tokens_for([s.text for s in samples], processor.tokenizer, 4),
        batch_size=batch_size,
        no_repeat_ngram=3,
        no_repeat_window=8,
    )


@pytest.mark.parametrize("mode", ["base", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_batched_generation_equals_one_by_one(tiny_model_config, line_samples, mode):
    cfg = replace(tiny_model_config, image_mode=mode)
    processor = load_processor(cfg)
    model = load_model(cfg, HardwareConfig())
    batched, stats = transcribe(model, processor, line_samples, _settings(processor, line_samples, 5))
    single, _ = transcribe(model, processor, line_samples, _settings(processor, line_samples, 1))
    # batches of 2, 2 and 1: each encoded in the background while the one before generates
    pairs, _ = transcribe(model, processor, line_samples, _settings(processor, line_samples, 2))
    assert [p.prediction for p in batched] == [p.prediction for p in single] == [p.prediction for p in pairs]
    assert [p.id for p in batched] == [s.id for s in line_samples]
    assert any(p.prediction for p in batched)  # a random model still emits text
    assert stats.images_per_s > 0 and stats.n_failed == 0


def test_decoding_keeps_the_grouped_experts_kernel(tiny_model_config, monkeypatch):
    model = load_model(tiny_model_config, HardwareConfig())
    model.set_experts_implementation("grouped_mm")
    # transformers swaps grouped_mm for batched_mm while decoding on any non-CPU device
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    with model._optimize_model_for_decode():
        assert set(model.get_experts_implementation().values()) == {"batched_mm"}
    with grouped_experts_while_decoding(model), model._optimize_model_for_decode():
        assert set(model.get_experts_implementation().values()) == {GROUPED_MM_KEPT}
        assert ALL_EXPERTS_FUNCTIONS[GROUPED_MM_KEPT] is ALL_EXPERTS_FUNCTIONS["grouped_mm"]
    assert set(model.get_experts_implementation().values()) == {"grouped_mm"}  # the user's choice is back


def test_a_failing_sample_is_recorded_not_dropped(tiny_model_config, line_samples, tmp_path):
    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, HardwareConfig())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    samples = [*line_samples[:2], replace(line_samples[2], id="test/w0/broken.png", image=broken)]
    predictions, stats = transcribe(model, processor, samples, _settings(processor, samples, 3))
    assert [p.id for p in predictions] == [s.id for s in samples]
    assert predictions[2].prediction == "" and "broken.png" in predictions[2].error
    assert not predictions[0].error and stats.n_failed == 1


def test_generation_guards_reach_generate(tiny_model_config, line_samples):
    processor = load_processor(tiny_model_config)
    settings = _settings(processor, line_samples, 5)
    longest = max(
        len(processor.tokenizer(s.text, add_special_tokens=False)["input_ids"]) for s in line_samples
    )
    assert settings.max_new_tokens == longest + 1 + 4
    model = load_model(tiny_model_config, HardwareConfig())
    generated_lengths, generate = [], model.generate

    def recording_generate(**kwargs):
        output = generate(**kwargs)
        assert kwargs["max_new_tokens"] == settings.max_new_tokens
        (guard,) = kwargs["logits_processor"]
        assert (guard.ngram, guard.window) == (3, 8)
        assert guard.prompt_length == kwargs["input_ids"].shape[1]
        generated_lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = recording_generate
    transcribe(model, processor, line_samples, settings)
    assert generated_lengths and max(generated_lengths) <= settings.max_new_tokens


@pytest.mark.slow  # the fast tier has the same check end to end: test_demo.py::test_reevaluate_an_adapter_only
def test_adapter_round_trip_reproduces_predictions(tiny_model_config, line_samples, tmp_path):
    model, processor, _ = _trained_lora_model(tiny_model_config, line_samples, steps=5, lr=2e-2)
    settings = _settings(processor, line_samples, 5)
    before, _ = transcribe(model, processor, line_samples, settings)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    reloaded = attach_adapter(load_model(tiny_model_config, HardwareConfig()), tmp_path / "adapter")
    after, _ = transcribe(reloaded, processor, line_samples, settings)
    assert [p.prediction for p in after] == [p.prediction for p in before]
    base, _ = transcribe(load_model(tiny_model_config, HardwareConfig()), processor, line_samples, settings)
    assert [p.prediction for p in base] != [p.prediction for p in before]  # the adapter changed something


def test_tiny_checkpoint_survives_save_and_reload(tiny_model_config, tmp_path):
    model = load_model(tiny_model_config, HardwareConfig())
    model.save_pretrained(tmp_path / "copy")
    load_processor(tiny_model_config).save_pretrained(tmp_path / "copy")
    copy_cfg = replace(tiny_model_config, source=str(tmp_path / "copy"), build_tiny=False)
    copy = load_model(copy_cfg, HardwareConfig())
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert (
        load_processor(copy_cfg).tokenizer("xin chào")["input_ids"][0]
        == model.config.text_config.bos_token_id
    )


def test_qlora_path_on_cpu(tiny_model_config, line_samples):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    hardware = HardwareConfig(load_in_4bit=True, dtype="fp32")
    processor = load_processor(tiny_model_config)
    model = prepare_for_training(load_model(tiny_model_config, hardware), LoraConfig(), hardware)
    # hardware.device=cpu holds with a GPU present too (4-bit loading would otherwise move there)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all("language_model" in n for n in quantized)
    batch = OcrCollator(processor, PROMPT)(line_samples[:2])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_unknown_hub_model_fails_with_a_way_out(tmp_path):
    from hwocr.errors import ModelLoadError

    cfg = ModelConfig(name="x", source=str(tmp_path / "no-such-model"), revision="abc")
    with pytest.raises(ModelLoadError, match="model.source") as info:
        load_processor(cfg)
    assert "+experiment=demo" in str(info.value)
    assert not Path(cfg.source).exists()

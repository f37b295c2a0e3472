"""lora.vision: which parts of the vision tower adapt, with LoRA and under full fine-tuning; LoRA
targets checked against the model before PEFT sees them; an adapter on the tower saves, reloads,
predicts the same and resumes exactly."""

import shutil

import pytest
import torch
from conftest import run_hwocr
from safetensors.torch import load_file

from hwocr.config import HardwareConfig, LoraConfig, compose_config, register_schema, to_config
from hwocr.errors import ConfigError
from hwocr.model import load_model, prepare_for_training

register_schema()

SAM, ENCODER, QUERIES = "vision_tower.sam_encoder.", "vision_tower.vision_encoder.", "vision_tower.query_"


def trainable_parts(tiny_model_config, lora: LoraConfig) -> set[str]:
    """Which of SAM, the encoder, the learned queries and the language model have trainable weights."""
    model = prepare_for_training(load_model(tiny_model_config, HardwareConfig()), lora, HardwareConfig())
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    parts = {"sam": SAM, "encoder": ENCODER, "queries": QUERIES, "language_model": "language_model."}
    return {part for part, marker in parts.items() if any(marker in name for name in names)}


@pytest.mark.parametrize(
    ("vision", "lora_parts", "full_parts"),
    [
        ("frozen", set(), set()),
        ("encoder", {"encoder"}, {"encoder", "queries"}),
        ("tower", {"sam", "encoder"}, {"sam", "encoder", "queries"}),
    ],
)
def test_each_vision_option_trains_its_parts_of_the_tower(tiny_model_config, vision, lora_parts, full_parts):
    lora = trainable_parts(tiny_model_config, LoraConfig(vision=vision))
    assert lora == lora_parts | {"language_model"}
    full = trainable_parts(tiny_model_config, LoraConfig(enabled=False, vision=vision))
    assert full == full_parts | {"language_model"}


def test_a_lora_target_that_is_no_layer_stops_before_training_naming_the_key(tiny_model_config):
    # SAM's `proj` is a module of convolutions, not a layer LoRA can wrap
    with pytest.raises(
        ConfigError, match=r"lora.target_modules=.* matches .*sam_encoder.proj \(DeepseekOcr2SamVisionProj\)"
    ):
        trainable_parts(tiny_model_config, LoraConfig(target_modules=r".*sam_encoder.*\.proj"))
    with pytest.raises(ConfigError, match=r"lora.target_modules='.*nothing_here' matches no module"):
        trainable_parts(tiny_model_config, LoraConfig(target_modules=".*nothing_here"))


def test_a_mistyped_vision_option_is_a_config_error_naming_it():

    with pytest.raises(ConfigError, match=r"lora.vision='encodr' is not one of frozen, encoder, tower"):
        to_config(compose_config("+experiment=demo", "lora.vision=encodr"))


TOWER_RUN = (
    "+experiment=demo",
    "lora=r16_vision",
    "lora.vision=tower",
    "train.max_steps=4",
    "train.save_steps=2",
    "dataset.max_train_samples=8",
    "dataset.max_eval_samples=4",
    "dataset.synth.lines_per_writer=4",
    "stages=[train,tuned_eval]",
)


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory, tiny_model_config):
    tmp = tmp_path_factory.mktemp("tower")
    return tmp, (
        *TOWER_RUN,
        f"model.source={tiny_model_config.source}",
        f"tracking.uri=sqlite:///{tmp / 'db'}",
    )


@pytest.mark.long
def test_a_tower_adapter_reloads_predicts_the_same_and_resumes_exactly(tower_run, monkeypatch):
    tmp, overrides = tower_run
    monkeypatch.setenv("HWOCR_CACHE", str(tmp / "cache"))
    run_hwocr(tmp / "first", *overrides).check()
    adapter = load_file(tmp / "first" / "adapter" / "adapter_model.safetensors")
    assert any(SAM in key for key in adapter) and any(ENCODER in key for key in adapter)

    # reloaded from disk, the adapter writes what the run's own tuned evaluation wrote
    run_hwocr(
        tmp / "again", *overrides, "stages=[tuned_eval]", f"eval.adapter={tmp / 'first' / 'adapter'}"
    ).check()
    predictions = "eval/tuned/predictions.csv"
    assert (tmp / "again" / predictions).read_text() == (tmp / "first" / predictions).read_text()

    # stopped after checkpoint-2 and rerun, training ends on the same weights
    shutil.copytree(tmp / "first", tmp / "resumed")
    shutil.rmtree(tmp / "resumed" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(tmp / "resumed" / "adapter")
    run_hwocr(tmp / "resumed", *overrides).check()
    assert "resuming from" in (tmp / "resumed" / "run.log").read_text()
    resumed = load_file(tmp / "resumed" / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == adapter.keys()
    assert all(torch.equal(resumed[key], adapter[key]) for key in adapter)

"""Every preset composes and validates; bad keys and values fail with a message naming them."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from hwocr.config import Config, register_schema, to_config
from hwocr.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_presets_exist():
    assert {"demo", "lines", "words", "paragraphs"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = to_config(composed(f"+experiment={experiment}"))
    assert isinstance(cfg, Config)
    assert cfg.experiment == experiment
    assert cfg.model.prompt == "<image>\nFree OCR."  # DeepSeek-OCR's transcription prompt


def test_demo_is_tiny_on_cpu_with_synthetic_lines():
    cfg = to_config(composed("+experiment=demo"))
    assert (cfg.model.name, cfg.hardware.name, cfg.dataset.name) == ("tiny", "cpu", "synth_line")


@pytest.mark.parametrize("experiment", ["lines", "words", "paragraphs"])
def test_real_presets_are_qlora_r16_on_dual_t4(experiment):
    cfg = to_config(composed(f"+experiment={experiment}"))
    assert cfg.model.name == "deepseek_ocr2" and not cfg.model.trust_remote_code
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (16, 16, 0.0, "none")
    assert cfg.lora.target_modules is None  # = the language model's projections (hwocr/model/adapt.py)
    assert (cfg.hardware.num_devices, cfg.hardware.dtype, cfg.hardware.load_in_4bit) == (2, "fp16", True)
    level = {"lines": "line", "words": "word", "paragraphs": "paragraph"}[experiment]
    assert (cfg.dataset.kind, cfg.dataset.level, cfg.dataset.name) == ("uit_hwdb", level, f"uit_hwdb_{level}")
    assert cfg.dataset.root.endswith(f"/UIT_HWDB_{level}")


# device, GPUs, dtype, 4-bit, effective batch (per_device_batch x grad_accum x GPUs)
HARDWARE = {
    "cpu": ("cpu", 1, "fp32", False, 4),
    "t4": ("cuda", 1, "fp16", True, 32),  # a T4 has no bf16; 16 per step, as on each of t4x2's
    "t4x2": ("cuda", 2, "fp16", True, 32),
    "a100": ("cuda", 1, "bf16", False, 16),
    "h100": ("cuda", 1, "bf16", False, 32),
}


@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_hardware_profiles(hardware):
    hw = to_config(composed(f"hardware={hardware}")).hardware
    batch = hw.per_device_batch * hw.grad_accum * hw.num_devices
    assert hw.name == hardware
    assert (hw.device, hw.num_devices, hw.dtype, hw.load_in_4bit, batch) == HARDWARE[hardware]
    assert hw.gradient_checkpointing == (hw.device == "cuda")


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _own_values(path) -> dict:
    values = OmegaConf.to_container(OmegaConf.load(path))
    values.pop("defaults", None)
    return values


def _inherited(path, schema: dict) -> dict:
    """What `path` starts from: the schema's defaults, then the files it extends in its group."""
    base = OmegaConf.create(schema if "@package _global_" in path.read_text() else schema[path.parent.name])
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        parent = path.parent / f"{entry}.yaml" if isinstance(entry, str) else None
        if parent is not None and parent.is_file():
            base = OmegaConf.merge(_inherited(parent, schema), _own_values(parent))
    return OmegaConf.to_container(base)


@pytest.mark.parametrize("path", sorted(CONF.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_presets_state_only_what_differs(path):
    """No group file restates a value it already has from the schema (hwocr/config.py holds each
    default once) or from the file it extends; `name` may, since it names the option."""
    base = dict(_leaves(_inherited(path, OmegaConf.to_container(OmegaConf.structured(Config)))))
    for key, value in _leaves(_own_values(path)):
        assert key.endswith("name") or base.get(key, "<unset>") != value, f"{key}: {value!r} is inherited"


def test_lora_none_is_full_finetuning_and_rejects_4bit():
    assert not to_config(composed("lora=none")).lora.enabled
    with pytest.raises(ConfigError, match="load_in_4bit"):
        to_config(composed("lora=none", "hardware=t4"))


def test_documented_overrides_are_typed():
    cfg = to_config(
        composed(
            "dataset.root=/data/x",
            "dataset.max_train_samples=10",
            "dataset.max_eval_samples=5",
            "dataset.strict=true",
            "train.max_steps=3",
            "train.epochs=2",
            "train.lr=1e-4",
            "train.seed=1",
            "train.save_steps=7",
            "tracking.uri=http://127.0.0.1:5000",
            "tracking.experiment=x",
        )
    )
    assert cfg.dataset.max_train_samples == 10 and cfg.dataset.strict is True
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.save_steps == 7
    assert cfg.tracking.uri == "http://127.0.0.1:5000"


def test_mistyped_key_names_it():
    with pytest.raises(ConfigCompositionException) as info:
        composed("train.lrr=1")
    assert "lrr" in str(info.value.__cause__ or info.value)
    # `+` appends through Hydra; the schema merge at the entrypoint still rejects it.
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        to_config(composed("+train.lrr=1"))


def test_wrong_type_names_the_key():
    with pytest.raises((ValidationError, ConfigCompositionException)) as info:
        composed("train.max_steps=many")
    assert "max_steps" in str(info.value) + str(info.value.__cause__)


def test_bad_choice_names_the_key():
    with pytest.raises(ConfigError, match="model.image_mode"):
        to_config(composed("model.image_mode=huge"))


def test_remote_code_needs_a_pinned_revision():
    with pytest.raises(ConfigError, match="revision"):
        to_config(composed("model=deepseek_ocr", "model.revision=null"))


def test_cli_prints_validated_config_and_rejects_typo(run_cli, capsys):
    assert run_cli("+experiment=lines", "--cfg", "job") == 0
    out = capsys.readouterr().out
    assert "deepseek_ocr2" in out and "num_devices: 2" in out
    assert run_cli("+experiment=demo", "train.lrr=1") != 0
    output = "".join(capsys.readouterr())
    assert "lrr" in output and "Traceback" not in output

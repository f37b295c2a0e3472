"""Every preset composes and validates; bad keys and values fail with a message naming them."""

import logging

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from hwocr.config import (
    CONF_DIR,
    Config,
    compose_config,
    experts_adapted,
    register_schema,
    to_config,
    to_predict_config,
)
from hwocr.errors import ConfigError, PreflightError

register_schema()

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
GROUP_OPTIONS = sorted(
    (p.parent.name, p.stem)
    for p in CONF_DIR.glob("*/*.yaml")
    if p.parent.name in ("model", "lora", "dataset", "hardware")
)
PINNED = "model.revision=" + "0" * 40  # a commit hash: what model=deepseek_ocr (remote code) asks for


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = to_config(compose_config(f"+experiment={experiment}"))
    assert isinstance(cfg, Config)
    assert cfg.experiment == experiment
    # each model's own transcription prompt: DeepSeek-OCR's, PaddleOCR-VL's and GLM-OCR's cards'
    prompts = {"paddleocr_vl": "OCR:", "glm_ocr": "Text Recognition:"}
    assert cfg.model.prompt == prompts.get(cfg.model.family, "<image>\nFree OCR.")


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=lambda v: str(v))
def test_every_group_option_composes_and_validates_for_run_and_predict(group, option):
    """Each option names itself (a copied file that keeps its source's name would be a different option
    under a wrong name in MLflow); model and hardware options load in hwocr.predict too."""
    pin = [PINNED] if (group, option) == ("model", "deepseek_ocr") else []
    cfg = to_config(compose_config(f"{group}={option}", *pin))
    if group != "lora":  # LoraConfig has no name: runs record lora.r and the rest
        assert getattr(cfg, group).name == option
    if group in ("model", "hardware"):
        predict_cfg = to_predict_config(
            compose_config(f"{group}={option}", *pin, "images=x", config_name="predict")
        )
        assert getattr(predict_cfg, group) == getattr(cfg, group)


@pytest.mark.parametrize("experiment", ["lines", "words", "paragraphs"])
def test_real_presets_compose_to_the_documented_recipe(experiment, caplog):
    """README's recipe: DeepSeek-OCR-2 at a pinned revision in DeepSeek's own image mode, NF4 4-bit
    weights with LoRA r16 on the language model and its experts, fp16 on two GPUs, 32 samples per
    optimizer step, on the UIT-HWDB level the preset is named after."""
    from hwocr.model.load import quantization_config, warn_unpinned

    cfg = to_config(compose_config(f"+experiment={experiment}"))
    with caplog.at_level(logging.WARNING):
        warn_unpinned(cfg.model)
    assert caplog.text == ""
    assert (cfg.model.family, cfg.model.image_mode, cfg.model.trust_remote_code) == ("ocr2", "dynamic", False)
    quantized = quantization_config(cfg.model, cfg.hardware)
    assert quantized.bnb_4bit_quant_type == "nf4" and quantized.bnb_4bit_compute_dtype == torch.float16
    assert (cfg.lora.enabled, cfg.lora.r, experts_adapted(cfg)) == (True, 16, True)
    assert cfg.hardware.per_device_batch * cfg.hardware.grad_accum * cfg.hardware.num_devices == 32
    assert cfg.hardware.num_devices == 2
    assert f"uit_hwdb_{cfg.dataset.level}" == cfg.dataset.name and experiment.startswith(cfg.dataset.level)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_only_the_demo_runs_without_a_gpu(experiment, monkeypatch, tmp_path):
    """The demo passes preflight on a machine without GPUs; a real preset stops there at once, naming
    the profile and the demo."""
    from hwocr.preflight import preflight

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = to_config(compose_config(f"+experiment={experiment}", f"dataset.root={tmp_path}"))
    if experiment == "demo":
        preflight(cfg)
        return
    with pytest.raises(PreflightError) as info:
        preflight(cfg)
    assert f"hardware={cfg.hardware.name}" in str(info.value) and "+experiment=demo" in str(info.value)


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
    """What `path` starts from: the schema's defaults, then the files it extends in its group, and
    (a global preset) the group options it picks with `override /group: option`."""
    base = OmegaConf.create(schema if "@package _global_" in path.read_text() else schema[path.parent.name])
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        parent = path.parent / f"{entry}.yaml" if isinstance(entry, str) else None
        if parent is not None and parent.is_file():
            base = OmegaConf.merge(_inherited(parent, schema), _own_values(parent))
        for key, option in entry.items() if isinstance(entry, dict) else ():
            group = key.removeprefix("override ").strip("/")
            chosen = CONF_DIR / group / f"{option}.yaml"
            if chosen.is_file():
                picked = OmegaConf.merge(_inherited(chosen, schema), _own_values(chosen))
                base = OmegaConf.merge(base, {group: picked})
    return OmegaConf.to_container(base)


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_presets_state_only_what_differs(path):
    """No group file restates a value it already has from the schema (hwocr/config.py holds each
    default once) or from the file it extends; `name` may, since it names the option."""
    base = dict(_leaves(_inherited(path, OmegaConf.to_container(OmegaConf.structured(Config)))))
    for key, value in _leaves(_own_values(path)):
        assert key.endswith("name") or base.get(key, "<unset>") != value, f"{key}: {value!r} is inherited"


def test_lora_none_is_full_finetuning_and_rejects_4bit():
    assert not to_config(compose_config("lora=none")).lora.enabled
    with pytest.raises(ConfigError, match="load_in_4bit"):
        to_config(compose_config("lora=none", "hardware=t4"))


def test_documented_overrides_are_typed():
    cfg = to_config(
        compose_config(
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
        compose_config("train.lrr=1")
    assert "lrr" in str(info.value.__cause__ or info.value)
    # `+` appends through Hydra; the schema merge at the entrypoint still rejects it.
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        to_config(compose_config("+train.lrr=1"))


def test_predict_refuses_the_run_only_keys_instead_of_ignoring_them():
    """hwocr.predict's eval.* is the run's inference part: scoring keys would be silently unused."""
    with pytest.raises(ConfigError, match=r"eval\.bootstrap_samples"):
        to_predict_config(compose_config("images=x", "+eval.bootstrap_samples=10", config_name="predict"))


def test_wrong_type_names_the_key():
    with pytest.raises((ValidationError, ConfigCompositionException)) as info:
        compose_config("train.max_steps=many")
    assert "max_steps" in str(info.value) + str(info.value.__cause__)


# an override with a value the schema's types allow but hwocr cannot use -> the key the error names
BAD_VALUES = [
    ("model.image_mode=huge", "model.image_mode"),
    ("model.family=ocr3", "model.family"),
    ("hardware.dtype=fp8", "hardware.dtype"),
    ("hardware.device=tpu", "hardware.device"),
    ("hardware.num_devices=0", "hardware.num_devices"),
    ("hardware.per_device_batch=0", "hardware.per_device_batch"),
    ("hardware.grad_accum=0", "hardware.grad_accum"),
    ("eval.batch_size=-1", "eval.batch_size"),
    ("eval.encode_threads=0", "eval.encode_threads"),
    ("eval.repetition_guard.window=3", "eval.repetition_guard"),  # shorter than its 20-gram
]
RUN_ONLY_BAD_VALUES = [
    ("dataset.val_fraction=1.0", "dataset.val_fraction"),
    ("dataset.level=page", "dataset.level"),
    ("backend=vllm", "backend"),
    ("stages=[base_eval,test]", "stages"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES + RUN_ONLY_BAD_VALUES)
def test_a_bad_value_is_a_config_error_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_config(override))


@pytest.mark.parametrize(("override", "key"), BAD_VALUES + [("max_new_tokens=0", "max_new_tokens")])
def test_predict_refuses_what_the_run_refuses(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_predict_config(compose_config(override, "images=x", config_name="predict"))


def test_predict_without_images_names_the_key():
    with pytest.raises(ConfigError, match="images must be set"):
        to_predict_config(compose_config(config_name="predict"))


def test_gundam_on_deepseek_ocr2_is_dynamic_with_a_deprecation_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hwocr.config"):
        run_cfg = to_config(compose_config("model=deepseek_ocr2", "model.image_mode=gundam"))
        predict_cfg = to_predict_config(
            compose_config(
                "model=deepseek_ocr2", "model.image_mode=gundam", "images=x", config_name="predict"
            )
        )
    assert run_cfg.model.image_mode == predict_cfg.model.image_mode == "dynamic"
    assert caplog.text.count("model.image_mode=gundam is deprecated") == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hwocr.config"):
        v1 = to_config(compose_config("model=deepseek_ocr", PINNED, "model.image_mode=gundam"))
    assert v1.model.image_mode == "gundam" and caplog.text == ""  # v1's own mode of that name


def test_remote_code_needs_a_pinned_revision():
    with pytest.raises(ConfigError, match="revision"):
        to_config(compose_config("model=deepseek_ocr", "model.revision=null"))


def test_cli_prints_validated_config_and_rejects_typo(run_cli, capsys):
    assert run_cli("+experiment=lines", "--cfg", "job") == 0
    out = capsys.readouterr().out
    assert "deepseek_ocr2" in out and "num_devices: 2" in out
    assert run_cli("+experiment=demo", "train.lrr=1") != 0
    output = "".join(capsys.readouterr())
    assert "lrr" in output and "Traceback" not in output

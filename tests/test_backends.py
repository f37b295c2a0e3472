"""Model families and backends: DeepSeek-OCR v1 (remote code) and Unsloth, as far as a CPU with
transformers 5.17 can check them (the GPU and v1-profile checks: tests/test_ocr1_remote.py and
experiments/)."""

import contextlib
import importlib.abc
import os
import re
import sys

import pytest
import torch
import transformers
from packaging.version import Version

from hwocr.config import HardwareConfig, LoraConfig, compose_config, register_schema, to_config
from hwocr.errors import ConfigError, ModelLoadError, PreflightError
from hwocr.model import load_model, prepare_for_training
from hwocr.model.families import family
from hwocr.preflight import OCR1_TRANSFORMERS, preflight

register_schema()

# v1's module names (remote code DeepseekOCRForCausalLM): a dense first layer, routed and shared
# experts after it; SAM and CLIP-L name their projections qkv / qkv_proj / out_proj / fc1.
V1_LANGUAGE = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.gate_proj",
    "model.layers.5.mlp.experts.63.down_proj",
    "model.layers.11.mlp.shared_experts.up_proj",
    "model.layers.11.self_attn.o_proj",
]
V1_OTHER = [
    "model.sam_model.blocks.0.attn.qkv",
    "model.sam_model.blocks.0.attn.proj",
    "model.vision_model.transformer.layers.0.self_attn.qkv_proj",
    "model.vision_model.transformer.layers.0.self_attn.out_proj",
    "model.projector.layers",
    "model.layers.5.mlp.gate",  # the router
    "lm_head",
]


def test_v1_lora_targets_are_its_language_model_projections():
    pattern = family("ocr1").language_model_targets
    assert [name for name in V1_LANGUAGE + V1_OTHER if re.fullmatch(pattern, name)] == V1_LANGUAGE


def test_ocr2_lora_targets_leave_the_vision_tower_alone(tiny_model_config):
    model = load_model(tiny_model_config, HardwareConfig())
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    matched = [name for name in names if re.fullmatch(family("ocr2").language_model_targets, name)]
    assert matched and all(".language_model." in name for name in matched)
    assert any("vision_tower" in name and name.endswith("q_proj") for name in names)  # same names there


def test_v1_config_needs_a_pinned_revision_and_knows_its_modes(tmp_path):
    with pytest.raises(ConfigError, match="pin model.revision"):
        to_config(compose_config("model=deepseek_ocr"))
    cfg = to_config(compose_config("model=deepseek_ocr", "model.revision=0123abc", "model.image_mode=large"))
    assert (cfg.model.family, cfg.model.trust_remote_code, cfg.model.tile_size) == ("ocr1", True, 640)
    # a local directory is what was reviewed: no revision needed
    assert to_config(compose_config("model=deepseek_ocr", f"model.source={tmp_path}")).model.revision is None
    with pytest.raises(ConfigError, match="model.image_mode='large'"):
        to_config(compose_config("model.image_mode=large"))  # DeepSeek-OCR-2 has no large mode
    with pytest.raises(ConfigError, match="trust_remote_code=true"):
        to_config(
            compose_config("model=deepseek_ocr", "model.revision=0123abc", "model.trust_remote_code=false")
        )
    with pytest.raises(ConfigError, match="LoRA"):
        to_config(compose_config("model=deepseek_ocr", "model.revision=0123abc", "lora=none"))


@pytest.mark.skipif(
    Version(OCR1_TRANSFORMERS[0]) <= Version(transformers.__version__) < Version(OCR1_TRANSFORMERS[1]),
    reason="this environment is the ocr1 profile",
)
def test_v1_under_the_wrong_transformers_names_the_install_profile(tmp_path):
    cfg = to_config(compose_config("model=deepseek_ocr", f"model.source={tmp_path}"))
    with pytest.raises(ModelLoadError, match=r"transformers >=4\.56,<4\.58.*pip install -e '\.\[ocr1\]'"):
        load_model(cfg.model, cfg.hardware)
    with pytest.raises(PreflightError, match=r"ocr1"):  # listed with the other prerequisites, at once
        preflight(cfg)


def test_unsloth_backend_is_refused_without_a_gpu(run_cli, capsys):
    with pytest.raises(ConfigError, match="backend=unsloth needs a CUDA GPU"):
        to_config(compose_config("backend=unsloth"))
    with pytest.raises(ConfigError, match="backend"):
        to_config(compose_config("backend=vllm"))
    assert run_cli("backend=unsloth", "stages=[base_eval]") == 2


def test_unsloth_import_errors_are_explained(monkeypatch):
    from hwocr.model.unsloth import UnslothUnavailable, fast_vision_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnslothUnavailable, match="needs a CUDA GPU"):
        fast_vision_model()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # as if the extra were not installed
    with pytest.raises(UnslothUnavailable, match=r"pip install -e '\.\[unsloth\]'"):
        fast_vision_model()


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Notes every attempt to import `unsloth`, installed or not, and stops it (importing Unsloth
    patches transformers for the rest of the session)."""

    def __init__(self):
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "unsloth":
            self.attempts.append(name)
            raise ImportError(f"{name}: not imported in the tests")
        return None


def test_cpu_code_paths_never_import_unsloth(tiny_model_config, monkeypatch):
    recorder = _ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    for name in [m for m in sys.modules if m.split(".")[0] == "unsloth"]:
        monkeypatch.delitem(sys.modules, name)  # so that an import would reach the finders
    model = prepare_for_training(
        load_model(tiny_model_config, HardwareConfig()), LoraConfig(), HardwareConfig()
    )
    assert model.peft_config["default"].r == 16
    assert recorder.attempts == []
    # the recorder does see the backend's import: the GPU path, taken here with a faked GPU
    from hwocr.model.unsloth import UnslothUnavailable, fast_vision_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with contextlib.suppress(UnslothUnavailable):
        fast_vision_model()
    assert recorder.attempts and recorder.attempts[0] == "unsloth"


class TransformersAsUnsloth:
    """Stands in for Unsloth's FastVisionModel on a CPU: loads what hwocr hands it with transformers,
    as Unsloth's from_pretrained does once it has taken its own arguments out."""

    block_compile_at_load: list[str | None] = []

    @staticmethod
    def from_pretrained(source, *, load_in_4bit, load_in_16bit, auto_model, use_gradient_checkpointing, **kw):
        TransformersAsUnsloth.block_compile_at_load.append(os.environ.get("UNSLOTH_BLOCK_COMPILE"))
        if "quantization_config" not in kw and load_in_4bit:  # Unsloth's own 4-bit defaults
            kw["quantization_config"] = transformers.BitsAndBytesConfig(load_in_4bit=True)
        auto_model = auto_model or transformers.AutoModelForImageTextToText
        return auto_model.from_pretrained(source, **kw | {"device_map": {"": "cpu"}}), None

    @staticmethod
    def for_inference(model):
        pass


def test_unsloth_loads_the_model_with_hwocrs_quantization_and_sdpa(tiny_model_config, monkeypatch):
    """The model Unsloth builds from hwocr's arguments: 4-bit NF4 language layers beside a vision
    tower kept out of 4-bit (hwocr's skip list), in the profile's dtype, with sdpa attention."""
    bnb = pytest.importorskip("bitsandbytes")
    import hwocr.model.unsloth as backend

    monkeypatch.setattr(backend, "fast_vision_model", lambda: TransformersAsUnsloth)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    hardware = HardwareConfig(load_in_4bit=True, dtype="fp16")
    model = load_model(tiny_model_config, hardware, backend="unsloth")
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert quantized and all("language_model" in name for name in quantized)
    assert {model.get_submodule(name).weight.quant_type for name in quantized} == {"nf4"}
    assert model.model.vision_tower.sam_encoder.layers[0].attn.qkv.weight.dtype == torch.float16
    assert model.config._attn_implementation == "sdpa"


def test_unsloth_loads_v1_without_block_compilation_unless_the_user_says(monkeypatch):
    """v1's MoE recompiles under Unsloth's block compilation: Unsloth sees it off at load time."""
    import hwocr.model.unsloth as backend
    from hwocr.config import ModelConfig

    def load_v1():
        v1 = ModelConfig(name="deepseek_ocr", family="ocr1", source="/ckpt", trust_remote_code=True)
        with contextlib.suppress(OSError):  # no checkpoint: what Unsloth saw is what counts
            backend.load_with_unsloth(v1, torch.float16, "/ckpt", None, None)

    TransformersAsUnsloth.block_compile_at_load.clear()
    monkeypatch.setattr(backend, "fast_vision_model", lambda: TransformersAsUnsloth)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    monkeypatch.delenv("UNSLOTH_BLOCK_COMPILE", raising=False)
    load_v1()
    monkeypatch.setenv("UNSLOTH_BLOCK_COMPILE", "1")
    load_v1()
    assert TransformersAsUnsloth.block_compile_at_load == ["0", "1"]

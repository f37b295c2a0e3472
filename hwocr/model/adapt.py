"""Make a loaded model trainable: LoRA (or full fine-tuning), a frozen vision tower, checkpointing."""

import functools
import logging
import re
import weakref
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from hwocr.compat import enable_activation_checkpointing
from hwocr.config import HardwareConfig, LoraConfig
from hwocr.errors import ConfigError
from hwocr.model.expert_lora import (
    EXPERT_PARAMETERS,
    PackedExpertsParamWrapper,
    adapted_expert_parameters,
    peft_sees_packed_experts,
)
from hwocr.model.families import family_of
from hwocr.model.weights import require_safetensors

log = logging.getLogger(__name__)

_NATIVE_KEY_WRAPPERS: set = set()  # what _keep_native_adapter_keys installed: never wrapped twice
_TOWERS_WITHOUT_GRAD: weakref.WeakSet = weakref.WeakSet()  # keep_frozen_tower_out_of_autograd's


def _keep_native_adapter_keys() -> None:
    """Stop PEFT from renaming adapter keys that are already in transformers' native layout.

    PEFT 0.21 applies DeepSeek-OCR-2's checkpoint-conversion regexes to adapter state dicts on
    load. One of them, `(^|model\\.)layers\\.` -> `language_model.layers.`, also matches inside the
    native `model.language_model.layers.`, so an adapter saved by this very model (and every Trainer
    resume) loads nothing but a "missing adapter keys" warning. Legacy-layout adapters (hub
    remote-code names) still go through the conversion.
    """
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:  # transformers 4.x (the ocr1 profile): PEFT converts nothing there
        return

    original = conversion.convert_peft_adapter_state_dict_for_transformers
    if original in _NATIVE_KEY_WRAPPERS:
        return

    @functools.wraps(original)
    def convert(model, peft_config, adapter_state_dict, adapter_name="default"):
        if any(".language_model." in key for key in adapter_state_dict):
            return adapter_state_dict
        return original(model, peft_config, adapter_state_dict, adapter_name)

    _NATIVE_KEY_WRAPPERS.add(convert)
    conversion.convert_peft_adapter_state_dict_for_transformers = convert


_keep_native_adapter_keys()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    return family_of(model).vision_tower(unwrap(model))


# Module types PEFT's LoRA can wrap (what a target regex may name), bitsandbytes' layers included.
LORA_LAYER_TYPES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1d", "Conv2d", "Conv3d", "Embedding")


def prepare_for_training(
    model: PreTrainedModel, lora: LoraConfig, hardware: HardwareConfig, backend: str = "hf"
) -> torch.nn.Module:
    targets = lora_targets(model, lora)
    if backend == "unsloth":
        from hwocr.model.unsloth import add_lora

        return add_lora(model, lora, targets, hardware)
    model.requires_grad_(False)
    if lora.enabled:
        peft_config = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            bias=lora.bias,
            target_modules=targets,  # a string is a full-match regex in PEFT
            modules_to_save=lora.modules_to_save,
            # DeepSeek-OCR-2's routed experts are fused 3-D Parameters, out of target_modules' reach;
            # v1's are nn.Linear modules, which its target_modules already cover.
            target_parameters=expert_targets(model, lora),
            task_type="CAUSAL_LM",
        )
        with peft_sees_packed_experts(model):
            model = get_peft_model(model, peft_config)
    else:
        # Full fine-tuning of everything after the vision tower, and of the tower's parts that
        # lora.vision names.
        trained = family_of(model).fully_trained + vision_prefixes(model, lora.vision)
        for name, param in model.named_parameters():
            if name.startswith(trained):
                param.requires_grad_(True)
    # Mixed precision scales and unscales fp32 gradients; fp16 trainable weights break GradScaler.
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    keep_frozen_tower_out_of_autograd(model)
    if hardware.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so the frozen embeddings and
        # vision tower need no hooks that would drag them into backward.
        enable_activation_checkpointing(model, {"use_reentrant": False})
    trainable, total = count_parameters(model)
    log.info(
        "trainable parameters: %s of %s (%.2f%%)%s%s",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        ", routed experts included" if adapted_expert_parameters(model) else "",
        f", vision: {lora.vision}" if lora.vision != "frozen" else "",
    )
    return model


def vision_prefixes(model: torch.nn.Module, vision: str) -> tuple[str, ...]:
    """Module-name prefixes of the vision parts that `lora.vision` adapts (none when frozen)."""
    return family_of(model).vision_parts.get(vision, ())


def lora_targets(model: torch.nn.Module, lora: LoraConfig) -> str:
    """The LoRA target regex: lora.target_modules, or the language model's projections plus the
    layers of the vision parts that lora.vision names. Checked against the model: a regex that
    names no layer, or a module PEFT cannot adapt, is a ConfigError naming the key."""
    if lora.target_modules:
        key, regex = "lora.target_modules", lora.target_modules
    else:
        key, regex = "lora.vision", family_of(model).language_model_targets
        vision = [
            name
            for name, module in model.named_modules()
            if name.startswith(vision_prefixes(model, lora.vision)) and isinstance(module, torch.nn.Linear)
        ]
        if vision:
            regex = f"{regex}|{layer_pattern(vision)}"
    if lora.enabled:
        check_lora_targets(model, regex, key)
    return regex


def layer_pattern(names: list[str]) -> str:
    """A compact full-match regex for these module names: layer indices become \\d+."""
    patterns = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(name)) for name in names})
    return "(" + "|".join(patterns) + ")"


def check_lora_targets(model: torch.nn.Module, regex: str, key: str) -> None:
    try:
        pattern = re.compile(regex)
    except re.error as error:
        raise ConfigError(f"{key}={regex!r} is not a valid regex: {error}") from error
    matched = [(name, module) for name, module in model.named_modules() if pattern.fullmatch(name)]
    if not matched:
        raise ConfigError(f"{key}={regex!r} matches no module of {type(unwrap(model)).__name__}")
    for name, module in matched:
        if type(module).__name__ not in LORA_LAYER_TYPES:
            raise ConfigError(
                f"{key}={regex!r} matches {name} ({type(module).__name__}), which LoRA cannot adapt: "
                f"a target must be a layer ({', '.join(LORA_LAYER_TYPES)}); narrow the regex"
            )


def expert_targets(model: torch.nn.Module, lora: LoraConfig) -> list[str] | None:
    """PEFT target_parameters for the routed experts (lora.experts), DeepSeek-OCR-2 only."""
    return EXPERT_PARAMETERS if lora.experts and family_of(model).traits.deepseek_speedups else None


def keep_frozen_tower_out_of_autograd(model: torch.nn.Module) -> bool:
    """Run the vision tower under no_grad when none of its parameters train.

    Its activations (SAM attention at 4096 patches at full size) are then never stored for backward.
    Returns whether the wrapper was installed. (v1's remote code already runs its encoders under
    no_grad.)
    """
    if family_of(model).tower_without_grad:
        return False
    tower = vision_tower(model)
    if any(p.requires_grad for p in tower.parameters()) or tower in _TOWERS_WITHOUT_GRAD:
        return False
    forward = tower.forward

    @functools.wraps(forward)
    def forward_without_grad(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)

    tower.forward = forward_without_grad
    _TOWERS_WITHOUT_GRAD.add(tower)
    return True


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def attach_adapter(model: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    """Load a saved PEFT adapter (adapter_config.json + adapter_model.safetensors) for inference."""
    from hwocr.errors import CheckpointError, ConfigError, ModelLoadError

    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"eval.adapter={adapter_dir} is not a PEFT adapter: it has no adapter_config.json "
            "(point eval.adapter at the run's adapter/ dir or a Trainer checkpoint-N dir)"
        )

    try:
        require_safetensors(adapter_dir, "adapter")  # refuses a pickled adapter_model.bin
    except CheckpointError as error:
        raise ModelLoadError(str(error)) from error
    with peft_sees_packed_experts(model):  # an adapter with target_parameters on NF4 experts
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)


def merge_for_evaluation(model: torch.nn.Module) -> bool:
    """Fold a LoRA into the 16-bit weights it adapts, in place, so that evaluation runs the plain
    model's kernels: unmerged, a LoRA on the routed experts rebuilds every expert's weights at each
    step. The adapter's own weights (what is saved) are untouched. False, and nothing done, for a
    model without a LoRA and for 4-bit weights (merging would requantise them)."""
    if not isinstance(model, PeftModel):
        return False
    if getattr(model.get_base_model(), "hf_quantizer", None) is not None or any(
        isinstance(module, PackedExpertsParamWrapper) for module in model.modules()
    ):
        return False
    with torch.no_grad():
        model.merge_adapter()
    return True

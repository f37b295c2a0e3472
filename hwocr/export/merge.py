"""The LoRA folded into the base model's weights, saved as a plain transformers checkpoint."""

import importlib.util
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from hwocr.config import HardwareConfig
from hwocr.export.source import ExportSource
from hwocr.model import attach_adapter, load_model, load_processor

log = logging.getLogger(__name__)

# Trainer checkpoints hold pickles (training_args.bin, optimizer.pt, rng_state.pth): loading one can run
# code, and none is needed to use the adapter.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
NATIVE_PREFIX, CHECKPOINT_PREFIX = "model.language_model.", "model."


def write_merged(source: ExportSource, output: Path) -> dict:
    """Base model (unquantised, plain modules, on the CPU) + adapter, merged and saved with its processor.

    Every LoRA the adapter holds is folded in: the projections' (target_modules), the routed experts'
    (target_parameters), and whole modules trained beside them (modules_to_save) replace the base's.
    Returns what was merged, for the export's record."""
    hardware = HardwareConfig(device="cpu", dtype=source.dtype, load_in_4bit=False)
    processor = load_processor(source.model)
    stock = replace(source.model, memory_optimizations=False)
    model = attach_adapter(load_model(stock, hardware), source.adapter_dir)
    adapter = model.peft_config["default"]
    with torch.no_grad():
        merged = model.merge_and_unload(safe_merge=True)  # safe: a NaN from the merge is an error
    merged.save_pretrained(output)  # safetensors
    processor.save_pretrained(output)
    if source.trained_in_4bit:
        log.warning(
            "the adapter was trained on the 4-bit base; it is merged into the base loaded unquantised (%s), "
            "whose weights it never saw (it learnt against their NF4 rounding): the exported model's "
            "outputs can differ from the run's tuned evaluation",
            source.dtype,
        )
    return {
        "target_modules": _plain(adapter.target_modules),
        "target_parameters": _plain(adapter.target_parameters),
        "modules_to_save": _plain(adapter.modules_to_save),
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
    }


def peft_converts_adapter_keys() -> bool:
    """PEFT (0.21 on) renames adapter keys on load with transformers' checkpoint conversion."""
    return importlib.util.find_spec("peft.utils.transformers_weight_conversion") is not None


def _checkpoint_key_names(weights: Path) -> None:
    """The LoRA keys in DeepSeek-OCR-2's checkpoint names (`model.layers.N`, not transformers'
    `model.language_model.layers.N`).

    On load PEFT renames LoRA keys with transformers' checkpoint conversion for the model, whose
    `(^|model\\.)layers\\.` -> `language_model.layers.` also matches inside the native name, so an
    adapter saved in native names loads nothing (a "missing adapter keys" warning). Checkpoint names
    convert to the native ones. Other keys (modules_to_save) pass through unconverted and keep theirs.
    hwocr loads both forms (model/adapt.py)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    renamed = {
        key.replace(NATIVE_PREFIX, CHECKPOINT_PREFIX) if ".lora_" in key else key: value
        for key, value in tensors.items()
    }
    save_file(renamed, weights, metadata=metadata)


def _plain(value):
    return sorted(value) if isinstance(value, set) else value


def copy_adapter(
    source: ExportSource, destination: Path, hub_id: str | None, revision: str | None
) -> list[str]:
    """The adapter's files as trained, less pickles, for PEFT: its weights unchanged, their LoRA keys
    in the names the installed PEFT loads (_checkpoint_key_names), its config naming the base by hub
    id where known (PEFT's AutoPeftModel loads the base from there). Returns the names left out."""
    left_out = []

    def ignore(directory: str, names: list[str]) -> list[str]:
        skipped = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        left_out.extend(skipped)
        return skipped

    shutil.copytree(source.adapter_dir, destination, ignore=ignore)
    if peft_converts_adapter_keys():
        _checkpoint_key_names(destination / "adapter_model.safetensors")
    if hub_id:
        config_path = destination / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"], config["revision"] = hub_id, revision
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if left_out:
        log.info("adapter copied without %s (pickles: not needed to use it)", ", ".join(sorted(left_out)))
    return sorted(left_out)

"""The LoRA folded into the base model's weights, saved as a plain transformers checkpoint."""

import json
import logging
import shutil
from pathlib import Path

import torch

from hwocr.config import HardwareConfig
from hwocr.export.source import ExportSource
from hwocr.model import attach_adapter, load_model, load_processor

log = logging.getLogger(__name__)

# Trainer checkpoints hold pickles (training_args.bin, optimizer.pt, rng_state.pth): loading one can run
# code, and none is needed to use the adapter.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


def write_merged(source: ExportSource, output: Path) -> dict:
    """Base model (unquantised, plain modules, on the CPU) + adapter, merged and saved with its processor.

    Every LoRA the adapter holds is folded in: the projections' (target_modules), the routed experts'
    (target_parameters), and whole modules trained beside them (modules_to_save) replace the base's.
    Returns what was merged, for the export's record."""
    hardware = HardwareConfig(device="cpu", dtype=source.dtype, load_in_4bit=False, optimize=False)
    processor = load_processor(source.model)
    model = attach_adapter(load_model(source.model, hardware), source.adapter_dir)
    adapter = model.peft_config["default"]
    with torch.no_grad():
        merged = model.merge_and_unload(safe_merge=True)  # safe: a NaN from the merge is an error
    merged.save_pretrained(output)  # safetensors
    processor.save_pretrained(output)
    if source.trained_in_4bit:
        log.warning(
            "the adapter was trained on the 4-bit base; it is merged into the base loaded unquantised (%s), "
            "so the exported model's arithmetic differs a little from the one the run evaluated",
            source.dtype,
        )
    return {
        "target_modules": _plain(adapter.target_modules),
        "target_parameters": _plain(adapter.target_parameters),
        "modules_to_save": _plain(adapter.modules_to_save),
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
    }


def _plain(value):
    return sorted(value) if isinstance(value, set) else value


def copy_adapter(source: ExportSource, destination: Path, hub_id: str | None, revision: str | None) -> list[str]:
    """The adapter's files as trained, less pickles; its config names the base by hub id where known
    (PEFT's AutoPeftModel loads the base from there). Returns the names left out."""
    left_out = []

    def ignore(directory: str, names: list[str]) -> list[str]:
        skipped = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        left_out.extend(skipped)
        return skipped

    shutil.copytree(source.adapter_dir, destination, ignore=ignore)
    if hub_id:
        config_path = destination / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"], config["revision"] = hub_id, revision
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if left_out:
        log.info("adapter copied without %s (pickles: not needed to use it)", ", ".join(sorted(left_out)))
    return sorted(left_out)

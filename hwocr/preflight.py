"""Checks that fail at once, with a way forward, before any data or model work starts."""

import os
from pathlib import Path

import torch

from hwocr.config import FAMILIES, Config, HardwareConfig
from hwocr.distributed import SHARE_ONE_GPU
from hwocr.errors import ModelLoadError, PreflightError

# The transformers releases under which v1's remote code (unsloth/DeepSeek-OCR) imports and trains;
# measured: 4.56.2 and 4.57.6 work, 4.46 needs deepseek-ai's original code, 5.x fails to import it.
OCR1_TRANSFORMERS = ("4.56", "4.58")
DEMO_HINT = "To try hwocr without a GPU or data: `python -m hwocr.run +experiment=demo`."


def hardware_problems(hardware: HardwareConfig) -> list[str]:
    if hardware.device != "cuda":
        return []
    found = torch.cuda.device_count()
    if found == 0:
        return [
            f"hardware={hardware.name} needs {hardware.num_devices} CUDA GPU(s), but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "on a CPU add `hardware=cpu model=tiny`"
        ]
    if found < hardware.num_devices and os.environ.get(SHARE_ONE_GPU) != "1":
        return [
            f"hardware={hardware.name} asks for {hardware.num_devices} GPUs but {found} are visible; "
            f"use hardware.num_devices={found} or a single-GPU profile (hardware=t4)"
        ]
    if hardware.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return [
            f"hardware.dtype=bf16 is not supported by {torch.cuda.get_device_name(0)}; use hardware.dtype=fp16"
        ]
    return []


def dataset_problems(cfg: Config) -> list[str]:
    dataset = cfg.dataset
    if dataset.kind == "synth":
        return []
    root = Path(dataset.root or "")
    if dataset.kind == "manifest" and not (dataset.root and root.is_file()):
        return [
            f"dataset.root={dataset.root!r} is not a file (resolved: {root.resolve()}); point it at a CSV, "
            "TSV or JSONL manifest with a row per image (docs/datasets.md)"
        ]
    if dataset.kind == "hf":
        if not dataset.root:
            return [
                "dataset.root is not set; point it at a save_to_disk folder, a folder of parquet files or "
                "an imagefolder, a .parquet file, or a hub id (docs/datasets.md)"
            ]
        return []  # a path that does not exist is a hub id: only datasets.load_dataset can tell
    if dataset.kind == "uit_hwdb" and (not dataset.root or not root.is_dir()):
        return [
            f"dataset.root={dataset.root!r} does not exist (resolved: {root.resolve()}); point it at the "
            f"UIT-HWDB {dataset.level} folder that holds train_data/ and test_data/, e.g. "
            f"dataset.root=/kaggle/input/<dataset>/UIT_HWDB_{dataset.level}"
        ]
    return []


def check_hardware(hardware: HardwareConfig) -> None:
    problems = hardware_problems(hardware)
    if problems:
        raise PreflightError("\n".join(problems))


def require_ocr1_transformers() -> None:
    """v1's remote code breaks across transformers releases; say so before it fails deep inside."""
    import transformers
    from packaging.version import Version

    low, high = OCR1_TRANSFORMERS
    if not Version(low) <= Version(transformers.__version__) < Version(high):
        raise ModelLoadError(
            f"model.family=ocr1 (DeepSeek-OCR v1) runs the hub's remote code, which loads only under "
            f"transformers >={low},<{high}; this environment has transformers {transformers.__version__}. "
            "Install the ocr1 profile in its own environment: pip install -e '.[ocr1]' "
            "(docs/v1-and-unsloth.md)"
        )


def model_problems(cfg: Config) -> list[str]:
    if not FAMILIES[cfg.model.family].remote_code:
        return []
    try:
        require_ocr1_transformers()
    except ModelLoadError as error:
        return [str(error)]
    return []


def preflight(cfg: Config) -> None:
    """Report every missing prerequisite at once, before anything heavy runs."""
    problems = hardware_problems(cfg.hardware) + dataset_problems(cfg) + model_problems(cfg)
    if problems:
        raise PreflightError(
            f"cannot run experiment {cfg.experiment!r}:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\n{DEMO_HINT}"
        )

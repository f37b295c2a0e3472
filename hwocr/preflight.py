"""Checks that fail at once, with a way forward, before any data or model work starts."""

import torch

from hwocr.config import HardwareConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PreflightError(RuntimeError):
    pass


def torch_dtype(hardware: HardwareConfig) -> torch.dtype:
    return DTYPES[hardware.dtype]


def check_hardware(hardware: HardwareConfig) -> None:
    if hardware.device != "cuda":
        return
    found = torch.cuda.device_count()
    if found == 0:
        raise PreflightError(
            f"hardware={hardware.name} needs {hardware.num_devices} CUDA GPU(s), but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}).\n"
            "On a CPU, run the offline demo instead: `python -m hwocr.run +experiment=demo`, "
            "or keep your preset and add `hardware=cpu model=tiny`."
        )
    if found < hardware.num_devices:
        raise PreflightError(
            f"hardware={hardware.name} asks for {hardware.num_devices} GPUs but only {found} are visible; "
            f"use hardware.num_devices={found} or a single-GPU profile (hardware=t4)."
        )
    if hardware.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise PreflightError(
            f"hardware.dtype=bf16 is not supported by {torch.cuda.get_device_name(0)}; use hardware.dtype=fp16."
        )

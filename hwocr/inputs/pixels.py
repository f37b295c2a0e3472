"""Send DeepSeek-OCR-2's image views to the GPU as 8-bit pixels and normalise them there.

The processor's rescale and normalize run in numpy on the CPU, in float32: in DeepSeek's crop mode
they are most of the processor's time, and the float32 views are 4x the bytes of the pixels they
come from, both in host memory and on the way to the GPU. Generation asks the processor for the
8-bit views instead and maps them through a 256-entry table per channel that the processor's own
rescale and normalize computed, so the model sees the same values bit for bit
(tests/test_pixels.py).
"""

import logging

import numpy as np
import torch

from hwocr.inputs.settings import ProcessorSetup, setup_of

log = logging.getLogger(__name__)

PIXEL_KEYS = ("pixel_values", "pixel_values_local")
RAW_PIXELS = {"do_rescale": False, "do_normalize": False}
_CHUNK = 32  # views per lookup: bounds the int64 index tensor's size


def supports_raw_pixels(processor, setup: ProcessorSetup | None = None) -> bool:
    """DeepSeek-OCR-2 processors set up by set_up_processor (`setup`: its settings, when the caller
    holds them), with one of transformers' two image backends (v1's processor normalises itself).
    The table is built here, once: if that fails, the processor keeps normalising (a warning says
    why) rather than every batch failing later."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    if setup is None:
        setup = setup_of(processor)
    if setup is None:
        return False
    if not setup.pixel_table_built:
        setup.pixel_table_built = True
        image_processor = getattr(processor, "image_processor", None)
        if isinstance(image_processor, (PilBackend, TorchvisionBackend)):
            try:
                setup.pixel_table = normalization_table(image_processor)
            except Exception as error:  # noqa: BLE001 - any failure means: keep the processor's own path
                log.warning(
                    "8-bit views off, the processor normalises on the CPU (%s: %s)",
                    type(error).__name__,
                    error,
                )
    return setup.pixel_table is not None


def normalization_table(image_processor) -> torch.Tensor:
    """(channels, 256) float32: every 8-bit value through the processor's own rescale + normalize
    (numpy in the PIL backend, torch in the torchvision one; both elementwise, so a ramp of the 256
    values gets what any image gets)."""
    from transformers.image_processing_backends import TorchvisionBackend

    ip = image_processor
    mean, std = tuple(ip.image_mean), tuple(ip.image_std)  # tuples: the torchvision path caches on them
    ramp = np.tile(np.arange(256, dtype=np.uint8), (len(mean), 1))[:, None, :]  # (C, 1, 256)
    if isinstance(ip, TorchvisionBackend):
        values = ip.rescale_and_normalize(
            torch.from_numpy(ramp)[None], True, ip.rescale_factor, True, mean, std
        )
        values = values[0].numpy()
    else:
        values = ip.normalize(ip.rescale(ramp, ip.rescale_factor), mean, std)
    return torch.from_numpy(np.ascontiguousarray(values[:, 0, :], dtype=np.float32))


def pixels_to_device(inputs, processor, device, dtype: torch.dtype):
    """Move a processor batch to `device`; its image views become `dtype`, 8-bit ones normalised
    on the way (DeepSeek-OCR v1's per-sample (tiles, global view) pairs too)."""
    inputs = inputs.to(device, non_blocking=True)  # asynchronous from page-locked memory
    if "images" in inputs:  # v1's: BatchFeature.to moves tensors only, not a list of tuples
        inputs["images"] = [(t.to(device, dtype), g.to(device, dtype)) for t, g in inputs["images"]]
    for key in PIXEL_KEYS:
        if key not in inputs:
            continue
        if inputs[key].dtype == torch.uint8:  # encode(raw_pixels=True) built the table
            inputs[key] = normalize_on_device(inputs[key], setup_of(processor).pixel_table, device, dtype)
        else:
            inputs[key] = inputs[key].to(dtype)
    return inputs


def normalize_on_device(
    pixels: torch.Tensor, table: torch.Tensor, device, dtype: torch.dtype
) -> torch.Tensor:
    """(views, channels, h, w) uint8 -> the processor's normalised values, on `device`, in `dtype`."""
    table = table.to(device=device, dtype=dtype)
    out = torch.empty(pixels.shape, dtype=dtype, device=device)
    offsets = torch.arange(table.shape[0], device=device).view(1, -1, 1, 1) * table.shape[1]
    flat = table.reshape(-1)
    for start in range(0, pixels.shape[0], _CHUNK):
        part = pixels[start : start + _CHUNK].to(device)
        out[start : start + _CHUNK] = flat[part.long() + offsets]
    return out

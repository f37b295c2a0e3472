"""Checkpoints with random weights, built offline: each family's tiny test twin and the full-size
models the benchmarks measure. Saved like hub checkpoints, so hwocr loads them as the real ones."""

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from hwocr.io import atomic_directory

log = logging.getLogger(__name__)

# Which version of its builder made a tiny checkpoint: a builder that changes bumps its number, and
# the cached checkpoints it made before are rebuilt.
BUILD_MARKER = "hwocr_tiny_build.txt"

# The language decoder of the chat-template families' tiny twins (PaddleOCR-VL, GLM-OCR): the same on
# purpose, so that their tiny runs differ by the family's code and vision side, not by the decoder's
# size. Each family adds its vocabulary, token ids and rotary settings (sections covering head_dim / 2).
TINY_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def random_model(model_class, config, dtype: torch.dtype | None = None, device: str = "cpu"):
    """`model_class(config)` with freshly drawn weights, in `dtype`, on `device`. Seed torch first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        with torch.device(device):
            return model_class(config)
    finally:
        torch.set_default_dtype(previous)


def save_checkpoint(path: Path, model, processor, build: int | None = None) -> Path:
    """`model` and `processor` saved atomically, with the builder's version when it is a tiny twin."""
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if build is not None:
            (staging / BUILD_MARKER).write_text(str(build))
    log.info(
        "built a random-weight %s (%d parameters) at %s", type(model).__name__, model.num_parameters(), path
    )
    return path


def ensure_built(path: Path, build: int, builder: Callable[[Path], Path]) -> Path:
    """The checkpoint at `path`, built with `builder` when it is missing or another build made it."""
    marker = path / BUILD_MARKER
    if not marker.is_file() or marker.read_text().strip() != str(build):
        builder(path)
    return path

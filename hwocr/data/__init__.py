"""Datasets: the UIT-HWDB loader and the synthetic handwriting generator."""

from hwocr.data.synth import generate_synth_dataset
from hwocr.data.uit_hwdb import (
    SKIP_REASONS,
    DatasetSplits,
    Sample,
    Skipped,
    load_image,
    load_splits,
)
from hwocr.data.vietnamese import generate_lines


def prepare_dataset(cfg) -> None:
    """Render the synthetic dataset into its root on first use; real datasets are read as they are."""
    from pathlib import Path

    if cfg.kind == "synth":
        generate_synth_dataset(Path(cfg.root), cfg.synth, level=cfg.level)


__all__ = [
    "SKIP_REASONS",
    "DatasetSplits",
    "Sample",
    "Skipped",
    "generate_lines",
    "generate_synth_dataset",
    "load_image",
    "load_splits",
    "prepare_dataset",
]

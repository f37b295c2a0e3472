"""Datasets: the loaders of each format (UIT-HWDB layout, manifest, Hugging Face dataset) and the
synthetic handwriting generator, all ending in the same train/val/test `DatasetSplits`."""

from pathlib import Path

from hwocr.config import DatasetConfig
from hwocr.data.hf_dataset import load_hf_dataset
from hwocr.data.manifest import load_manifest
from hwocr.data.screen import SKIP_REASONS, Skipped, image_problem
from hwocr.data.splits import DatasetSplits, Sample, load_image
from hwocr.data.synth import generate_synth_dataset
from hwocr.data.uit_hwdb import load_uit_hwdb
from hwocr.data.vietnamese import generate_lines


def prepare_dataset(cfg: DatasetConfig) -> None:
    """Render the synthetic dataset into its root on first use; real datasets are read as they are."""
    if cfg.kind == "synth":
        generate_synth_dataset(Path(cfg.root), cfg.synth, level=cfg.level)


def load_splits(cfg: DatasetConfig, seed: int = 0) -> DatasetSplits:
    """The train/val/test samples of the dataset cfg describes (cfg.kind picks the format)."""
    if cfg.kind == "manifest":
        return load_manifest(cfg, seed)
    if cfg.kind == "hf":
        return load_hf_dataset(cfg, seed)
    return load_uit_hwdb(cfg, seed)  # uit_hwdb, and synth once prepare_dataset has rendered it


__all__ = [
    "SKIP_REASONS",
    "DatasetSplits",
    "Sample",
    "Skipped",
    "generate_lines",
    "generate_synth_dataset",
    "image_problem",
    "load_image",
    "load_splits",
    "prepare_dataset",
]

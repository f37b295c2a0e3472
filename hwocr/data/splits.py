"""Samples and the train/val/test splits every dataset format ends in.

A loader reads its format into candidate samples (with the split the data gives them); `assemble`
then applies what all formats share: the writer filter, a held-out test and validation split where
the data gives none (writer-disjoint when writers are known, else seeded by sample), and the caps.
"""

import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from hwocr.config import DatasetConfig
from hwocr.data.screen import Skipped
from hwocr.errors import DatasetError
from hwocr.text import natural_key

logger = logging.getLogger("hwocr.data")


@dataclass(frozen=True)
class Sample:
    id: str  # "<split>/<writer>/<image name>", or "<split>/<image name>" where writers are unknown
    writer: str  # "" where the dataset names no writers
    split: str  # "train" | "val" | "test"
    image: Path
    text: str


@dataclass
class DatasetSplits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    root: Path = Path(".")
    # How each held-out split was chosen, e.g. {"val": "writer-disjoint: 2 of 12 writers"}.
    provenance: dict[str, str] = field(default_factory=dict)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> dict:
        out: dict = {}
        for split in ("train", "val", "test"):
            samples = getattr(self, split)
            out[f"n_{split}"] = len(samples)
            out[f"n_writers_{split}"] = len({s.writer for s in samples if s.writer})
        out["skipped_total"] = len(self.skipped)
        out.update({f"skipped/{reason}": n for reason, n in sorted(self.skip_counts().items())})
        return out

    def report(self) -> dict:
        """data_report.json: the counts, how each split was chosen, and every skipped sample."""
        return {
            "summary": self.summary(),
            "splits": self.provenance,
            "skipped": [vars(s) for s in self.skipped],
        }


def load_image(path: Path | str) -> Image.Image:
    """Decode an image file to RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


def relabel(sample: Sample, split: str) -> Sample:
    """The sample moved to `split`, its id prefixed accordingly."""
    return replace(sample, split=split, id=f"{split}/{sample.id.partition('/')[2]}")


def _held_out_writers(writers: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded `fraction` of the writers, at least one when there are two or more."""
    if fraction <= 0 or len(writers) < 2:
        return set()
    n = min(len(writers) - 1, max(1, round(fraction * len(writers))))
    shuffled = sorted(writers, key=natural_key)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[:n])


def hold_out(
    samples: list[Sample], fraction: float, seed: int, by_writer: bool, split: str
) -> tuple[list[Sample], list[Sample], str]:
    """Split `fraction` of `samples` off as `split`: whole writers when `by_writer`, else single samples.

    Returns (kept, held out relabelled to `split`, a sentence saying how)."""
    if by_writer:
        writers = sorted({s.writer for s in samples}, key=natural_key)
        chosen = _held_out_writers(writers, fraction, seed)
        kept = [s for s in samples if s.writer not in chosen]
        held = [relabel(s, split) for s in samples if s.writer in chosen]
        how = f"writer-disjoint: {len(chosen)} of {len(writers)} writers (seed {seed}, fraction {fraction})"
        return kept, held, how
    ids = sorted((s.id for s in samples), key=natural_key)
    n = min(len(ids) - 1, max(1, round(fraction * len(ids)))) if fraction > 0 and len(ids) >= 2 else 0
    chosen = set(random.Random(seed).sample(ids, n))
    kept = [s for s in samples if s.id not in chosen]
    held = [relabel(s, split) for s in samples if s.id in chosen]
    how = f"seeded by sample: {n} of {len(ids)} samples (seed {seed}, fraction {fraction}; no writers known)"
    return kept, held, how


def _cap(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of at most `limit` samples, in id order."""
    if limit is None or len(samples) <= limit:
        return samples
    return sorted(random.Random(seed).sample(samples, limit), key=lambda s: natural_key(s.id))


def _warn(skipped: list[Skipped]) -> None:
    counts = Counter(s.reason for s in skipped)
    examples = "; ".join(f"{s.reason}: {s.path}" for s in skipped[:5])
    logger.warning(
        "skipped %d sample(s) while loading the dataset (%s). First: %s",
        len(skipped),
        ", ".join(f"{r}={n}" for r, n in sorted(counts.items())),
        examples,
    )


def assemble(
    cfg: DatasetConfig,
    seed: int,
    train: list[Sample],
    test: list[Sample] | None,
    val: list[Sample] | None,
    skipped: list[Skipped],
    root: Path,
    by_writer: bool,
    source: str,
) -> DatasetSplits:
    """The final splits from a loader's candidates. `test`/`val` None: the data gives no such split, so
    a seeded share of `train` is held out (cfg.test_fraction, cfg.val_fraction), writer-disjoint when
    `by_writer`."""
    provenance = {"source": source}
    if test is None:
        if cfg.test_fraction <= 0:
            raise DatasetError(f"{source}: the data has no test split and dataset.test_fraction is 0")
        train, test, provenance["test"] = hold_out(train, cfg.test_fraction, seed, by_writer, "test")
    else:
        provenance["test"] = "given by the data"
    if not train or not test:
        empty = "train" if not train else "test"
        counts = Counter(s.reason for s in skipped)
        raise DatasetError(
            f"no usable {empty} samples in {source}; skipped {len(skipped)} "
            f"({', '.join(f'{r}={n}' for r, n in sorted(counts.items())) or 'none'}); "
            "dataset.strict=true stops at the first, naming it"
        )

    if cfg.writers is not None:
        wanted = {str(w) for w in cfg.writers}
        unknown = wanted - {s.writer for s in train}
        if unknown:
            raise DatasetError(
                f"dataset.writers names writers absent from the training data: {sorted(unknown)}"
            )
        train = [s for s in train if s.writer in wanted]
    if val is None:
        train, val, provenance["val"] = hold_out(train, cfg.val_fraction, seed, by_writer, "val")
    else:
        val, provenance["val"] = [relabel(s, "val") for s in val], "given by the data"

    if skipped:
        _warn(skipped)
    for split in ("test", "val"):
        logger.info("%s split: %s", split, provenance[split])
    return DatasetSplits(
        train=_cap(train, cfg.max_train_samples, seed),
        val=_cap(val, cfg.max_eval_samples, seed),
        test=_cap(test, cfg.max_eval_samples, seed),
        skipped=skipped,
        root=root,
        provenance=provenance,
    )

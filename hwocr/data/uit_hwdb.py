"""Load a UIT-HWDB-layout dataset into train/val/test sample lists.

Layout: root/{train_data,test_data}/<writer>/{1.jpg, 2.jpg, ..., label.json}. Every sample that
cannot be used is recorded as a `Skipped` with a reason and logged; with `strict` the first one
raises. Nothing outside `root` is opened.

Hostile inputs and their outcome (tests/test_hostile_data.py):
- label.json not UTF-8, not JSON, not an object, nested too deep, or over MAX_LABEL_BYTES (read at most
  that many bytes): `bad_label_json`; a value that is not a string: `bad_label_json`;
- a label key that is not a plain file name (`../../x.jpg`, `/etc/passwd`, NUL, over 255 bytes) or a
  symlink (image, label.json, writer folder) resolving outside the root: `unsafe_path`; a split folder
  (train_data/, test_data/) resolving outside the root: DatasetError;
- 0-byte image: `empty_image`; truncated or not an image: `corrupt_image`; over MAX_IMAGE_PIXELS
  pixels, a decompression bomb, or a side over MAX_IMAGE_SIDE px (e.g. 20000 px wide): `image_too_large`;
- labels: NFC-normalised; control, zero-width and other format characters removed (hwocr/text.py);
  empty afterwards: `empty_text`; over MAX_TEXT_CHARS characters: `text_too_long`;
- a folder or file the OS refuses to read (permissions, I/O error): `unreadable`.
"""

import json
import logging
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hwocr.config import DatasetConfig
from hwocr.errors import DatasetError
from hwocr.text import natural_key, normalize_text

logger = logging.getLogger("hwocr.data")

SPLIT_DIRS = {"train": "train_data", "test": "test_data"}
LABEL_FILE = "label.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Far above any scanned page; a header claiming more is a decompression bomb or corrupt.
MAX_IMAGE_PIXELS = 60_000_000
# A longer side is no handwriting line or page (and would explode gundam-mode crops).
MAX_IMAGE_SIDE = 16_384
# UIT-HWDB label.json files are tens of KB; a bigger one is not read (bounded read, counted skip).
MAX_LABEL_BYTES = 16 * 2**20
# A paragraph is ~1,000 characters; a longer label would set a huge generation budget.
MAX_TEXT_CHARS = 10_000
MAX_NAME_BYTES = 255

MISSING_IMAGE = "missing_image"
UNLABELLED_IMAGE = "unlabelled_image"
CORRUPT_IMAGE = "corrupt_image"
EMPTY_IMAGE = "empty_image"
IMAGE_TOO_LARGE = "image_too_large"
BAD_LABEL_JSON = "bad_label_json"
EMPTY_TEXT = "empty_text"
UNSAFE_PATH = "unsafe_path"
TEXT_TOO_LONG = "text_too_long"
UNREADABLE = "unreadable"
SKIP_REASONS = (
    MISSING_IMAGE, UNLABELLED_IMAGE, CORRUPT_IMAGE, EMPTY_IMAGE, IMAGE_TOO_LARGE, BAD_LABEL_JSON, EMPTY_TEXT, UNSAFE_PATH,
    TEXT_TOO_LONG, UNREADABLE,
)  # fmt: skip

LAYOUT_HELP = (
    "expected layout:\n"
    '  <root>/train_data/<writer>/label.json   ({"1.jpg": "text", ...})\n'
    "  <root>/train_data/<writer>/1.jpg, 2.jpg, ...\n"
    "  <root>/test_data/<writer>/...            (same)"
)


@dataclass(frozen=True)
class Sample:
    id: str  # "<split>/<writer>/<image file name>"
    writer: str
    split: str  # "train" | "val" | "test"
    image: Path
    text: str


@dataclass
class Skipped:
    path: str
    reason: str  # one of SKIP_REASONS


@dataclass
class DatasetSplits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    root: Path = Path(".")

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> dict:
        out: dict = {}
        for split in ("train", "val", "test"):
            samples = getattr(self, split)
            out[f"n_{split}"] = len(samples)
            out[f"n_writers_{split}"] = len({s.writer for s in samples})
        out["skipped_total"] = len(self.skipped)
        out.update({f"skipped/{reason}": n for reason, n in sorted(self.skip_counts().items())})
        return out


def load_image(path: Path | str) -> Image.Image:
    """Decode an image file to RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


class _Collector:
    """Records skipped files; in strict mode the first one raises."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.skipped: list[Skipped] = []

    def skip(self, path: Path | str, reason: str, detail: str = "") -> None:
        if self.strict:
            raise DatasetError(f"{path}: {reason}{': ' + detail if detail else ''} (dataset.strict=true)")
        self.skipped.append(Skipped(str(path), reason))


def _inside(path: Path, root: Path) -> bool:
    """True when `path`, with symlinks resolved, stays under `root` (already resolved)."""
    return path.resolve().is_relative_to(root)


def image_problem(path: Path) -> str | None:
    """A skip reason, or None for a usable image. Decodes JPEGs at 1/8 scale: cheap but complete."""
    try:
        if path.stat().st_size == 0:
            return EMPTY_IMAGE
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w == 0 or h == 0:
                    return EMPTY_IMAGE
                if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
                    return IMAGE_TOO_LARGE
                if img.format == "JPEG":
                    img.draft("L", (max(1, w // 8), max(1, h // 8)))  # still reads the whole bitstream
                    img.load()
                else:
                    img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return IMAGE_TOO_LARGE
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError):
        return CORRUPT_IMAGE
    return None


def _plain_name(name: str) -> bool:
    """A file name with no directory part, NUL, or excess length: it cannot leave its folder."""
    if not name or name in (".", "..") or "\x00" in name or Path(name).name != name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES  # undecodable bytes / lone surrogates fail
    except UnicodeEncodeError:
        return False


def _read_labels(label_path: Path, out: _Collector) -> dict[str, object] | None:
    try:
        with open(label_path, "rb") as file:  # bounded: a huge file is never read whole
            data = file.read(MAX_LABEL_BYTES + 1)
    except OSError as err:
        out.skip(label_path, UNREADABLE, str(err))
        return None
    if len(data) > MAX_LABEL_BYTES:
        out.skip(label_path, BAD_LABEL_JSON, f"larger than {MAX_LABEL_BYTES} bytes; not read")
        return None
    try:
        labels = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, nested too deep, huge numbers
        out.skip(label_path, BAD_LABEL_JSON, f"{type(err).__name__}: {err}"[:300])
        return None
    if not isinstance(labels, dict):
        out.skip(label_path, BAD_LABEL_JSON, f"top level is {type(labels).__name__}, not an object")
        return None
    return labels


def _load_writer(folder: Path, split: str, root: Path, out: _Collector) -> list[Sample]:
    writer = folder.name
    label_path = folder / LABEL_FILE
    labels: dict[str, object] = {}
    if label_path.is_file():
        if not _inside(label_path, root):
            out.skip(label_path, UNSAFE_PATH, "symlink leaves the dataset root")
        else:
            labels = _read_labels(label_path, out) or {}
    samples = []
    for name, raw_text in sorted(labels.items(), key=lambda kv: natural_key(kv[0])):
        if not _plain_name(name):
            out.skip(
                f"{folder}/{name!r}"[:500], UNSAFE_PATH, f"label key {name[:200]!r} is not a plain file name"
            )
            continue
        image = folder / name
        if image.is_symlink() and not _inside(image, root):
            out.skip(image, UNSAFE_PATH, "symlink leaves the dataset root")
            continue
        if not isinstance(raw_text, str):
            out.skip(
                f"{label_path}[{name!r}]", BAD_LABEL_JSON, f"value is {type(raw_text).__name__}, not a string"
            )
            continue
        if not image.is_file():
            out.skip(image, MISSING_IMAGE, f"listed in {label_path} but absent")
            continue
        text = normalize_text(raw_text)
        if not text:
            out.skip(image, EMPTY_TEXT, "transcription is empty")
            continue
        if len(text) > MAX_TEXT_CHARS:
            out.skip(image, TEXT_TOO_LONG, f"{len(text)} characters, more than {MAX_TEXT_CHARS}")
            continue
        reason = image_problem(image)
        if reason:
            out.skip(image, reason)
            continue
        samples.append(Sample(f"{split}/{writer}/{name}", writer, split, image, text))
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in labels:
            out.skip(path, UNLABELLED_IMAGE, f"no entry in {label_path}")
    return samples


def _load_split(split_dir: Path, split: str, root: Path, out: _Collector) -> list[Sample]:
    if not _inside(split_dir, root):
        raise DatasetError(f"{split_dir} is a symlink that leaves the dataset root {root}; not reading it")
    samples = []
    for folder in sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if not folder.is_dir():
            continue
        if not _inside(folder, root):
            out.skip(folder, UNSAFE_PATH, "symlink leaves the dataset root")
            continue
        if not _plain_name(folder.name):
            out.skip(repr(str(folder)), UNSAFE_PATH, "writer folder name is not valid UTF-8")
            continue
        try:
            samples += _load_writer(folder, split, root, out)
        except OSError as err:  # permissions, I/O errors: the folder is skipped, not the dataset
            out.skip(folder, UNREADABLE, str(err))
    return samples


def _val_writers(writers: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded `fraction` of the writers, at least one when there are two or more."""
    if fraction <= 0 or len(writers) < 2:
        return set()
    n = min(len(writers) - 1, max(1, round(fraction * len(writers))))
    shuffled = sorted(writers, key=natural_key)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[:n])


def _cap(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of at most `limit` samples, in id order."""
    if limit is None or len(samples) <= limit:
        return samples
    return sorted(random.Random(seed).sample(samples, limit), key=lambda s: natural_key(s.id))


def _as_val(sample: Sample) -> Sample:
    return Sample(f"val/{sample.writer}/{sample.image.name}", sample.writer, "val", sample.image, sample.text)


def _warn(skipped: list[Skipped]) -> None:
    counts = Counter(s.reason for s in skipped)
    examples = "; ".join(f"{s.reason}: {s.path}" for s in skipped[:5])
    logger.warning(
        "skipped %d file(s) while loading the dataset (%s). First: %s",
        len(skipped),
        ", ".join(f"{r}={n}" for r, n in sorted(counts.items())),
        examples,
    )


def load_splits(cfg: DatasetConfig, seed: int = 0) -> DatasetSplits:
    """Read cfg.root; split a writer-disjoint validation set off train_data; cap sizes by seed."""
    if cfg.root is None:
        raise DatasetError(f"dataset.root is not set; {LAYOUT_HELP}")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory; {LAYOUT_HELP}")
    missing = [d for d in SPLIT_DIRS.values() if not (root / d).is_dir()]
    if missing:
        raise DatasetError(f"dataset root {root} lacks {' and '.join(missing)}/; {LAYOUT_HELP}")

    out = _Collector(cfg.strict)
    train_all = _load_split(root / SPLIT_DIRS["train"], "train", root, out)
    test = _load_split(root / SPLIT_DIRS["test"], "test", root, out)
    if not train_all or not test:
        empty = SPLIT_DIRS["train"] if not train_all else SPLIT_DIRS["test"]
        raise DatasetError(f"no usable samples under {root / empty}; {LAYOUT_HELP}")

    if cfg.writers is not None:
        wanted = {str(w) for w in cfg.writers}
        unknown = wanted - {s.writer for s in train_all}
        if unknown:
            raise DatasetError(
                f"dataset.writers names writers absent from {root / 'train_data'}: {sorted(unknown)}"
            )
        train_all = [s for s in train_all if s.writer in wanted]
    val_writers = _val_writers(sorted({s.writer for s in train_all}), cfg.val_fraction, seed)
    train = [s for s in train_all if s.writer not in val_writers]
    val = [_as_val(s) for s in train_all if s.writer in val_writers]

    if out.skipped:
        _warn(out.skipped)
    return DatasetSplits(
        train=_cap(train, cfg.max_train_samples, seed),
        val=_cap(val, cfg.max_eval_samples, seed),
        test=_cap(test, cfg.max_eval_samples, seed),
        skipped=out.skipped,
        root=root,
    )

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
from pathlib import Path

from hwocr.config import DatasetConfig
from hwocr.data.screen import (
    BAD_LABEL_JSON,
    IMAGE_SUFFIXES,
    MISSING_IMAGE,
    UNLABELLED_IMAGE,
    UNREADABLE,
    UNSAFE_PATH,
    SkipLog,
    image_problem,
    inside,
    plain_name,
    screen_text,
)
from hwocr.data.splits import DatasetSplits, Sample, assemble
from hwocr.errors import DatasetError
from hwocr.text import natural_key

SPLIT_DIRS = {"train": "train_data", "test": "test_data"}
LABEL_FILE = "label.json"
# UIT-HWDB label.json files are tens of KB; a bigger one is not read (bounded read, counted skip).
MAX_LABEL_BYTES = 16 * 2**20

LAYOUT_HELP = (
    "expected layout:\n"
    '  <root>/train_data/<writer>/label.json   ({"1.jpg": "text", ...})\n'
    "  <root>/train_data/<writer>/1.jpg, 2.jpg, ...\n"
    "  <root>/test_data/<writer>/...            (same)"
)


def _read_labels(label_path: Path, out: SkipLog) -> dict[str, object] | None:
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


def _load_writer(folder: Path, split: str, root: Path, out: SkipLog) -> list[Sample]:
    writer = folder.name
    label_path = folder / LABEL_FILE
    labels: dict[str, object] = {}
    if label_path.is_file():
        if not inside(label_path, root):
            out.skip(label_path, UNSAFE_PATH, "symlink leaves the dataset root")
        else:
            labels = _read_labels(label_path, out) or {}
    samples = []
    for name, raw_text in sorted(labels.items(), key=lambda kv: natural_key(kv[0])):
        if not plain_name(name):
            out.skip(
                f"{folder}/{name!r}"[:500], UNSAFE_PATH, f"label key {name[:200]!r} is not a plain file name"
            )
            continue
        image = folder / name
        if image.is_symlink() and not inside(image, root):
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
        text, reason, detail = screen_text(raw_text)
        if reason:
            out.skip(image, reason, detail)
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


def _load_split(split_dir: Path, split: str, root: Path, out: SkipLog) -> list[Sample]:
    if not inside(split_dir, root):
        raise DatasetError(f"{split_dir} is a symlink that leaves the dataset root {root}; not reading it")
    samples = []
    for folder in sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if not folder.is_dir():
            continue
        if not inside(folder, root):
            out.skip(folder, UNSAFE_PATH, "symlink leaves the dataset root")
            continue
        if not plain_name(folder.name):
            out.skip(repr(str(folder)), UNSAFE_PATH, "writer folder name is not valid UTF-8")
            continue
        try:
            samples += _load_writer(folder, split, root, out)
        except OSError as err:  # permissions, I/O errors: the folder is skipped, not the dataset
            out.skip(folder, UNREADABLE, str(err))
    return samples


def load_uit_hwdb(cfg: DatasetConfig, seed: int = 0) -> DatasetSplits:
    """Read cfg.root; split a writer-disjoint validation set off train_data; cap sizes by seed."""
    if cfg.root is None:
        raise DatasetError(f"dataset.root is not set; {LAYOUT_HELP}")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory; {LAYOUT_HELP}")
    missing = [d for d in SPLIT_DIRS.values() if not (root / d).is_dir()]
    if missing:
        raise DatasetError(f"dataset root {root} lacks {' and '.join(missing)}/; {LAYOUT_HELP}")

    out = SkipLog(cfg.strict)
    train = _load_split(root / SPLIT_DIRS["train"], "train", root, out)
    test = _load_split(root / SPLIT_DIRS["test"], "test", root, out)
    if not train or not test:
        empty = SPLIT_DIRS["train"] if not train else SPLIT_DIRS["test"]
        raise DatasetError(f"no usable samples under {root / empty}; {LAYOUT_HELP}")
    source = f"UIT-HWDB layout at {root}"
    return assemble(cfg, seed, train, test, None, out.skipped, root, by_writer=True, source=source)

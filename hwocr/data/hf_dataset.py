"""Load a Hugging Face `datasets` dataset: its image, text and (optional) writer columns, by split.

dataset.root is, in this order:
- a folder written by `save_to_disk` (it holds dataset_dict.json or state.json): `datasets.load_from_disk`;
- any other folder (parquet or arrow files, an imagefolder with metadata.jsonl/metadata.csv) or a
  .parquet/.arrow file: `datasets.load_dataset`, which infers the format;
- anything else is a hub id: `datasets.load_dataset(root, revision=dataset.revision)`, the same call
  (it needs the network, or the hub cache and HF_HUB_OFFLINE=1).

The splits named by dataset.train_split/test_split/val_split feed train/test/val; others are left out
(logged and listed in data_report.json). A missing test or validation split is held out of train.

Images are read undecoded. Images stored in the dataset (bytes) are written once, named by their
SHA-256, under dataset.image_cache, so samples carry a file path like every other format; images
stored as paths are used where they are, which must be inside the dataset's folder (or, for a hub id,
the Hugging Face caches). Every image then passes the same screening as a UIT-HWDB image, and every
bad row is a counted skip named `<split>[<row>]`:
- no image: `missing_image`; a path outside the allowed folders: `unsafe_path`; empty, corrupt, too
  large or a decompression bomb: as `image_problem` says;
- a label that is not a string: `not_text`; empty after normalisation: `empty_text`; too long:
  `text_too_long`.
A missing image or text column, or an image column of another type, is a ConfigError naming it.
"""

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from hwocr.config import DatasetConfig
from hwocr.data.screen import (
    IMAGE_SUFFIXES,
    MISSING_IMAGE,
    UNSAFE_PATH,
    SkipLog,
    image_problem,
    relative_image,
    screen_text,
)
from hwocr.data.splits import DatasetSplits, Sample, assemble
from hwocr.errors import ConfigError, DatasetError

logger = logging.getLogger("hwocr.data")

SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict, Dataset)
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _load(cfg: DatasetConfig):
    """(the DatasetDict, folders its path-only images may come from, a description of the source)."""
    import datasets  # lazy: a second of import time that other dataset kinds do not need

    root = Path(cfg.root).expanduser()
    try:
        if root.is_dir() and any((root / marker).is_file() for marker in SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(root))
            origin = f"save_to_disk folder {root.resolve()}"
        elif root.is_dir():
            loaded = datasets.load_dataset(str(root.resolve()))
            origin = f"dataset folder {root.resolve()}"
        elif root.is_file():
            builder = DATA_FILE_BUILDERS.get(root.suffix.lower())
            if builder is None:
                raise DatasetError(
                    f"dataset.root={cfg.root} is a {root.suffix or 'suffixless'} file; dataset.kind=hf "
                    f"reads {', '.join(DATA_FILE_BUILDERS)} files, folders and hub ids (a CSV or JSONL "
                    "listing image paths is dataset.kind=manifest)"
                )
            loaded = datasets.load_dataset(builder, data_files=str(root.resolve()))
            origin = f"{builder} file {root.resolve()}"
        elif HUB_ID.fullmatch(cfg.root):
            loaded = datasets.load_dataset(cfg.root, revision=cfg.revision)
            origin = f"hub dataset {cfg.root}" + (f"@{cfg.revision}" if cfg.revision else "")
        else:
            raise DatasetError(
                f"dataset.root={cfg.root} does not exist, and is not a hub id (name or org/name)"
            )
    except DatasetError:
        raise
    except Exception as err:  # the library's errors on user data are many; each becomes one clear error
        cause = err.__cause__ or err.__context__
        detail = f"{type(err).__name__}: {err}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise DatasetError(
            f"dataset.root={cfg.root}: datasets could not load it: {detail[:1000]}. A local path must exist; "
            "anything else is read as a hub id (online, or cached with HF_HUB_OFFLINE=1)"
        ) from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({cfg.train_split: loaded})
    if root.exists():
        allowed = [(root if root.is_dir() else root.parent).resolve()]
    else:
        allowed = [Path(datasets.config.HF_DATASETS_CACHE).resolve(), Path(_hub_cache()).resolve()]
    return loaded, allowed, origin


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _image_kind(dataset, column: str, split: str, origin: str) -> str:
    """How the column holds images: "image" (an Image feature), "struct" ({bytes, path} records),
    "path" (strings) or "bytes" (binary)."""
    import datasets

    if column not in dataset.features:
        raise ConfigError(
            f"{origin}, split {split!r}, has no column {column!r}; its columns: "
            f"{', '.join(dataset.column_names)}"
        )
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, dict) and "bytes" in feature:  # {bytes, path} written without the Image type
        return "struct"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "path"
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return "bytes"
    raise ConfigError(
        f"dataset.image_column={column!r} of {origin}, split {split!r}, is {feature}: neither images, "
        "image paths nor image bytes"
    )


def _materialise(data: bytes, cache: Path, suffix: str) -> Path:
    """The bytes as a file under `cache` named by their content: written once, shared by every run."""
    digest = hashlib.sha256(data).hexdigest()
    path = cache / digest[:2] / f"{digest}{suffix}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # same content from every writer: a concurrent rank's copy is as good
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _image_file(value: object, allowed: list[Path], cache: Path) -> tuple[Path | None, str, str]:
    """(the image file, "", "") for a row's image value, or (None, reason, detail)."""
    path_value = None
    if isinstance(value, dict):  # an Image feature read undecoded: {"bytes": ..., "path": ...}
        path_value, value = value.get("path"), value.get("bytes")
        if value is None:
            value = path_value
    if isinstance(value, bytes):
        suffix = Path(path_value).suffix.lower() if isinstance(path_value, str) else ""
        return _materialise(value, cache, suffix if suffix in IMAGE_SUFFIXES else ""), "", ""
    if value is None:
        return None, MISSING_IMAGE, "the row has no image"
    for folder in allowed:
        image, reason, detail = relative_image(folder, value)
        if reason != UNSAFE_PATH:
            return image, reason, detail
    return None, UNSAFE_PATH, f"{str(value)[:200]!r} is outside {', '.join(map(str, allowed))}"


def _read_split(dataset, name: str, split: str, cfg: DatasetConfig, allowed, origin, out) -> list[Sample]:
    import datasets

    kind = _image_kind(dataset, cfg.image_column, name, origin)
    if cfg.text_column not in dataset.features:
        raise ConfigError(
            f"{origin}, split {name!r}, has no column {cfg.text_column!r} (dataset.text_column); its "
            f"columns: {', '.join(dataset.column_names)}"
        )
    columns = [cfg.image_column, cfg.text_column]
    has_writer = cfg.writer_column in dataset.features
    if has_writer:
        columns.append(cfg.writer_column)
    # only the columns used, the images undecoded: a bomb is screened as a file, never opened here
    dataset = dataset.select_columns(columns)
    if kind == "image":
        dataset = dataset.cast_column(cfg.image_column, datasets.Image(decode=False))
    cache = Path(cfg.image_cache).expanduser().resolve()
    samples = []
    for index, row in enumerate(dataset):
        where = f"{origin}: {name}[{index}]"
        text, reason, detail = screen_text(row[cfg.text_column])
        if reason:
            out.skip(where, reason, detail)
            continue
        image, reason, detail = _image_file(row[cfg.image_column], allowed, cache)
        if reason:
            out.skip(where, reason, detail)
            continue
        reason = image_problem(image)
        if reason:
            out.skip(where, reason, str(image))
            continue
        writer = (
            "" if not has_writer or row[cfg.writer_column] is None else str(row[cfg.writer_column]).strip()
        )
        sample_id = f"{split}/{writer}/{name}/{index}" if writer else f"{split}/{name}/{index}"
        samples.append(Sample(sample_id, writer, split, image, text))
    return samples


def load_hf_dataset(cfg: DatasetConfig, seed: int = 0) -> DatasetSplits:
    """Read the dataset at cfg.root into train/val/test samples (`assemble` holds out what it lacks)."""
    if not cfg.root:
        raise DatasetError(
            "dataset.root is not set: a save_to_disk folder, parquet files, an imagefolder or a hub id"
        )
    loaded, allowed, origin = _load(cfg)
    wanted = {cfg.train_split: "train", cfg.test_split: "test", cfg.val_split: "val"}
    if cfg.train_split not in loaded:
        raise DatasetError(
            f"{origin} has no split {cfg.train_split!r} (dataset.train_split); its splits: {', '.join(loaded)}"
        )
    ignored = {name: loaded[name].num_rows for name in loaded if name not in wanted}
    if ignored:
        logger.warning("%s: splits left out (not dataset.*_split): %s", origin, ignored)
    out = SkipLog(cfg.strict)
    read = {
        split: _read_split(loaded[name], name, split, cfg, allowed, origin, out)
        for name, split in wanted.items()
        if name in loaded
    }
    by_writer = cfg.writer_column in loaded[cfg.train_split].features
    splits = assemble(
        cfg, seed, read["train"], read.get("test"), read.get("val"), out.skipped, allowed[0],
        by_writer=by_writer, source=origin,
    )  # fmt: skip
    if ignored:
        splits.provenance["ignored_splits"] = ", ".join(f"{name} ({n} rows)" for name, n in ignored.items())
    return splits

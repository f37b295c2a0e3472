"""Load a manifest: a CSV (or TSV) or JSONL file listing one image and its transcription per row.

Columns (names configurable, DatasetConfig): image (a path relative to the manifest's folder), text,
and optionally writer and split. Image paths never leave the manifest's folder, symlinks resolved.

Every row that cannot be used is a counted skip named `<manifest>:<line>`, or with dataset.strict=true
an error naming it:
- a line that is not a row: not UTF-8, not JSON, not a JSON object, a CSV line with extra fields, a
  field over the CSV field size limit: `bad_row`;
- a label that is not a string (JSON number, list, null): `not_text`; empty after normalisation:
  `empty_text`; too long: `text_too_long`;
- an image path that is empty or absent on disk: `missing_image`; one that leaves the folder:
  `unsafe_path`; the image itself: `image_problem` (empty, corrupt, too large, bomb);
- a split value that is none of the configured split names: `unknown_split`;
- a second row naming the same image: `duplicate_row`.
A missing image or text column is a ConfigError naming the column and the file.
"""

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from hwocr.config import DatasetConfig
from hwocr.data.screen import (
    BAD_ROW,
    DUPLICATE_ROW,
    UNKNOWN_SPLIT,
    SkipLog,
    image_problem,
    relative_image,
    screen_text,
)
from hwocr.data.splits import DatasetSplits, Sample, assemble
from hwocr.errors import ConfigError, DatasetError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
HELP = (
    "a manifest is a .csv, .tsv or .jsonl file with a row per image, e.g.\n"
    "  image,text,writer,split\n"
    "  scans/0001.jpg,Tôi yêu tiếng Việt,w01,train"
)

Row = dict[str, object]


def _csv_rows(path: Path, delimiter: str, out: SkipLog) -> tuple[list[str], Iterator[tuple[int, Row]]]:
    """The header and the rows (line number, fields) of a CSV/TSV file; a malformed row is skipped."""
    # surrogateescape: a byte that is not UTF-8 spoils its row only (checked per row below)
    file = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    reader = csv.DictReader(file, delimiter=delimiter)
    try:
        header = list(reader.fieldnames or [])
    except csv.Error as err:
        file.close()
        raise DatasetError(f"{path}: the header line is not CSV ({err}); {HELP}") from err

    def rows() -> Iterator[tuple[int, Row]]:
        with file:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:  # e.g. a field over csv.field_size_limit()
                    out.skip(f"{path}:{reader.line_num}", BAD_ROW, str(err))
                    continue
                line = reader.line_num
                if None in row:
                    out.skip(f"{path}:{line}", BAD_ROW, f"more fields than the header's {len(header)}")
                elif any(_undecodable(value) for value in row.values()):
                    out.skip(f"{path}:{line}", BAD_ROW, "not valid UTF-8")
                else:
                    yield line, row

    return header, rows()


def _undecodable(value: object) -> bool:
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _jsonl_rows(path: Path, out: SkipLog) -> Iterator[tuple[int, Row]]:
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, nested too deep
                out.skip(f"{path}:{line_number}", BAD_ROW, f"{type(err).__name__}: {err}"[:300])
                continue
            if not isinstance(row, dict):
                out.skip(f"{path}:{line_number}", BAD_ROW, f"a JSON {type(row).__name__}, not an object")
                continue
            yield line_number, row


def _read(path: Path, cfg: DatasetConfig, out: SkipLog) -> tuple[set[str], Iterator[tuple[int, Row]]]:
    """The column names and the rows, the columns checked against the config."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        header, rows = _csv_rows(path, CSV_SUFFIXES[suffix], out)
        columns = set(header)
    elif suffix in JSONL_SUFFIXES:
        rows_list = list(_jsonl_rows(path, out))
        columns = set().union(*(row.keys() for _, row in rows_list))
        rows = iter(rows_list)
    else:
        raise DatasetError(f"dataset.root={path} is not a .csv, .tsv or .jsonl file; {HELP}")
    for key in ("image_column", "text_column"):
        name = getattr(cfg, key)
        if name not in columns:
            raise ConfigError(
                f"{path} has no column {name!r} (dataset.{key}); its columns: {', '.join(sorted(columns))}"
            )
    return columns, rows


def load_manifest(cfg: DatasetConfig, seed: int = 0) -> DatasetSplits:
    """Read the manifest at cfg.root into train/val/test samples (`assemble` holds out what it lacks)."""
    if cfg.root is None:
        raise DatasetError(f"dataset.root is not set; {HELP}")
    path = Path(cfg.root).expanduser().resolve()
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist or is not a file; {HELP}")
    root = path.parent
    out = SkipLog(cfg.strict)
    columns, rows = _read(path, cfg, out)
    has_writer = cfg.writer_column in columns
    has_split = cfg.split_column in columns
    split_names = {cfg.train_split: "train", cfg.test_split: "test", cfg.val_split: "val"}

    candidates: dict[str, list[Sample]] = {"train": [], "test": [], "val": []}
    seen: dict[Path, int] = {}
    named: set[str] = set()  # splits some row names, usable or not: only the others are held out
    for line, row in rows:
        where = f"{path}:{line}"
        if cfg.image_column not in row or cfg.text_column not in row:
            out.skip(where, BAD_ROW, f"no {cfg.image_column!r} or {cfg.text_column!r} field")
            continue
        split = split_names.get(str(row.get(cfg.split_column, "")).strip()) if has_split else "train"
        if split is None:
            names = ", ".join(split_names)
            out.skip(where, UNKNOWN_SPLIT, f"split {row.get(cfg.split_column)!r} is not one of {names}")
            continue
        named.add(split)
        text, reason, detail = screen_text(row[cfg.text_column])
        if reason:
            out.skip(where, reason, detail)
            continue
        image, reason, detail = relative_image(root, row[cfg.image_column])
        if reason:
            out.skip(where, reason, detail)
            continue
        if image in seen:
            out.skip(where, DUPLICATE_ROW, f"{image} is already listed at line {seen[image]}")
            continue
        seen[image] = line
        reason = image_problem(image)
        if reason:
            out.skip(where, reason, str(image))
            continue
        writer = _writer(row.get(cfg.writer_column)) if has_writer else ""
        name = image.relative_to(root).as_posix()
        sample_id = f"{split}/{writer}/{name}" if writer else f"{split}/{name}"
        candidates[split].append(Sample(sample_id, writer, split, image, text))

    test = candidates["test"] if "test" in named else None
    val = candidates["val"] if "val" in named else None
    kind = "CSV" if path.suffix.lower() in CSV_SUFFIXES else "JSONL"
    return assemble(
        cfg, seed, candidates["train"], test, val, out.skipped, root, by_writer=has_writer,
        source=f"{kind} manifest {path}",
    )  # fmt: skip


def _writer(value: object) -> str:
    """A writer id as text: JSON numbers become their digits; null and empty mean unknown."""
    return "" if value is None else str(value).strip()

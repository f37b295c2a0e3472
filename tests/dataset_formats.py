"""Small real datasets in every format hwocr reads besides UIT-HWDB, written with each format's own tools
(csv, json, the `datasets` library): the same lines in each, plus the same hostile rows where the format
can hold them, so the loaders can be checked against each other and against the expected skips."""

import csv
import io
import json
import struct
import unicodedata
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

TEXTS = ["Tôi yêu tiếng Việt", "học sinh đi học", "mưa rơi ướt át", "Đường về quê hương", "xin chào"]
FORMATS = ("csv", "jsonl", "save_to_disk", "parquet", "imagefolder")


def png(text: str) -> bytes:
    image = Image.new("RGB", (160, 32), "white")
    ImageDraw.Draw(image).text((4, 8), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A tiny PNG whose header claims 100,000 x 100,000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def good_rows(n_writers: int = 4, per_writer: int = 3, test_writers: int = 1) -> list[dict]:
    """Rows {file, text, writer, split, data}: the last `test_writers` writers are the test split. The
    first text is decomposed (NFD), as some editors save Vietnamese; loaders must give it back NFC."""
    rows = []
    for w in range(n_writers):
        for i in range(per_writer):
            text = TEXTS[(w + i) % len(TEXTS)] + f" {w}{i}"
            split = "test" if w >= n_writers - test_writers else "train"
            rows.append({"file": f"w{w}_{i}.png", "text": text, "writer": f"w{w}", "split": split})
    rows[0]["text"] = unicodedata.normalize("NFD", rows[0]["text"])
    for row in rows:
        row["data"] = png(row["text"])
    return rows


# Hostile rows: (name, image bytes or a marker, text, the skip reason). Markers: None = no image at all
# (a missing file in a manifest), "escape" = a path leaving the dataset's folder.
HOSTILE = [
    ("missing", None, "không có ảnh", "missing_image"),
    ("corrupt", b"not an image at all", "hỏng", "corrupt_image"),
    ("empty", b"", "rỗng", "empty_image"),
    ("bomb", bomb(), "bom", "image_too_large"),
    ("escape", "escape", "thoát", "unsafe_path"),
    ("blank_text", png("x"), " \t\u200b ", "empty_text"),
    ("null_text", png("y"), None, "not_text"),
]
# What each format can hold: CSV fields are all strings (no null text); save_to_disk embeds every image
# (no path leaving the folder); an imagefolder's metadata may not leave its folder (datasets refuses).
CANNOT_HOLD = {
    "csv": {"null_text"},
    "jsonl": set(),
    "save_to_disk": {"escape"},
    "parquet": set(),
    "imagefolder": {"escape"},
}


def hostile_rows(fmt: str) -> list[dict]:
    return [
        {
            "file": f"{name}.png",
            "text": text,
            "writer": "w0",
            "split": "train",
            "data": data,
            "reason": reason,
        }
        for name, data, text, reason in HOSTILE
        if name not in CANNOT_HOLD[fmt]
    ]


def expected_skips(fmt: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in hostile_rows(fmt):
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    return counts


def _write_files(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if isinstance(row["data"], bytes):
            (folder / row["file"]).write_bytes(row["data"])


def _image_path(row: dict, prefix: str) -> str:
    return "../outside.png" if row["data"] == "escape" else f"{prefix}{row['file']}"


def write_manifest(
    root: Path, rows: list[dict], fmt: str, columns=("image", "text", "writer", "split")
) -> Path:
    """root/manifest.<fmt> with the images under root/scans/; `columns` picks (and orders) the columns."""
    _write_files(root / "scans", rows)
    (root.parent / "outside.png").write_bytes(png("bí mật"))
    records = [
        {"image": _image_path(r, "scans/"), "text": r["text"], "writer": r["writer"], "split": r["split"]}
        for r in rows
    ]
    records = [{key: record[key] for key in columns} for record in records]
    path = root / f"manifest.{fmt}"
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(records)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def _hf_image(row: dict, outside: Path) -> dict | None:
    if row["data"] is None:
        return None
    if row["data"] == "escape":  # a path-only image outside the dataset's folder
        return {"path": str(outside), "bytes": None}
    return {"path": row["file"], "bytes": row["data"]}


def dataset_dict(rows: list[dict], outside: Path, writers: bool = True):
    """A DatasetDict of train/test splits with an Image column holding the images' bytes."""
    import datasets

    features = {"image": datasets.Image(), "text": datasets.Value("string")}
    if writers:
        features["writer"] = datasets.Value("string")
    splits = {}
    for split in sorted({r["split"] for r in rows}):
        chosen = [r for r in rows if r["split"] == split]
        columns = {"image": [_hf_image(r, outside) for r in chosen], "text": [r["text"] for r in chosen]}
        if writers:
            columns["writer"] = [r["writer"] for r in chosen]
        splits[split] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    return datasets.DatasetDict(splits)


def write_hf(root: Path, rows: list[dict], fmt: str, writers: bool = True) -> Path:
    """The rows as a save_to_disk folder, a folder of parquet files (one per split, images embedded, as
    the hub stores them) or an imagefolder (images + metadata.jsonl per split folder); returns the root."""
    root.parent.mkdir(parents=True, exist_ok=True)
    outside = root.parent / "outside.png"
    outside.write_bytes(png("bí mật"))
    if fmt == "save_to_disk":
        dataset_dict(rows, outside, writers).save_to_disk(str(root))
    elif fmt == "parquet":
        (root / "data").mkdir(parents=True)
        for split, dataset in dataset_dict(rows, outside, writers).items():
            dataset.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    elif fmt == "imagefolder":
        for split in sorted({r["split"] for r in rows}):
            chosen = [r for r in rows if r["split"] == split]
            _write_files(root / split, chosen)
            metadata = [
                {"file_name": r["file"], "text": r["text"]} | ({"writer": r["writer"]} if writers else {})
                for r in chosen
            ]
            (root / split / "metadata.jsonl").write_text(
                "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metadata), "utf-8"
            )
    else:
        raise ValueError(fmt)
    return root


def write_dataset(root: Path, rows: list[dict], fmt: str) -> Path:
    """dataset.root for `fmt`: the manifest file, or the Hugging Face dataset's folder."""
    if fmt in ("csv", "jsonl"):
        return write_manifest(root, rows, fmt)
    return write_hf(root, rows, fmt)


def kind(fmt: str) -> str:
    return "manifest" if fmt in ("csv", "jsonl") else "hf"

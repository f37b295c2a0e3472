"""Hostile datasets: every bad input gets its documented outcome (hwocr/data/uit_hwdb.py docstring),
nothing crashes with a traceback, and nothing outside dataset.root is opened."""

import builtins
import json
import os
import random
import struct
import unicodedata
import zlib
from pathlib import Path

import pytest
from PIL import Image

from hwocr.config import DatasetConfig
from hwocr.data import SKIP_REASONS, load_splits, screen, uit_hwdb
from hwocr.errors import DatasetError
from hwocr.text import normalize_text


def jpeg(path: Path, size=(60, 20)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 200).save(path, "JPEG")
    return path.read_bytes()


def png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def writer(root: Path, split: str, name: str, labels, images=()) -> Path:
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        jpeg(folder / image)
    if isinstance(labels, bytes):
        (folder / "label.json").write_bytes(labels)
    else:
        (folder / "label.json").write_text(json.dumps(labels, ensure_ascii=False), "utf-8")
    return folder


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset with one good writer per split and one writer folder per hostile case."""
    root, outside = tmp_path / "ds", tmp_path / "outside"
    outside.mkdir()
    jpeg(outside / "secret.jpg")
    (outside / "label.json").write_text('{"secret.jpg": "bí mật"}', "utf-8")
    writer(root, "train_data", "good", {"1.jpg": "chữ viết tay"}, ["1.jpg"])
    writer(root, "test_data", "good", {"1.jpg": "kiểm tra"}, ["1.jpg"])
    t = "train_data"
    writer(root, t, "latin1", '{"1.jpg": "café"}'.encode("latin-1"), ["1.jpg"])
    writer(root, t, "cp1258", b'{"1.jpg": "ch\xf2"}', ["1.jpg"])  # not UTF-8
    huge = writer(root, t, "huge", {}, ["1.jpg"])
    with open(huge / "label.json", "wb") as file:  # sparse: 20 MB of NULs, no disk used
        file.truncate(20 * 2**20)
    writer(root, t, "deep", ("[" * 100_000 + "]" * 100_000).encode(), ["1.jpg"])
    writer(root, t, "bigint", b'{"1.jpg": ' + b"9" * 5000 + b"}", ["1.jpg"])
    writer(
        root,
        t,
        "escape",
        {
            "../../outside/secret.jpg": "thoát",
            "/etc/passwd": "tuyệt đối",
            "a\x00.jpg": "nul",
            "x" * 300 + ".jpg": "dài",
        },
    )
    links = writer(root, t, "links", {"in.jpg": "trong", "out.jpg": "ngoài"}, ["real.jpg"])
    os.symlink(links / "real.jpg", links / "in.jpg")  # inside the root: fine
    os.symlink(outside / "secret.jpg", links / "out.jpg")
    linked_label = root / t / "linked_label"
    linked_label.mkdir()
    jpeg(linked_label / "secret.jpg")
    os.symlink(outside / "label.json", linked_label / "label.json")
    os.symlink(outside, root / t / "linked_writer")
    images = writer(
        root,
        t,
        "images",
        {
            "zero.jpg": "rỗng",
            "cut.jpg": "cụt",
            "wide.jpg": "rộng",
            "bomb.png": "bom",
            "big.png": "lớn",
            "text.jpg": "chữ",
        },
    )
    (images / "zero.jpg").write_bytes(b"")
    full = jpeg(images / "cut.jpg", (400, 60))
    (images / "cut.jpg").write_bytes(full[: len(full) // 2])
    jpeg(images / "wide.jpg", (20_000, 8))
    png_header_only(images / "bomb.png", 100_000, 100_000)  # over PIL's own bomb limit
    png_header_only(images / "big.png", 9_000, 8_000)  # 72 Mpx: over MAX_IMAGE_PIXELS only
    (images / "text.jpg").write_text("<html>not an image</html>")
    texts = writer(
        root,
        t,
        "texts",
        {
            "ctrl.jpg": "chữ\x07 viết\u200b tay\ufeff",
            "invisible.jpg": "\u200b\u200c\u200d\x00",
            "nfd.jpg": unicodedata.normalize("NFD", "Tiếng Việt"),
            "long.jpg": "a" * (screen.MAX_TEXT_CHARS + 1),
        },
        ["ctrl.jpg", "invisible.jpg", "nfd.jpg", "long.jpg"],
    )
    assert texts.is_dir()
    return root, outside


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every path opened through builtins.open or PIL.Image.open while the loader runs."""
    paths: list[str] = []
    real_open, real_image_open = builtins.open, Image.open

    def recording_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    def recording_image_open(fp, *args, **kwargs):
        if isinstance(fp, (str, bytes, os.PathLike)):
            paths.append(os.fsdecode(fp))
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(Image, "open", recording_image_open)
    return paths


def test_every_hostile_input_gets_its_documented_outcome(hostile, opened):
    root, outside = hostile
    splits = load_splits(DatasetConfig(root=str(root), val_fraction=0.0))
    reasons = {s.path.replace(str(root) + "/train_data/", ""): s.reason for s in splits.skipped}

    def reason(prefix: str) -> list[str]:
        return sorted(r for p, r in reasons.items() if p.startswith(prefix))

    # label.json files
    for name in ("latin1", "cp1258", "huge", "deep", "bigint"):
        assert "bad_label_json" in reason(f"{name}/label.json"), name
    assert reason("linked_label/label.json") == ["unsafe_path"]
    # paths leaving the writer folder or the root
    assert reason("escape/") == ["unsafe_path"] * 4
    assert reason("links/out.jpg") == ["unsafe_path"]
    assert reason("linked_writer") == ["unsafe_path"]
    # images
    assert reasons["images/zero.jpg"] == "empty_image"
    assert reasons["images/cut.jpg"] == "corrupt_image"
    assert reasons["images/text.jpg"] == "corrupt_image"
    for name in ("wide.jpg", "bomb.png", "big.png"):
        assert reasons[f"images/{name}"] == "image_too_large", name
    # labels: invisible characters removed, NFC, too long skipped
    assert reasons["texts/invisible.jpg"] == "empty_text"
    assert reasons["texts/long.jpg"] == "text_too_long"
    texts = {s.id.split("/", 1)[1]: s.text for s in splits.train}
    assert texts["texts/ctrl.jpg"] == "chữ viết tay"
    assert texts["texts/nfd.jpg"] == unicodedata.normalize("NFC", "Tiếng Việt")
    assert "links/in.jpg" in texts and "good/1.jpg" in texts
    assert all(s.reason in SKIP_REASONS for s in splits.skipped)
    # nothing outside the root was opened (the symlinked writer, label and image included)
    assert opened, "the recorder saw nothing"
    real_root = root.resolve()
    escaped = [p for p in opened if not Path(p).resolve().is_relative_to(real_root)]
    assert escaped == []
    assert not any(str(outside) in p for p in opened)


def test_a_huge_label_json_is_never_read_whole(hostile, monkeypatch):
    root, _ = hostile
    sizes = []
    real_open = builtins.open

    class Counting:
        def __init__(self, file):
            self.file = file

        def read(self, n=-1):
            assert n != -1, "unbounded read"
            data = self.file.read(n)
            sizes.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Counting(handle) if str(file).endswith("label.json") else handle

    monkeypatch.setattr(builtins, "open", counting_open)
    load_splits(DatasetConfig(root=str(root), val_fraction=0.0))
    assert max(sizes) <= uit_hwdb.MAX_LABEL_BYTES + 1


def test_strict_mode_raises_a_clear_error_not_a_traceback(hostile):
    root, _ = hostile
    with pytest.raises(DatasetError, match=r"dataset.strict=true"):
        load_splits(DatasetConfig(root=str(root), strict=True))


def test_a_split_folder_symlinked_outside_the_root_is_refused(tmp_path):
    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    writer(elsewhere, "train_data", "w", {"1.jpg": "chữ"}, ["1.jpg"])
    writer(root, "test_data", "w", {"1.jpg": "chữ"}, ["1.jpg"])
    os.symlink(elsewhere / "train_data", root / "train_data")
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_splits(DatasetConfig(root=str(root)))


def test_normalize_text_removes_invisible_characters():
    assert normalize_text("a\u200bb\tc\x00d\ufeff e\u00ad ") == "ab cd e"
    assert normalize_text(unicodedata.normalize("NFD", "Việt")) == unicodedata.normalize("NFC", "Việt")


def test_fuzz_random_label_files_and_images_never_crash(tmp_path):
    """Seeded random garbage: label.json bytes (mutated JSON, random bytes, odd keys) and images
    (bit flips, truncations). The loader returns; every problem is a counted skip."""
    rng = random.Random(1234)
    root = tmp_path / "ds"
    writer(root, "train_data", "anchor", {"1.jpg": "neo"}, ["1.jpg"])
    writer(root, "test_data", "anchor", {"1.jpg": "neo"}, ["1.jpg"])
    good = jpeg(tmp_path / "template.jpg", (120, 30))
    keys = [
        "1.jpg",
        "../1.jpg",
        "..",
        ".",
        "",
        "a/b.jpg",
        "\ud800.jpg",
        "x" * 256,
        "1.JPG",
        " 1.jpg",
        "\\..\\1.jpg",
    ]
    values = ["chữ", "", " ", "\u200b", 5, None, [], {}, "a" * 50, "\x00\x01", "tiếng\u0301"]
    for n in range(40):
        folder = root / "train_data" / f"fuzz{n}"
        folder.mkdir(parents=True)
        data = bytearray(good)
        for _ in range(rng.randint(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        (folder / "1.jpg").write_bytes(bytes(data))
        labels = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 4))}
        text = json.dumps(labels, ensure_ascii=rng.random() < 0.5)
        raw = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        elif rng.random() < 0.3:
            raw = raw[: rng.randrange(len(raw) + 1)]
        (folder / "label.json").write_bytes(raw)
    splits = load_splits(DatasetConfig(root=str(root), val_fraction=0.0))
    assert all(s.reason in SKIP_REASONS for s in splits.skipped)
    assert len(splits.skipped) >= 40
    for sample in splits.train + splits.test:
        assert sample.text == normalize_text(sample.text) and sample.text
        assert sample.image.resolve().is_relative_to(root.resolve())
        sample.text.encode("utf-8")  # writable to predictions.csv

"""The UIT-HWDB loader: bad inputs are skipped with counted reasons, splits are writer-disjoint."""

import json
import logging
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from hwocr.config import DatasetConfig
from hwocr.data import load_image, load_splits, screen
from hwocr.errors import DatasetError
from hwocr.text import natural_key

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vnondb_line"


def write_image(path: Path, size=(60, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 200).save(path)


def write_writer(root: Path, split: str, writer: str, n: int, text="chữ viết tay") -> Path:
    folder = root / split / writer
    for i in range(1, n + 1):
        write_image(folder / f"{i}.jpg")
    (folder / "label.json").write_text(
        json.dumps({f"{i}.jpg": f"{text} {i}" for i in range(1, n + 1)}), "utf-8"
    )
    return folder


@pytest.fixture
def clean_root(tmp_path: Path) -> Path:
    for w in range(1, 11):
        write_writer(tmp_path, "train_data", f"{w:04d}", 3)
    write_writer(tmp_path, "test_data", "0100", 4)
    return tmp_path


@pytest.fixture
def messy_root(tmp_path: Path) -> Path:
    """One good writer per split plus one writer folder per bad-input case."""
    root = tmp_path / "ds"
    write_writer(root, "train_data", "0001", 2)
    write_writer(root, "test_data", "0002", 2)
    bad = root / "train_data" / "0003"
    for name in ("ok.jpg", "unlabelled.jpg", "empty_text.jpg", "escape.jpg"):
        write_image(bad / name)
    (bad / "corrupt.jpg").write_bytes(b"not an image at all")
    (bad / "empty.jpg").write_bytes(b"")
    truncated = (bad / "ok.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    outside = tmp_path / "secret.jpg"
    write_image(outside)
    os.symlink(outside, bad / "link.jpg")
    labels = {
        "ok.jpg": "tốt",
        "missing.jpg": "không có ảnh",
        "empty_text.jpg": "   \t ",
        "corrupt.jpg": "hỏng",
        "empty.jpg": "rỗng",
        "truncated.jpg": "cụt",
        "../../secret.jpg": "thoát",
        "/etc/passwd": "tuyệt đối",
        "link.jpg": "liên kết",
        "number.jpg": 5,
    }
    (bad / "label.json").write_text(json.dumps(labels, ensure_ascii=False), "utf-8")
    not_json = root / "train_data" / "0004"
    write_image(not_json / "1.jpg")
    (not_json / "label.json").write_text("{not json", "utf-8")
    latin1 = root / "train_data" / "0005"
    write_image(latin1 / "1.jpg")
    (latin1 / "label.json").write_bytes('{"1.jpg": "chữ"}'.encode("utf-16"))
    a_list = root / "train_data" / "0006"
    write_image(a_list / "1.jpg")
    (a_list / "label.json").write_text('["1.jpg"]', "utf-8")
    return root


def test_bad_inputs_are_skipped_and_counted(messy_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hwocr.data"):
        splits = load_splits(DatasetConfig(root=str(messy_root), val_fraction=0.0))
    assert splits.skip_counts() == {
        "missing_image": 1,
        "unlabelled_image": 5,  # unlabelled.jpg + the images of the three bad label.json folders + escape.jpg
        "corrupt_image": 2,  # garbage bytes and a truncated JPEG
        "empty_image": 1,
        "empty_text": 1,
        "unsafe_path": 3,  # ../../, absolute, symlink out of root
        "bad_label_json": 4,  # not JSON, not UTF-8, not an object, a non-string value
    }
    assert sorted(s.id for s in splits.train) == ["train/0001/1.jpg", "train/0001/2.jpg", "train/0003/ok.jpg"]
    assert [s.id for s in splits.test] == ["test/0002/1.jpg", "test/0002/2.jpg"]
    assert splits.summary()["skipped_total"] == 17
    assert "skipped 17 sample(s)" in caplog.text and "unsafe_path=3" in caplog.text


def test_strict_mode_raises_naming_the_file(messy_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"0003.*(missing|corrupt|empty|unsafe|bad_label)"):
        load_splits(DatasetConfig(root=str(messy_root), strict=True))


def test_decompression_bomb_is_skipped(clean_root: Path, monkeypatch) -> None:
    big = clean_root / "train_data" / "0001" / "1.jpg"
    write_image(big, size=(200, 100))
    monkeypatch.setattr(screen, "MAX_IMAGE_PIXELS", 10_000)
    splits = load_splits(DatasetConfig(root=str(clean_root)))
    assert splits.skip_counts() == {"image_too_large": 1}
    assert splits.skipped[0].path == str(big)


def test_missing_and_empty_roots_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"(?s)nowhere.*does not exist.*train_data/<writer>/label.json"):
        load_splits(DatasetConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match=rf"(?s){tmp_path}.*lacks train_data and test_data"):
        load_splits(DatasetConfig(root=str(tmp_path)))
    (tmp_path / "train_data").mkdir()
    (tmp_path / "test_data").mkdir()
    with pytest.raises(DatasetError, match="no usable samples"):
        load_splits(DatasetConfig(root=str(tmp_path)))
    with pytest.raises(DatasetError, match="dataset.root is not set"):
        load_splits(DatasetConfig(root=None))


def test_val_split_is_writer_disjoint_and_seeded(clean_root: Path) -> None:
    cfg = DatasetConfig(root=str(clean_root), val_fraction=0.2)
    a, b, c = load_splits(cfg, seed=1), load_splits(cfg, seed=1), load_splits(cfg, seed=2)
    assert a == b
    val_writers = {s.writer for s in a.val}
    assert len(val_writers) == 2 and not val_writers & {s.writer for s in a.train}
    assert {s.writer for s in c.val} != val_writers or c.train != a.train
    assert all(s.split == "val" and s.id.startswith("val/") for s in a.val)
    assert len(a.train) + len(a.val) == 30
    tiny = load_splits(DatasetConfig(root=str(clean_root), val_fraction=0.01))
    assert len({s.writer for s in tiny.val}) == 1


def test_writer_filter_and_caps(clean_root: Path) -> None:
    cfg = DatasetConfig(root=str(clean_root), writers=["0001", "0002", "0003"], val_fraction=0.3)
    splits = load_splits(cfg)
    assert {s.writer for s in splits.train + splits.val} == {"0001", "0002", "0003"}
    capped = DatasetConfig(root=str(clean_root), max_train_samples=5, max_eval_samples=2, val_fraction=0.2)
    a, b = load_splits(capped, seed=7), load_splits(capped, seed=7)
    assert (len(a.train), len(a.val), len(a.test)) == (5, 2, 2)
    assert a == b and [s.id for s in a.train] == sorted((s.id for s in a.train), key=natural_key)
    with pytest.raises(DatasetError, match="9999"):
        load_splits(DatasetConfig(root=str(clean_root), writers=["9999"]))


def test_natural_order_and_nfc(tmp_path: Path) -> None:
    folder = write_writer(tmp_path, "train_data", "0001", 11)
    decomposed = unicodedata.normalize("NFD", "Tiếng  Việt ")
    (folder / "label.json").write_text(
        json.dumps({**{f"{i}.jpg": f"dòng {i}" for i in range(1, 11)}, "11.jpg": decomposed}), "utf-8"
    )
    write_writer(tmp_path, "test_data", "0002", 1)
    splits = load_splits(DatasetConfig(root=str(tmp_path), val_fraction=0.0))
    assert [s.image.name for s in splits.train][:3] == ["1.jpg", "2.jpg", "3.jpg"]
    assert splits.train[-1].text == "Tiếng Việt" == unicodedata.normalize("NFC", "Tiếng Việt")
    assert load_image(splits.train[0].image).mode == "RGB"


def test_real_vnondb_lines() -> None:
    if not REAL_ROOT.is_dir():
        pytest.skip(f"{REAL_ROOT} not present")
    splits = load_splits(DatasetConfig(root=str(REAL_ROOT), val_fraction=0.1), seed=3407)
    assert len(splits.train) + len(splits.val) == 1660 and len(splits.test) == 328
    writers = {s.writer for s in splits.train + splits.val + splits.test}
    assert len(writers) == 48 and splits.skipped == []
    assert all(
        s.text == unicodedata.normalize("NFC", s.text) for s in splits.train + splits.val + splits.test
    )

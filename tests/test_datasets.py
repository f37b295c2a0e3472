"""The manifest and Hugging Face dataset loaders, on real datasets written with each format's own tools
(tests/dataset_formats.py): the same samples from every format, the same hostile rows counted, clear
errors for a wrong column, and held-out splits that say how they were chosen."""

import json
import os
import random
import unicodedata
from pathlib import Path

import datasets
import pandas as pd
import pytest
from conftest import run_hwocr
from dataset_formats import (
    FORMATS,
    expected_skips,
    good_rows,
    hostile_rows,
    kind,
    png,
    write_dataset,
    write_hf,
    write_manifest,
)

from hwocr.config import DatasetConfig, validate_dataset
from hwocr.data import load_image, load_splits
from hwocr.errors import ConfigError, DatasetError


def config(fmt: str, root: Path, tmp_path: Path, **overrides) -> DatasetConfig:
    return DatasetConfig(kind=kind(fmt), root=str(root), image_cache=str(tmp_path / "images"), **overrides)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_samples(fmt, tmp_path):
    rows = good_rows()
    root = write_dataset(tmp_path / "ds", rows, fmt)
    splits = load_splits(config(fmt, root, tmp_path, val_fraction=0.3), seed=1)
    nfc = {unicodedata.normalize("NFC", r["text"]): r for r in rows}

    assert sorted(s.text for s in splits.test) == sorted(t for t, r in nfc.items() if r["split"] == "test")
    assert sorted(s.text for s in splits.train + splits.val) == sorted(
        t for t, r in nfc.items() if r["split"] == "train"
    )
    for sample in splits.train + splits.val + splits.test:
        row = nfc[sample.text]  # the decomposed text came back NFC, or this lookup fails
        assert sample.writer == row["writer"] and sample.id.startswith(f"{sample.split}/{row['writer']}/")
        assert load_image(sample.image).tobytes() == load_image(row_image(row, tmp_path)).tobytes()
    val_writers = {s.writer for s in splits.val}
    assert val_writers and not val_writers & {s.writer for s in splits.train}
    assert splits.provenance["val"].startswith("writer-disjoint: 1 of 3 writers")
    assert splits.provenance["test"] == "given by the data"
    assert load_splits(config(fmt, root, tmp_path, val_fraction=0.3), seed=1) == splits


def row_image(row: dict, tmp_path: Path) -> Path:
    path = tmp_path / "original.png"
    path.write_bytes(row["data"])
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_hostile_rows_are_counted_in_every_format(fmt, tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows() + hostile_rows(fmt), fmt)
    splits = load_splits(config(fmt, root, tmp_path))
    assert splits.skip_counts() == expected_skips(fmt)
    assert len(splits.train) + len(splits.val) == 9 and len(splits.test) == 3
    assert splits.summary()["skipped_total"] == sum(expected_skips(fmt).values())
    assert not any("bí mật" in s.text or "outside" in str(s.image) for s in splits.train + splits.val)

    with pytest.raises(ConfigError, match=r"(manifest\.\w+:\d+|train\[\d+\]): \w+.*dataset\.strict=true"):
        load_splits(config(fmt, root, tmp_path, strict=True))


def test_manifest_rows_that_are_not_rows_are_counted(tmp_path):
    """Lines a CSV or JSONL manifest can hold that are no usable row at all."""
    root = tmp_path / "ds"
    write_dataset(root, good_rows(), "csv")
    os.symlink(tmp_path / "outside.png", root / "scans" / "link.png")
    (root / "scans" / "big.png").write_bytes(png("x"))
    with open(root / "manifest.csv", "ab") as file:
        file.write("scans/w0_0.png,lặp lại,w0,train\n".encode())  # the same image again
        file.write("scans/link.png,liên kết,w0,train\n".encode())  # a symlink leaving the folder
        file.write("/etc/hostname,tuyệt đối,w0,train\n".encode())
        file.write("scans/w0_1.png,thừa,w0,train,extra\n".encode())  # more fields than the header
        file.write(b"scans/w0_2.png,dev,w0,dev\n")  # no such split
        file.write(b"scans/big.png,caf\xe9,w0,train\n")  # Latin-1, not UTF-8
        file.write(f'scans/big.png,"{"a" * 200_000}",w0,train\n'.encode())  # over csv's field limit
    splits = load_splits(config("csv", root / "manifest.csv", tmp_path))
    assert splits.skip_counts() == {"duplicate_row": 1, "unsafe_path": 2, "bad_row": 3, "unknown_split": 1}
    assert len(splits.train) + len(splits.val) == 9

    jsonl = root / "more.jsonl"
    lines = [
        "[1, 2]",  # not an object
        "{not json",
        '{"image": "scans/big.png"}',  # no text field
        '{"image": "scans/big.png", "text": 5, "split": "train"}',  # a number, not text
        '{"image": "scans/big.png", "text": "không có split"}',  # a split column, but no split
        "",  # blank lines are no rows
        '{"image": "scans/w0_0.png", "text": "được", "split": "test"}',
        '{"image": "scans/w1_0.png", "text": "tốt", "split": "train"}',
    ]
    jsonl.write_text("\n".join(lines) + "\n", "utf-8")
    splits = load_splits(config("jsonl", jsonl, tmp_path, val_fraction=0))
    assert splits.skip_counts() == {"bad_row": 3, "not_text": 1, "unknown_split": 1}
    assert [s.text for s in splits.test] == ["được"] and [s.text for s in splits.train] == ["tốt"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_manifest_without_the_image_or_text_column_is_a_config_error(fmt, tmp_path):
    rows = good_rows()
    path = write_manifest(tmp_path / "a", rows, fmt, columns=("image", "writer", "split"))
    with pytest.raises(ConfigError, match=rf"{path} has no column 'text' \(dataset.text_column\).*image"):
        load_splits(config(fmt, path, tmp_path))
    path = write_manifest(tmp_path / "b", rows, fmt)
    with pytest.raises(ConfigError, match=r"no column 'path' \(dataset.image_column\)"):
        load_splits(config(fmt, path, tmp_path, image_column="path"))
    with pytest.raises(DatasetError, match=r"is not a \.csv, \.tsv or \.jsonl file"):
        load_splits(config(fmt, tmp_path / "b" / "scans" / "w0_0.png", tmp_path))


def test_a_hf_dataset_without_the_named_columns_or_splits_is_a_config_error(tmp_path):
    root = write_hf(tmp_path / "ds", good_rows(), "save_to_disk")
    with pytest.raises(
        ConfigError, match=r"split 'train', has no column 'picture'; its columns: image, text"
    ):
        load_splits(config("save_to_disk", root, tmp_path, image_column="picture"))
    with pytest.raises(ConfigError, match=r"no column 'label' \(dataset.text_column\)"):
        load_splits(config("save_to_disk", root, tmp_path, text_column="label"))
    numbers = tmp_path / "numbers"
    datasets.Dataset.from_dict({"image": [1, 2], "text": ["một", "hai"]}).save_to_disk(str(numbers))
    with pytest.raises(ConfigError, match=r"image_column='image' .* is Value\('int64'\): neither images"):
        load_splits(config("save_to_disk", numbers, tmp_path))
    with pytest.raises(
        DatasetError, match=r"has no split 'training' \(dataset.train_split\); its splits: test, train"
    ):
        load_splits(config("save_to_disk", root, tmp_path, train_split="training"))
    with pytest.raises(DatasetError, match=r"dataset.root=.*nowhere does not exist.*not a hub id"):
        load_splits(config("parquet", tmp_path / "nowhere", tmp_path))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_without_writers_or_a_test_split_the_held_out_splits_are_seeded_by_sample(fmt, tmp_path):
    rows = [r | {"split": "train"} for r in good_rows(n_writers=5, per_writer=4)]
    if fmt == "csv":
        root = write_manifest(tmp_path / "ds", rows, "csv", columns=("image", "text"))
    else:
        root = write_hf(tmp_path / "ds", rows, "parquet", writers=False)
    cfg = config(fmt, root, tmp_path, test_fraction=0.25, val_fraction=0.2)
    a, b, c = load_splits(cfg, seed=3), load_splits(cfg, seed=3), load_splits(cfg, seed=4)
    assert a == b and (len(a.train), len(a.val), len(a.test)) == (12, 3, 5)
    assert {s.id for s in a.test} != {s.id for s in c.test}
    ids = [s.id.partition("/")[2] for s in a.train + a.val + a.test]
    assert len(set(ids)) == 20 and {s.writer for s in a.train} == {""}
    assert a.provenance["test"].startswith("seeded by sample: 5 of 20 samples")
    assert a.provenance["val"].startswith("seeded by sample: 3 of 15 samples")
    capped = load_splits(config(fmt, root, tmp_path, max_train_samples=4, max_eval_samples=2), seed=3)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (4, 2, 2)


@pytest.mark.parametrize(("fmt", "name"), [("imagefolder", "validation"), ("csv", "dev")])
def test_a_validation_split_in_the_data_is_used_as_it_is(fmt, name, tmp_path):
    rows = good_rows(n_writers=5, test_writers=1)
    for row in rows:
        if row["writer"] == "w0":
            row["split"] = name
    root = write_dataset(tmp_path / "ds", rows, fmt)
    splits = load_splits(config(fmt, root, tmp_path, val_split=name))
    assert {s.writer for s in splits.val} == {"w0"} and len(splits.train) == 9
    assert splits.provenance["val"] == "given by the data"
    assert all(s.split == "val" and s.id.startswith("val/w0/") for s in splits.val)


def test_images_stored_in_a_dataset_are_written_once_by_content(tmp_path):
    root = write_hf(tmp_path / "ds", good_rows(), "parquet")
    cfg = config("parquet", root, tmp_path)
    first = load_splits(cfg)
    files = sorted((tmp_path / "images").rglob("*.png"))
    assert len(files) == 12 and {s.image for s in first.train + first.val + first.test} == set(files)
    stamps = [f.stat().st_mtime_ns for f in files]
    load_splits(cfg)
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_data_report_says_how_each_split_was_chosen(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows() + hostile_rows("csv"), "csv")
    report = load_splits(config("csv", root, tmp_path)).report()
    assert report["splits"]["val"].startswith("writer-disjoint")
    assert report["summary"]["skipped/unsafe_path"] == 1
    assert {s["reason"] for s in report["skipped"]} == set(expected_skips("csv"))
    json.dumps(report)  # it is written as JSON


def test_dataset_settings_are_checked_before_any_work():
    with pytest.raises(
        ConfigError, match=r"dataset.kind='parquet' is not one of uit_hwdb, synth, manifest, hf"
    ):
        validate_dataset(DatasetConfig(kind="parquet"))
    with pytest.raises(ConfigError, match=r"dataset.test_fraction=1.0 must be in \[0, 1\)"):
        validate_dataset(DatasetConfig(kind="manifest", test_fraction=1.0))
    with pytest.raises(ConfigError, match=r"train_split, test_split and val_split must differ"):
        validate_dataset(DatasetConfig(kind="hf", image_cache="x", val_split="test"))
    with pytest.raises(ConfigError, match=r"dataset.image_cache is not set"):
        validate_dataset(DatasetConfig(kind="hf"))


@pytest.mark.parametrize(
    ("option", "message"), [("manifest", "is not a file"), ("hf", "dataset.root is not set")]
)
def test_the_cli_says_what_dataset_root_must_be(option, message, tmp_path, capsys):
    run = run_hwocr(tmp_path / "run", "+experiment=demo", f"dataset={option}", tracking=tmp_path / "db")
    output = "".join(capsys.readouterr()) + run.log()
    assert run.code == 2 and message in output and "docs/datasets.md" in output and "Traceback" not in output


@pytest.mark.parametrize("column", ["record", "png"])
def test_parquet_written_without_datasets_is_read_too(column, tmp_path):
    """pandas' parquet: images as {bytes, path} records or as plain bytes, with no Image type recorded."""
    rows = good_rows()
    frame = pd.DataFrame(
        {
            "record": [{"bytes": r["data"], "path": r["file"]} for r in rows],
            "png": [r["data"] for r in rows],
            "text": [r["text"] for r in rows],
            "writer": [r["writer"] for r in rows],
            "split": [r["split"] for r in rows],
        }
    )
    (tmp_path / "ds" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        part = frame[frame["split"] == split].drop(columns="split")
        part.to_parquet(tmp_path / "ds" / "data" / f"{split}-00000-of-00001.parquet")
    splits = load_splits(config("parquet", tmp_path / "ds", tmp_path, image_column=column))
    assert len(splits.test) == 3 and len(splits.train) + len(splits.val) == 9 and not splits.skipped
    pixels = {load_image(s.image).tobytes() for s in splits.test}
    assert pixels == {load_image(row_image(r, tmp_path)).tobytes() for r in rows if r["split"] == "test"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_fuzzed_manifests_never_crash(fmt, tmp_path):
    """Random bytes flipped, cut or repeated in a manifest: each load gives splits or a clear error."""
    root = write_dataset(tmp_path / "ds", good_rows() + hostile_rows(fmt), fmt)
    original = root.read_bytes()
    rng = random.Random(0)
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 20)):
            at = rng.randrange(len(data))
            action = rng.choice(["flip", "cut", "repeat", "nul"])
            if action == "flip":
                data[at] = rng.randrange(256)
            elif action == "cut":
                del data[at : at + rng.randint(1, 40)]
            elif action == "repeat":
                data[at:at] = data[at : at + rng.randint(1, 200)]
            else:
                data[at:at] = b"\x00"
        root.write_bytes(bytes(data))
        try:
            splits = load_splits(config(fmt, root, tmp_path))
        except ConfigError:  # DatasetError included: no usable train or test samples left, a column gone
            continue
        assert all(
            s.image.resolve().is_relative_to(root.parent) for s in splits.train + splits.val + splits.test
        )


def test_a_test_split_whose_rows_are_all_bad_is_an_error_not_a_held_out_one(tmp_path):
    rows = good_rows()
    for row in rows:
        if row["split"] == "test":
            row["data"] = b"not an image"
    root = write_dataset(tmp_path / "ds", rows, "csv")
    with pytest.raises(
        DatasetError, match=r"no usable test samples in CSV manifest .*skipped 3 \(corrupt_image=3\)"
    ):
        load_splits(config("csv", root, tmp_path))

"""Synthetic handwriting: deterministic, idempotent, loadable, and covering every Vietnamese letter."""

import json
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from hwocr.config import DatasetConfig, SynthConfig
from hwocr.data import generate_lines, generate_synth_dataset, load_splits
from hwocr.data.synth import BUNDLED_FONT_DIR, META_FILE, find_fonts

TONES = ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323")
VOWELS = "aăâeêioôơuưy"
LOWER = {unicodedata.normalize("NFC", v + t) for v in VOWELS for t in TONES} | {"đ"}
UPPER = {c.upper() for c in LOWER}
SMALL = SynthConfig(n_train_writers=2, n_test_writers=1, lines_per_writer=3, seed=5)


def image_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = generate_synth_dataset(tmp_path / "a", SMALL)
    b = generate_synth_dataset(tmp_path / "b", SMALL)
    c = generate_synth_dataset(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 6}))
    assert len(image_bytes(a)) == 9
    assert image_bytes(a) == image_bytes(b)
    assert image_bytes(a) != image_bytes(c)


def test_layout_loads_and_looks_like_lines(tmp_path: Path) -> None:
    root = generate_synth_dataset(tmp_path / "synth", SMALL)
    splits = load_splits(DatasetConfig(root=str(root), val_fraction=0.0))
    assert (len(splits.train), len(splits.test), splits.skipped) == (6, 3, [])
    assert not {s.writer for s in splits.train} & {s.writer for s in splits.test}
    for sample in splits.train:
        width, height = Image.open(sample.image).size
        assert 70 <= height <= 150 and width <= 1700 and width > 2 * height


def test_idempotent_and_regenerates_on_new_settings(tmp_path: Path) -> None:
    root = generate_synth_dataset(tmp_path / "synth", SMALL)
    stamp = (root / "train_data" / "0001" / "1.jpg").stat().st_mtime_ns
    generate_synth_dataset(root, SMALL)
    assert (root / "train_data" / "0001" / "1.jpg").stat().st_mtime_ns == stamp
    generate_synth_dataset(root, SynthConfig(**{**SMALL.__dict__, "lines_per_writer": 2}))
    assert len(image_bytes(root)) == 6
    assert json.loads((root / META_FILE).read_text())["lines_per_writer"] == 2
    assert not list(tmp_path.glob(".synth.*"))  # no temp or old trees left behind


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate_synth_dataset(tmp_path, SMALL)


def test_text_file_and_word_level(tmp_path: Path) -> None:
    text_file = tmp_path / "lines.txt"
    text_file.write_text("\n  Xin chào  \n\nTạm biệt\n", encoding="utf-8")
    cfg = SynthConfig(n_train_writers=1, n_test_writers=1, lines_per_writer=3, text_file=str(text_file))
    root = generate_synth_dataset(tmp_path / "words", cfg, level="word")
    labels = json.loads((root / "train_data" / "0001" / "label.json").read_text(encoding="utf-8"))
    assert set(labels.values()) <= {"Xin", "chào", "Tạm", "biệt"}


def test_a_closed_vocabulary_draws_every_word_from_the_text_s_most_common(tmp_path: Path) -> None:
    text_file = tmp_path / "lines.txt"
    text_file.write_text("ba ba ba hai hai một\nba hai bốn\n", encoding="utf-8")
    cfg = SynthConfig(
        n_train_writers=2, n_test_writers=1, lines_per_writer=6, text_file=str(text_file), vocabulary=2
    )
    root = generate_synth_dataset(tmp_path / "closed", cfg, level="word")
    words = [
        w for f in root.glob("*/*/label.json") for w in json.loads(f.read_text(encoding="utf-8")).values()
    ]
    assert len(words) == 18 and set(words) == {"ba", "hai"}
    with pytest.raises(ValueError, match="needs level=word"):
        generate_synth_dataset(tmp_path / "lines", cfg, level="line")


def test_generator_covers_every_vietnamese_letter() -> None:
    assert set("".join(generate_lines(500, seed=0))) >= LOWER
    assert set("".join(generate_lines(6000, seed=0))) >= UPPER
    lines = generate_lines(200, seed=3)
    assert lines == generate_lines(200, seed=3)
    assert all(line == unicodedata.normalize("NFC", line) and 5 <= len(line) <= 70 for line in lines)


def test_bundled_fonts_have_every_vietnamese_glyph() -> None:
    ttlib = pytest.importorskip("fontTools.ttLib")  # a build-time tool, not a runtime dependency
    fonts = find_fonts()
    assert 2 <= len(fonts) <= 3
    assert sum(p.stat().st_size for p in BUNDLED_FONT_DIR.iterdir()) < 1_000_000
    for font in fonts:
        cmap = ttlib.TTFont(font).getBestCmap()
        assert {c for c in LOWER | UPPER if ord(c) not in cmap} == set(), font.name
        assert font.with_suffix(".OFL.txt").is_file()

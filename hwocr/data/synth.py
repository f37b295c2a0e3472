"""Synthetic Vietnamese handwriting lines written in the UIT-HWDB layout.

A "writer" is a fixed font + style (slant, stroke weight, ink, spacing, size, paper); each line adds
its own baseline wobble, jitter, blur and paper noise. Everything is drawn from generators seeded by
(seed, split, writer, line), so one seed always gives byte-identical JPEGs.
"""

import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from hwocr.config import SynthConfig
from hwocr.data.vietnamese import generate_lines
from hwocr.io import atomic_directory
from hwocr.text import normalize_text

logger = logging.getLogger("hwocr.data")

SYNTH_VERSION = 2  # bump when rendering changes, so cached datasets are regenerated
META_FILE = "synth_meta.json"
BUNDLED_FONT_DIR = Path(__file__).parent / "fonts"
FONT_SUFFIXES = (".ttf", ".otf")
LEVELS = ("line", "word", "paragraph")
INKS = ((25, 25, 30), (20, 35, 110), (35, 60, 160), (55, 55, 60), (30, 30, 80))
RENDER_SIZE = 64  # font size the ink is drawn at before scaling to the target height


@dataclass(frozen=True)
class WriterStyle:
    font: Path | None  # None = PIL's built-in font
    slant: float  # horizontal shear; positive leans right like most handwriting
    stroke: int  # extra stroke width in pixels at RENDER_SIZE
    spacing: float  # extra letter spacing, fraction of the font size
    wobble: float  # baseline wobble amplitude, fraction of the font size
    wobble_period: float  # in characters
    height: int  # output line height in pixels
    ink: tuple[int, int, int]
    paper: tuple[int, int, int]
    blur: float


def find_fonts(font_dirs: list[Path] | None = None) -> list[Path]:
    """Bundled fonts plus any in `font_dirs`, sorted by name so writer styles are stable."""
    fonts: list[Path] = []
    for folder in [BUNDLED_FONT_DIR, *(Path(d) for d in font_dirs or [])]:
        if folder.is_dir():
            fonts += sorted(p for p in folder.iterdir() if p.suffix.lower() in FONT_SUFFIXES)
    return fonts


def _usable_fonts(candidates: list[Path]) -> list[Path]:
    usable = []
    for path in candidates:
        try:
            ImageFont.truetype(str(path), RENDER_SIZE)
            usable.append(path)
        except OSError as err:
            logger.warning("skipping font %s: %s", path, err)
    if not usable:
        logger.warning("no usable handwriting font found; falling back to PIL's default font")
    return usable


def writer_style(fonts: list[Path], index: int, seed: int, height: tuple[int, int]) -> WriterStyle:
    rng = random.Random(f"writer/{seed}/{index}")
    tone = rng.randint(228, 250)
    return WriterStyle(
        font=fonts[index % len(fonts)] if fonts else None,
        slant=rng.uniform(-0.08, 0.35),
        stroke=rng.choice((0, 0, 1, 2)),
        spacing=rng.uniform(-0.04, 0.07),
        wobble=rng.uniform(0.02, 0.08),
        wobble_period=rng.uniform(6, 18),
        height=rng.randint(*height),
        ink=rng.choice(INKS),
        paper=(tone, tone - rng.randint(0, 6), tone - rng.randint(0, 14)),
        blur=rng.uniform(0.3, 0.9),
    )


def _load_font(style: WriterStyle) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if style.font is None:
        return ImageFont.load_default(size=RENDER_SIZE)
    return ImageFont.truetype(str(style.font), RENDER_SIZE)


def render_ink(text: str, style: WriterStyle, font, rng: random.Random) -> Image.Image:
    """Draw `text` character by character on a wobbling baseline; returns a cropped 'L' ink mask."""
    size = RENDER_SIZE
    advances = [font.getlength(c) + style.spacing * size + rng.uniform(-0.03, 0.03) * size for c in text]
    width = int(sum(advances) + 2 * size)
    mask = Image.new("L", (width, 3 * size), 0)
    draw = ImageDraw.Draw(mask)
    phase = rng.uniform(0, 2 * math.pi)
    x, baseline = size * 0.5, size * 2.0
    for i, (char, advance) in enumerate(zip(text, advances, strict=True)):
        wave = math.sin(phase + 2 * math.pi * i / style.wobble_period) + 0.4 * math.sin(phase * 2 + i / 2.3)
        y = baseline + style.wobble * size * wave + rng.uniform(-0.02, 0.02) * size
        draw.text((x, y), char, font=font, fill=255, anchor="ls", stroke_width=style.stroke, stroke_fill=255)
        x += advance
    slant = style.slant + rng.uniform(-0.03, 0.03)
    # x_src = x + slant * (y - baseline): shears around the baseline so nothing leaves the canvas.
    mask = mask.transform(
        mask.size, Image.Transform.AFFINE, (1, slant, -slant * baseline - size * 0.5, 0, 1, 0)
    )
    box = mask.getbbox()
    return mask.crop(box) if box else mask


def _stack(masks: list[Image.Image], gap: int) -> Image.Image:
    page = Image.new("L", (max(m.width for m in masks), sum(m.height for m in masks) + gap * len(masks)), 0)
    y = 0
    for m in masks:
        page.paste(m, (0, y))
        y += m.height + gap
    return page


def _paper(size: tuple[int, int], style: WriterStyle, rng: np.random.Generator) -> np.ndarray:
    """Light paper: base tone, a low-frequency texture, grain and sometimes a faint ruled line."""
    w, h = size
    coarse = rng.normal(0, 4, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    paper = np.asarray(style.paper, np.float32)[None, None, :] + texture[..., None]
    paper += rng.normal(0, 3, (h, 1, 1)).astype(np.float32)  # faint horizontal banding
    paper += 2.5 * rng.standard_normal((h, w, 1), dtype=np.float32)
    if rng.random() < 0.35:
        row = int(rng.uniform(0.75, 0.95) * h)
        paper[row : row + 2] -= rng.uniform(12, 30) * np.asarray([1.0, 0.8, 0.4], np.float32)
    return paper


def compose(mask: Image.Image, style: WriterStyle, rng: random.Random, max_width: int) -> Image.Image:
    """Scale the ink to the writer's line height, blur it and lay it on paper."""
    margin_y = 0.18
    height = style.height + rng.randint(-6, 6)
    ink_h = max(1, round(height * (1 - 2 * margin_y)))
    scale = ink_h / mask.height
    margin_x = rng.randint(10, 40)
    if mask.width * scale + 2 * margin_x > max_width:  # long lines are squeezed to fit, as on paper
        scale = (max_width - 2 * margin_x) / mask.width
    ink_size = (max(1, round(mask.width * scale)), max(1, round(mask.height * scale)))
    ink = mask.resize(ink_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    ink = ink.filter(ImageFilter.GaussianBlur(style.blur + rng.uniform(-0.2, 0.2)))
    canvas = Image.new("L", (ink.width + 2 * margin_x, max(height, ink.height + 8)), 0)
    canvas.paste(ink, (margin_x, (canvas.height - ink.height) // 2 + rng.randint(-3, 3)))
    alpha = np.asarray(canvas, np.float32)[..., None] / 255.0 * rng.uniform(0.85, 1.0)
    paper = _paper(canvas.size, style, np.random.default_rng(rng.getrandbits(64)))
    out = paper * (1 - alpha) + np.asarray(style.ink, np.float32) * alpha
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")


def load_texts(cfg: SynthConfig, n: int) -> list[str]:
    """`n` texts from cfg.text_file (cycled, shuffled by seed) or the built-in generator."""
    if cfg.text_file is None:
        return generate_lines(n, seed=cfg.seed)
    lines = [normalize_text(s) for s in Path(cfg.text_file).read_text(encoding="utf-8").splitlines()]
    lines = [s for s in lines if s]
    if not lines:
        raise ValueError(f"synth text_file {cfg.text_file} has no non-blank lines")
    rng = random.Random(cfg.seed)
    texts: list[str] = []
    while len(texts) < n:
        texts += rng.sample(lines, len(lines))
    return texts[:n]


def closed_vocabulary(texts: list[str], size: int) -> list[str]:
    """The `size` most common words of `texts` (ties broken alphabetically, so the list is stable)."""
    counts = Counter(word for text in texts for word in text.split())
    return sorted(counts, key=lambda word: (-counts[word], word))[:size]


def _sample_text(
    texts: list[str], k: int, level: str, rng: random.Random, vocabulary: list[str] | None = None
) -> list[str]:
    """The text rows of image `k`: its line, one word of it (of the closed vocabulary when there is
    one), or a few lines for a paragraph."""
    if level == "word":
        return [rng.choice(vocabulary or texts[k].split())]
    if level == "paragraph":
        return [texts[k], *(rng.choice(texts) for _ in range(rng.randint(2, 4)))]
    return [texts[k]]


def _settings(
    cfg: SynthConfig, level: str, fonts: list[Path], height: tuple[int, int], max_width: int
) -> dict:
    text_hash = None
    if cfg.text_file is not None:
        text_hash = hashlib.sha256(Path(cfg.text_file).read_bytes()).hexdigest()
    return {
        "version": SYNTH_VERSION,
        "level": level,
        **{k: v for k, v in asdict(cfg).items() if k != "text_file"},
        "text_sha256": text_hash,
        "fonts": [f"{p.name}:{p.stat().st_size}" for p in fonts],
        "height": list(height),
        "max_width": max_width,
    }


def _write_split(
    out: Path, split: str, writers: range, texts: list[str], fonts, cfg, level, height, max_width
):
    """Writers are numbered globally, so train and test writers (and their styles) never coincide."""
    vocabulary = closed_vocabulary(texts, cfg.vocabulary) if cfg.vocabulary else None
    for w in writers:
        style = writer_style(fonts, w, cfg.seed, height)
        font = _load_font(style)
        folder = out / split / f"{w + 1:04d}"
        folder.mkdir(parents=True)
        labels = {}
        for i in range(1, cfg.lines_per_writer + 1):
            rng = random.Random(f"line/{cfg.seed}/{split}/{w}/{i}")
            rows = _sample_text(texts, w * cfg.lines_per_writer + i - 1, level, rng, vocabulary)
            mask = _stack([render_ink(r, style, font, rng) for r in rows], gap=RENDER_SIZE // 3)
            compose(mask, style, rng, max_width).save(folder / f"{i}.jpg", quality=90)
            labels[f"{i}.jpg"] = normalize_text(" ".join(rows))
        (folder / "label.json").write_text(json.dumps(labels, ensure_ascii=False, indent=1), encoding="utf-8")


def generate_synth_dataset(
    root: Path,
    cfg: SynthConfig,
    level: str = "line",
    height: tuple[int, int] = (80, 140),
    max_width: int = 1700,
    font_dirs: list[Path] | None = None,
) -> Path:
    """Render a UIT-HWDB-layout dataset into `root` unless an identical one is already there."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not one of {', '.join(LEVELS)}")
    if cfg.vocabulary and level != "word":
        raise ValueError(
            f"a closed vocabulary (synth.vocabulary={cfg.vocabulary}) needs level=word, not {level}"
        )
    root = Path(root)
    fonts = _usable_fonts(find_fonts(font_dirs))
    settings = _settings(cfg, level, fonts, height, max_width)
    meta = root / META_FILE
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")) == settings:
        logger.info("synthetic dataset at %s is up to date", root)
        return root
    if root.exists() and any(root.iterdir()) and not meta.is_file():
        raise FileExistsError(
            f"{root} exists and is not a synthetic dataset ({META_FILE} missing); not overwriting it"
        )

    n_train, n_test = cfg.n_train_writers, cfg.n_test_writers
    texts = load_texts(cfg, (n_train + n_test) * cfg.lines_per_writer)
    args = (texts, fonts, cfg, level, height, max_width)
    with atomic_directory(root) as tmp:  # a crash never leaves a half-written dataset at root
        _write_split(tmp, "train_data", range(n_train), *args)
        _write_split(tmp, "test_data", range(n_train, n_train + n_test), *args)
        (tmp / META_FILE).write_text(json.dumps(settings, indent=1), encoding="utf-8")
    logger.info(
        "rendered %d synthetic %s images into %s", (n_train + n_test) * cfg.lines_per_writer, level, root
    )
    return root

"""The checks every dataset format applies to a sample before it is used: the image, the text, the path.

Each failed check is a skip reason; `SkipLog` records skips (or, with dataset.strict=true, raises on the
first one), so each loader reports what it left out and why.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hwocr.errors import DatasetError
from hwocr.text import normalize_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Far above any scanned page; a header claiming more is a decompression bomb or corrupt.
MAX_IMAGE_PIXELS = 60_000_000
# A longer side is no handwriting line or page (and would explode gundam-mode crops).
MAX_IMAGE_SIDE = 16_384
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
NOT_TEXT = "not_text"  # a label that is a number, a list, null...
BAD_ROW = "bad_row"  # a manifest line that is not a row: not JSON, not UTF-8, wrong field count
UNKNOWN_SPLIT = "unknown_split"  # a manifest row whose split is none of the configured split names
DUPLICATE_ROW = "duplicate_row"  # a manifest row naming an image an earlier row already named
SKIP_REASONS = (
    MISSING_IMAGE, UNLABELLED_IMAGE, CORRUPT_IMAGE, EMPTY_IMAGE, IMAGE_TOO_LARGE, BAD_LABEL_JSON, EMPTY_TEXT, UNSAFE_PATH,
    TEXT_TOO_LONG, UNREADABLE, NOT_TEXT, BAD_ROW, UNKNOWN_SPLIT, DUPLICATE_ROW,
)  # fmt: skip


@dataclass
class Skipped:
    path: str  # the file, or the row (`manifest.csv:12`, `train[7]`)
    reason: str  # one of SKIP_REASONS


class SkipLog:
    """Records skipped samples; in strict mode the first one raises, naming it."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.skipped: list[Skipped] = []

    def skip(self, path: Path | str, reason: str, detail: str = "") -> None:
        if self.strict:
            raise DatasetError(f"{path}: {reason}{': ' + detail if detail else ''} (dataset.strict=true)")
        self.skipped.append(Skipped(str(path), reason))


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with symlinks resolved, stays under `root` (already resolved)."""
    return path.resolve().is_relative_to(root)


def plain_name(name: str) -> bool:
    """A file name with no directory part, NUL, or excess length: it cannot leave its folder."""
    if not name or name in (".", "..") or "\x00" in name or Path(name).name != name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES  # undecodable bytes / lone surrogates fail
    except UnicodeEncodeError:
        return False


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


def relative_image(root: Path, value: object) -> tuple[Path | None, str, str]:
    """(the image file, "", "") for a path given relative to `root` (resolved), or (None, reason, detail).

    The path may name subfolders but, symlinks resolved, never leave `root`."""
    if not isinstance(value, str) or not value.strip():
        return None, MISSING_IMAGE, f"image path is {value!r}"
    parts = Path(value).parts
    if "\x00" in value or not all(plain_name(part) for part in parts if part not in ("/", "..")):
        return None, UNSAFE_PATH, f"image path {value[:200]!r} is not a file path"
    path = root / value
    if not inside(path, root):
        return None, UNSAFE_PATH, f"{value[:200]!r} leaves the dataset root {root}"
    if not path.is_file():
        return None, MISSING_IMAGE, f"{path} is absent"
    return path.resolve(), "", ""


def screen_text(raw: object) -> tuple[str, str, str]:
    """(the NFC-normalised text, "", "") for a usable label, else ("", reason, detail)."""
    if not isinstance(raw, str):
        return "", NOT_TEXT, f"label is {type(raw).__name__}, not a string"
    text = normalize_text(raw)
    if not text:
        return "", EMPTY_TEXT, "transcription is empty"
    if len(text) > MAX_TEXT_CHARS:
        return "", TEXT_TOO_LONG, f"{len(text)} characters, more than {MAX_TEXT_CHARS}"
    return text, "", ""

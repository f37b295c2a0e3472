"""Text normalisation shared by the data loader and the metrics.

Vietnamese can be written precomposed (NFC) or decomposed (NFD); the same word in the two forms
scores CER ~0.65 against itself, so every text is NFC-normalised before it is stored or scored.

Invisible characters are removed, on labels and predictions alike: control characters (Unicode
category Cc; tabs and newlines become spaces first), format characters (Cf: zero-width space and
joiners, BOM, soft hyphen, bidi marks) and lone surrogates (Cs). They carry no handwriting, would
count as errors nobody can see, and a lone surrogate cannot even be written as UTF-8.
"""

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs"}


def _visible(text: str) -> str:
    if text.isprintable():  # the common case: nothing to remove
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)


def natural_key(name: str) -> list:
    """Sort "2.jpg" before "10.jpg", writer "9" before "10" and bucket "20-40" before "100+"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def normalize_text(text: str) -> str:
    """NFC-normalise, drop invisible characters, collapse runs of whitespace to one space, strip."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    return _WHITESPACE.sub(" ", _visible(text)).strip()

"""Text normalisation shared by the data loader and the metrics.

Vietnamese can be written precomposed (NFC) or decomposed (NFD); the same word in the two forms
scores CER ~0.65 against itself, so every text is NFC-normalised before it is stored or scored.
"""

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC-normalise, collapse runs of whitespace to one space and strip the ends."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()

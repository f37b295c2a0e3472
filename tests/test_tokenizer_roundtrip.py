"""Vietnamese text survives DeepSeek-OCR-2's tokenizer unchanged, with the class transformers picks.

DeepSeek ships a byte-level BPE tokenizer.json labelled `"tokenizer_class": "LlamaTokenizerFast"`.
transformers 5.x once loaded such files as LlamaTokenizer, whose Metaspace pre-tokenizer dropped
spaces (huggingface/transformers#45488). For the model types of both hub layouts (deepseek-ai's
`deepseek_vl_v2`, the community conversion's `deepseek_ocr2`) 5.17 picks TokenizersBackend instead.

The first tests build a byte-level BPE labelled as DeepSeek labels theirs. The opt-in tests use
the released tokenizer's files (HWOCR_OCR2_HUB, as in tests/test_official_ocr2.py): the tokenizer
config and special tokens of deepseek-ai/DeepSeek-OCR-2, and a tokenizer.json rebuilt from
DeepSeek-V3's (same 128000-token BPE) with DeepSeek-OCR-2's added tokens, checked against ids that
`tokenizers` gave on deepseek-ai/DeepSeek-OCR's own tokenizer.json.
"""

import json
import os
import unicodedata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hwocr.config import ModelConfig
from hwocr.model.load import load_processor
from hwocr.model.official import native_processor
from hwocr.model.tiny import build_tokenizer

HUB = os.environ.get("HWOCR_OCR2_HUB", "")

VOWELS = "aăâeêioôơuưy"
TONES = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]  # none, huyền, sắc, hỏi, ngã, nặng
EVERY_TONED_VOWEL = "".join(
    unicodedata.normalize("NFC", vowel + tone) for vowel in VOWELS + VOWELS.upper() for tone in TONES
)
TEXTS = [
    'cơ chế " khuyến khích nhà đầu tư " được áp dụng',  # UIT-HWDB's spacing around quotes
    "Đường về quê hương, đẹp lắm! (năm 2026: 1.250 người; 37,5%)",
    "  hai  dấu cách, tab\tvà dòng\nmới ",
    "Tôi yêu tiếng Việt - “ngoặc kép” và ‘đơn’... hết?",
    EVERY_TONED_VOWEL,
    " ".join(EVERY_TONED_VOWEL),
    "đĐ đi Đà Nẵng",
    unicodedata.normalize("NFD", "Nghiêng ngả, đổ vỡ"),  # decomposed marks are bytes too
]


def round_trips(tokenizer) -> dict[str, str]:
    """Texts whose encode/decode (as hwocr's training and generation do it) changes them."""
    failures = {}
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.batch_decode([ids], skip_special_tokens=True)[0]
        if decoded != text:
            failures[text] = decoded
    return failures


@pytest.fixture(scope="module")
def byte_level_bpe():
    return build_tokenizer()


def deepseek_labelled(tokenizer, path: Path, model_type: str) -> Path:
    """A byte-level BPE saved with DeepSeek's tokenizer_config label and a config.json of the type."""
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "LlamaTokenizerFast"
    config_file.write_text(json.dumps(config))
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


@pytest.mark.parametrize("model_type", ["deepseek_vl_v2", "deepseek_ocr2"])
def test_deepseek_labelled_byte_level_bpe_keeps_spaces(byte_level_bpe, tmp_path, model_type):
    path = deepseek_labelled(byte_level_bpe, tmp_path, model_type)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    assert type(tokenizer).__name__ == "TokenizersBackend"
    assert type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    assert round_trips(tokenizer) == {}


def test_official_layout_processor_keeps_the_byte_level_tokenizer(byte_level_bpe, tmp_path):
    processor = native_processor(str(deepseek_labelled(byte_level_bpe, tmp_path, "deepseek_vl_v2")), None)
    assert type(processor.tokenizer).__name__ == "TokenizersBackend"
    assert round_trips(processor.tokenizer) == {}


needs_hub = pytest.mark.skipif(
    not os.path.isfile(os.path.join(HUB, "tokenizer.json")),
    reason="set HWOCR_OCR2_HUB to a folder with DeepSeek-OCR-2's tokenizer files",
)

# `tokenizers` on deepseek-ai/DeepSeek-OCR's tokenizer.json, add_special_tokens=False, as recorded
# in a public test suite (the "brain" project's DeepSeek-OCR tokenizer test, Apache-2.0)
HF_VECTORS = {
    "Hello": [19923],
    "The capital of France is": [671, 6102, 294, 8760, 344],
    "\n<|grounding|>Convert the document to markdown.": [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16],
    "\nFree OCR.": [201, 21431, 126041, 16],
    "<image>\n<|grounding|>Convert the document to markdown.": [
        128815,
        201,
        128820,
        21842,
        270,
        4940,
        304,
        2121,
        7919,
        16,
    ],
    "12345": [6895, 1883],
    "year 2026, price $1299.99": [24821, 223, 939, 24, 14, 5220, 957, 9603, 27, 16, 1977],
    "日本語のテキスト": [88768, 1576, 17383, 20367, 24552],
    "  spaced": [223, 48914],
    "def main():\n\tpass": [3465, 1840, 15536, 200, 9762],
}


@pytest.fixture(scope="module")
def released_tokenizer():
    processor = load_processor(ModelConfig(name="deepseek_ocr2", source=HUB, image_mode="dynamic"))
    return processor.tokenizer


@needs_hub
def test_released_tokenizer_class_and_ids(released_tokenizer):
    assert type(released_tokenizer).__name__ == "TokenizersBackend"
    assert (released_tokenizer.bos_token_id, released_tokenizer.eos_token_id) == (0, 1)
    assert released_tokenizer.convert_tokens_to_ids("<image>") == 128815
    got = {text: released_tokenizer(text, add_special_tokens=False)["input_ids"] for text in HF_VECTORS}
    assert got == HF_VECTORS


@needs_hub
def test_released_tokenizer_round_trips_vietnamese(released_tokenizer):
    assert round_trips(released_tokenizer) == {}

"""Build random-weight GLM-OCR checkpoints offline: a Vietnamese byte-level BPE with GLM's special
tokens, GLM-OCR's chat template and image processor, and the tiny (tests, demo) or the released
(GPU benchmarks) shapes.

They are saved with `save_pretrained` like a hub checkpoint, so the rest of hwocr loads them through
the same code path as zai-org/GLM-OCR.
"""

from importlib import resources
from pathlib import Path

import torch
from transformers import GlmOcrForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

from hwocr.model.glm_ocr.architecture import FULL_VOCAB, full_size_config, tiny_config
from hwocr.model.glm_ocr.processor import IMAGE_TOKEN, VIDEO_END, VIDEO_START, VIDEO_TOKEN, GlmOcrProcessor
from hwocr.model.random_weights import ensure_built, random_model, save_checkpoint
from hwocr.model.tiny import byte_level_bpe

EOS, USER = "<|endoftext|>", "<|user|>"
# GLM-OCR's special tokens that its chat template and processor use, <|endoftext|> first (EOS and pad)
SPECIAL_TOKENS = [
    EOS,
    "[gMASK]",
    "<sop>",
    "<|system|>",
    USER,
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    VIDEO_START,
    VIDEO_END,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    "<think>",
    "</think>",
]
# The tiny view's pixel budget: smart_resize bounds (2 frames x height x width) to these, so a view
# is at most 64x64 pixels (64 image tokens at patch 4 with a 2x2 merge) and at least 16x16.
TINY_PIXELS = {"shortest_edge": 2 * 16 * 16, "longest_edge": 2 * 64 * 64}
# zai-org/GLM-OCR's preprocessor_config.json: patch 14, and these bounds.
RELEASED_PIXELS = {"shortest_edge": 12544, "longest_edge": 9633792}
# Bump when the built checkpoint changes, so that cached tiny checkpoints are rebuilt.
TINY_BUILD = 1


def chat_template() -> str:
    return resources.files("hwocr.model.glm_ocr").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """GLM's special tokens on the byte-level BPE. Like GLM-OCR's tokenizer, it adds no special
    tokens of its own: the chat template writes [gMASK]<sop>."""
    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(SPECIAL_TOKENS, seed),
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )


def build_processor(size: dict, patch_size: int, seed: int = 0) -> GlmOcrProcessor:
    image_processor = Glm46VImageProcessorPil(
        size=size, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    return GlmOcrProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(seed), chat_template=chat_template()
    )


def token_ids(tokenizer) -> dict:
    """The config's token ids (architecture.FULL_TOKEN_IDS' keys) in this tokenizer."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": [ids(EOS), ids(USER)],
        "image_token_id": ids(IMAGE_TOKEN),
        "video_token_id": ids(VIDEO_TOKEN),
        "image_start_token_id": ids("<|begin_of_image|>"),
        "image_end_token_id": ids("<|end_of_image|>"),
        "video_start_token_id": ids(VIDEO_START),
        "video_end_token_id": ids(VIDEO_END),
    }


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random-weight tiny GLM-OCR checkpoint (model + processor) to `path`, atomically."""
    torch.manual_seed(seed)
    processor = build_processor(TINY_PIXELS, patch_size=4, seed=seed)
    config = tiny_config(token_ids(processor.tokenizer), vocab_size=len(processor.tokenizer))
    return save_random_checkpoint(path, config, processor, build=TINY_BUILD)


def build_full_size_checkpoint(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> Path:
    """The released shapes and vocabulary size (the output head's cost) with random weights, the
    released image processor, and the offline tokenizer's special-token ids: for measuring memory
    and speed without a download."""
    torch.manual_seed(0)
    processor = build_processor(RELEASED_PIXELS, patch_size=14)
    config = full_size_config(token_ids(processor.tokenizer))
    config.text_config.vocab_size = FULL_VOCAB
    return save_random_checkpoint(path, config, processor, dtype=dtype, device=device)


def save_random_checkpoint(
    path: Path,
    config,
    processor: GlmOcrProcessor,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    build: int | None = None,
) -> Path:
    """Random weights for `config` saved with `processor`, atomically, like a hub checkpoint. Seed
    torch before calling: the weights are drawn here."""
    model = random_model(GlmOcrForConditionalGeneration, config, dtype, device)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return save_checkpoint(path, model, processor, build)


def ensure_tiny_checkpoint(path: Path) -> Path:
    """The tiny checkpoint at `path`, built (or rebuilt, when an older hwocr built it) on demand."""
    return ensure_built(path, TINY_BUILD, build_tiny_checkpoint)

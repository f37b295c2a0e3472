"""Build the tiny GLM-OCR checkpoint offline: random weights, a Vietnamese byte-level BPE with GLM's
special tokens, GLM-OCR's chat template and image processor at a small resolution.

It is saved with `save_pretrained` like a hub checkpoint, so the rest of hwocr loads it through the
same code path as zai-org/GLM-OCR.
"""

import logging
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GlmOcrForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

from hwocr.data.vietnamese import generate_lines
from hwocr.io import atomic_directory
from hwocr.model.glm.architecture import tiny_config
from hwocr.model.glm.processor import IMAGE_TOKEN, VIDEO_END, VIDEO_START, VIDEO_TOKEN, GlmOcrProcessor

log = logging.getLogger(__name__)

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
TOKENIZER_VOCAB = 1024
TOKENIZER_TRAINING_LINES = 4000
# The view's pixel budget: smart_resize bounds (2 frames x height x width) to these, so a view is at
# most 64x64 pixels (64 image tokens at patch 4 with a 2x2 merge) and at least 16x16.
MIN_PIXELS, MAX_PIXELS = 2 * 16 * 16, 2 * 64 * 64
# Bump when the built checkpoint changes, so that cached tiny checkpoints are rebuilt.
TINY_BUILD = 1
BUILD_MARKER = "hwocr_tiny_build.txt"


def chat_template() -> str:
    return resources.files("hwocr.model.glm").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE on generated Vietnamese text; GLM's special tokens first. Like GLM-OCR's, it
    adds no special tokens of its own: the chat template writes [gMASK]<sop>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(generate_lines(TOKENIZER_TRAINING_LINES, seed=seed), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )


def build_processor(seed: int = 0) -> GlmOcrProcessor:
    image_processor = Glm46VImageProcessorPil(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
    )
    return GlmOcrProcessor(image_processor=image_processor, tokenizer=build_tokenizer(seed), chat_template=chat_template())


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
    processor = build_processor(seed)
    ids = token_ids(processor.tokenizer)
    model = GlmOcrForConditionalGeneration(tiny_config(ids, vocab_size=len(processor.tokenizer)))
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / BUILD_MARKER).write_text(str(TINY_BUILD))
    log.info("built a random-weight GLM-OCR (%d parameters) at %s", model.num_parameters(), path)
    return path


def ensure_tiny_checkpoint(path: Path) -> Path:
    """The tiny checkpoint at `path`, built (or rebuilt, when an older hwocr built it) on demand."""
    marker = path / BUILD_MARKER
    if not marker.is_file() or marker.read_text().strip() != str(TINY_BUILD):
        build_tiny_checkpoint(path)
    return path

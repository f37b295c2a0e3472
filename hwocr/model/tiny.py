"""Build the tiny DeepSeek-OCR-2 checkpoint offline: random weights + a Vietnamese byte-level BPE.

It is saved with `save_pretrained` like a hub checkpoint, so the rest of hwocr loads it through the
same code path as the real model.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2ImageProcessorPil,
    DeepseekOcr2Processor,
    PreTrainedTokenizerFast,
)

from hwocr.data.vietnamese import generate_lines
from hwocr.model.architecture import tiny_config
from hwocr.model.live_vision import live_vision_weights
from hwocr.model.random_weights import ensure_built, random_model, save_checkpoint

BOS, EOS, PAD, IMAGE = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"
TOKENIZER_VOCAB = 1024
TOKENIZER_TRAINING_LINES = 4000
# Bump when the built weights change, so that cached tiny checkpoints are rebuilt.
TINY_BUILD = 2


def byte_level_bpe(special_tokens: list[str], seed: int = 0) -> Tokenizer:
    """Byte-level BPE on generated Vietnamese text: every byte is reachable, common syllables merge.
    `special_tokens` get the first ids, in order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(generate_lines(TOKENIZER_TRAINING_LINES, seed=seed), trainer)
    return tokenizer


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """DeepSeek-OCR-2's special tokens on the byte-level BPE."""
    tokenizer = byte_level_bpe([BOS, EOS, PAD, IMAGE], seed)  # bos 0 and eos 1 as in the real checkpoint
    # The real tokenizer prepends BOS; the processor relies on the tokenizer for it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
    )


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random-weight tiny checkpoint (model + processor) to `path`, atomically."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = DeepseekOcr2ImageProcessorPil(size={"height": 128, "width": 128}, tile_size=96)
    return save_random_checkpoint(path, config, tokenizer, image_processor, patch_size=2, build=TINY_BUILD)


def save_random_checkpoint(
    path: Path,
    config,
    tokenizer: PreTrainedTokenizerFast,
    image_processor,
    patch_size: int,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    build: int | None = None,
) -> Path:
    """Random weights for `config`, wired to `tokenizer`'s special tokens, saved atomically like a
    hub checkpoint (model + processor), so hwocr loads it through from_pretrained as the real one.
    Seed torch before calling: the weights are drawn here."""
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    model = random_model(DeepseekOcr2ForConditionalGeneration, config, dtype, device)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    live_vision_weights(model)
    processor = DeepseekOcr2Processor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, downsample_ratio=4
    )
    return save_checkpoint(path, model, processor, build)


def ensure_tiny_checkpoint(path: Path) -> Path:
    """The tiny checkpoint at `path`, built (or rebuilt, when an older hwocr built it) on demand."""
    return ensure_built(path, TINY_BUILD, build_tiny_checkpoint)

"""PaddleOCR-VL built offline: the tiny test checkpoint and the full-size shapes for benchmarks.

The tiny one has PaddleOCR-VL's architecture at a few hundred thousand parameters, random weights,
a Vietnamese byte-level BPE with PaddleOCR-VL's special tokens, and the checkpoint's chat template
(as its hub repo's chat_template.jinja renders an OCR turn). It is saved with save_pretrained like a
hub checkpoint, so hwocr loads it through the same code path as the real model.
"""

from pathlib import Path

import torch
from transformers import (
    PaddleOCRVLConfig,
    PaddleOCRVLForConditionalGeneration,
    PaddleOCRVLImageProcessorPil,
    PaddleOCRVLProcessor,
    PreTrainedTokenizerFast,
)

from hwocr.model.random_weights import TINY_DECODER, ensure_built, random_model, save_checkpoint
from hwocr.model.tiny import byte_level_bpe

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
CLS = "<|begin_of_sentence|>"  # what the chat template starts with
IMAGE_START, IMAGE, IMAGE_END = "<|IMAGE_START|>", "<|IMAGE_PLACEHOLDER|>", "<|IMAGE_END|>"
SPECIAL_TOKENS = [
    UNK,
    BOS,
    EOS,
    CLS,
    IMAGE_START,
    IMAGE,
    IMAGE_END,
]  # ids 0..: pad 0, bos 1, eos 2 as the real
# An OCR turn as PaddleOCR-VL's chat template renders it: the class token, "User: ", the image, the
# prompt, a newline, "Assistant:\n", and the answer closed by the EOS token.
CHAT_TEMPLATE = (
    "{{- cls_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'User: ' -}}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}"
    "{{- '<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>' -}}"
    "{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant:\\n' -}}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:\\n' -}}{%- endif -%}"
)
PATCH = 8  # the real model's is 14; 8 keeps a 128 px image at 16 x 16 patches
# Bump when the built weights change, so that cached tiny checkpoints are rebuilt.
TINY_BUILD = 1


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(SPECIAL_TOKENS, seed),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=UNK,
        cls_token=CLS,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> PaddleOCRVLConfig:
    ids = tokenizer.convert_tokens_to_ids
    return PaddleOCRVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16 * PATCH,  # a 16 x 16 table of learned positions, interpolated per image
            "patch_size": PATCH,
        },
        text_config={
            "vocab_size": len(tokenizer),
            **TINY_DECODER,
            # multimodal rotary sections (temporal, height, width) must cover head_dim / 2
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=ids(IMAGE),
        vision_start_token_id=ids(IMAGE_START),
        vision_end_token_id=ids(IMAGE_END),
    )


def full_size_config(tokenizer: PreTrainedTokenizerFast) -> PaddleOCRVLConfig:
    """PaddleOCR-VL-0.9B's shapes (transformers' defaults are the released checkpoint's: the real
    vocabulary size, so the output head costs what it costs), `tokenizer`'s special token ids."""
    config = PaddleOCRVLConfig()
    ids = tokenizer.convert_tokens_to_ids
    config.image_token_id = ids(IMAGE)
    config.vision_start_token_id, config.vision_end_token_id = ids(IMAGE_START), ids(IMAGE_END)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    return config


def build_full_checkpoint(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> Path:
    """Random-weight PaddleOCR-VL at full size with the released image processor's settings, saved
    like a hub checkpoint, for the GPU benchmarks (benchmarks/bench.py --model paddleocr_vl)."""
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    return save_random_checkpoint(
        path, full_size_config(tokenizer), tokenizer, PaddleOCRVLImageProcessorPil(), dtype, device
    )


def image_processor(patch_size: int = PATCH, max_side: int = 128) -> PaddleOCRVLImageProcessorPil:
    factor = patch_size * 2  # the projector merges 2 x 2 patches
    return PaddleOCRVLImageProcessorPil(
        patch_size=patch_size, merge_size=2, min_pixels=4 * factor * factor, max_pixels=max_side * max_side
    )


@torch.no_grad()
def live_vision_weights(model: PaddleOCRVLForConditionalGeneration) -> None:
    """PyTorch's default init for the vision side's linear and conv layers, where transformers' init
    (std 0.02, for a model that will load trained weights) leaves random image features nearly alike
    (hwocr/model/live_vision.py says why a random model must see its images)."""
    for part in (model.model.visual, model.model.projector):
        for module in part.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.reset_parameters()


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a random-weight tiny checkpoint (model + processor) to `path`, atomically."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed)
    return save_random_checkpoint(
        path, tiny_config(tokenizer), tokenizer, image_processor(), build=TINY_BUILD
    )


def save_random_checkpoint(
    path: Path, config, tokenizer, image_processor, dtype=None, device="cpu", build: int | None = None
) -> Path:
    """Random weights for `config`, saved with `tokenizer`, `image_processor` and the chat template
    like a hub checkpoint. Seed torch before calling: the weights are drawn here."""
    model = random_model(PaddleOCRVLForConditionalGeneration, config, dtype, device)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    live_vision_weights(model)
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    return save_checkpoint(path, model, processor, build)


def ensure_tiny_checkpoint(path: Path) -> Path:
    """The tiny checkpoint at `path`, built (or rebuilt, when an older hwocr built it) on demand."""
    return ensure_built(path, TINY_BUILD, build_tiny_checkpoint)

"""The image mode set on a DeepSeek-OCR-2 processor, and hwocr's own settings for calling it.

The processor is transformers' object; hwocr's settings for calling it (the per-call arguments, the
small mode's squash, the 8-bit pixel table) are a ProcessorSetup. `set_up_processor` makes one when
the processor is loaded and keeps it beside the processor, keyed weakly, so it goes when the
processor goes; a copy made with `copy_processor` shares it. Whatever must survive pickling (the
training collator in DataLoader workers) holds the ProcessorSetup itself.
"""

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hwocr.config import ModelConfig
from hwocr.errors import ModelLoadError


@dataclass
class ProcessorSetup:
    call_kwargs: dict  # passed on every call (see set_up_processor)
    # how prompts and images become inputs: "deepseek" (processor.py: a plain-text prompt, DeepSeek's
    # views and BOS) or "chat" (chat.py: the model card's chat template)
    style: str = "deepseek"
    squash: int | None = None  # small mode: images resized to this square side first
    # chat style: (processor, image, prompt, answer) -> one training example (chat.py's layout);
    # None = chat.chat_training_example, the answer rendered as the template's assistant turn
    training_example: Callable | None = None
    # pixels.py's lookup table for 8-bit views: unset until first asked for, None if unusable
    pixel_table: torch.Tensor | None = field(default=None, repr=False)
    pixel_table_built: bool = False


_SETUPS: "weakref.WeakKeyDictionary[object, ProcessorSetup]" = weakref.WeakKeyDictionary()


def image_mode_settings(cfg: ModelConfig) -> dict:
    """Image-processor settings for a mode.

    The processor counts image tokens from its *instance* size and tile_size, so the mode is set on
    the processor itself rather than passed per call (a per-call size gives "Image features and
    image tokens do not match").
    """
    if cfg.image_mode == "base":
        side, tile, crop = cfg.image_size, cfg.image_size, False
    elif cfg.image_mode == "small":
        side, tile, crop = cfg.tile_size, cfg.tile_size, False
    else:  # dynamic: a global view plus tile crops of wide images, as DeepSeek's code does
        side, tile, crop = cfg.image_size, cfg.tile_size, True
    return {"size": {"height": side, "width": side}, "tile_size": tile, "crop_to_patches": crop}


def set_up_processor(processor, cfg: ModelConfig):
    """A freshly loaded DeepSeek-OCR-2 processor set to `cfg`'s image mode, with its setup kept."""
    settings = image_mode_settings(cfg)
    # size and tile_size are read from the instance when image tokens are counted...
    processor.image_processor.size = settings["size"]
    processor.image_processor.tile_size = settings["tile_size"]
    processor.image_processor.crop_to_patches = settings["crop_to_patches"]
    # ...but the processor's class-level default crop_to_patches=True beats the instance attribute,
    # so it must be passed on every call: encode() (processor.py) does that. The tokenizer adds no special
    # tokens: encode() puts exactly one BOS in front, as DeepSeek's code does (bos.py).
    if processor.tokenizer.bos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer of model.source={cfg.source!r} names no BOS token; DeepSeek-OCR-2 prompts "
            "start with one (DeepSeek's code hard-codes id 0)"
        )
    _SETUPS[processor] = ProcessorSetup(
        call_kwargs={"crop_to_patches": settings["crop_to_patches"], "add_special_tokens": False},
        # infer(image_size=768, crop_mode=False) squashes; base (image_size 1024) pads as the port does
        squash=settings["size"]["height"] if cfg.image_mode == "small" else None,
    )
    processor.tokenizer.padding_side = "left"  # batched generation
    return processor


def set_up_chat_processor(processor, training_example: Callable | None = None):
    """A freshly loaded chat-template processor (chat.py), its tokenizer padding on the left for
    batched generation. `training_example` replaces chat.chat_training_example for a model whose
    template does not render the answer as its generation ends (GLM-OCR's)."""
    if processor.tokenizer.eos_token_id is None:
        raise ModelLoadError(
            "the processor's tokenizer names no EOS token: nothing would end a transcription"
        )
    _SETUPS[processor] = ProcessorSetup(call_kwargs={}, style="chat", training_example=training_example)
    processor.tokenizer.padding_side = "left"
    return processor


def setup_of(processor) -> ProcessorSetup | None:
    """The setup set_up_processor gave `processor`; None for any other processor (v1's among them)."""
    return _SETUPS.get(processor)


def copy_processor(processor):
    """A deep copy of `processor` with the same setup (its pixel table shared, not rebuilt)."""
    twin = copy.deepcopy(processor)
    if (setup := setup_of(processor)) is not None:
        _SETUPS[twin] = setup
    return twin

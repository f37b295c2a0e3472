"""Images and prompts through the processor, as DeepSeek's own code prepares them."""

from collections.abc import Sequence

from transformers import BatchFeature, ProcessorMixin

from hwocr.data import Sample, load_image
from hwocr.inputs.bos import with_one_bos
from hwocr.inputs.chat import encode_chat
from hwocr.inputs.pixels import RAW_PIXELS, supports_raw_pixels
from hwocr.inputs.settings import ProcessorSetup, setup_of
from hwocr.inputs.views import follow_pil_centering, squash, upright


def encode(
    processor: ProcessorMixin,
    images: list,
    texts: list[str],
    raw_pixels: bool = False,
    setup: ProcessorSetup | None = None,
    **kwargs,
):
    """Run the processor with its image mode, on the views DeepSeek's own code builds where the
    port's differ (views.py); for DeepSeek-OCR-2, each prompt starts with exactly one BOS (bos.py;
    v1's Ocr1Processor puts its own BOS first). A chat-template processor (set_up_chat_processor)
    gets each prompt as the user's text beside its image, through its chat template (chat.py).

    raw_pixels: DeepSeek-OCR-2's views stay 8-bit, for pixels.py to normalise on the device.
    setup: the processor's settings when the caller holds them (a collator unpickled in a DataLoader
    worker); by default those set_up_processor kept for it."""
    images = upright(images)
    if setup is None:
        setup = setup_of(processor)  # still None: v1's processor, which needs none of this
    if setup is not None and setup.style == "chat":
        return encode_chat(processor, images, texts, **kwargs)
    if setup is not None and setup.squash:
        images = squash(images, setup.squash)
    if raw_pixels and supports_raw_pixels(processor, setup):
        kwargs = {**kwargs, **RAW_PIXELS}
    encoded = processor(images=images, text=texts, **(setup.call_kwargs if setup else {}), **kwargs)
    if setup is not None:
        side = processor.image_processor.size["height"]  # the global view's side in every hwocr mode
        encoded["pixel_values"] = follow_pil_centering(
            encoded["pixel_values"], [im.size for im in images], side
        )
        tokenizer = processor.tokenizer
        encoded = with_one_bos(
            encoded, tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.padding_side
        )
    return encoded


def encode_samples(processor, samples: Sequence[Sample], prompt: str) -> BatchFeature:
    """Generation's inputs for `samples`: 8-bit views where supported, prompts left-padded."""
    images = [load_image(sample.image) for sample in samples]
    prompts = [prompt] * len(samples)
    return encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")

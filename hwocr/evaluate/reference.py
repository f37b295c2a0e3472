"""The reference evaluation path: each batch through the processor, then transformers' `generate`.

Greedy decoding with the repetition guard as a logits processor, nothing else. The fast path
(evaluate/fast/) must produce the same tokens (tests/test_evaluation_paths.py).
"""

from collections.abc import Sequence
from concurrent.futures import Future

import torch
from transformers import BatchFeature, LogitsProcessorList

from hwocr.data import Sample, load_image
from hwocr.model.load import encode


def encode_samples(processor, samples: Sequence[Sample], prompt: str) -> BatchFeature:
    """The processor's inputs for `samples`: 8-bit views where supported, prompts left-padded."""
    images = [load_image(sample.image) for sample in samples]
    prompts = [prompt] * len(samples)
    return encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")


class InlineEncoder:
    """The fast path's BatchEncoder interface, encoding each batch in the caller's thread."""

    pin = False  # nothing page-locked

    def __init__(self, processor, prompt: str):
        self.processor, self.prompt = processor, prompt

    def __enter__(self) -> "InlineEncoder":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, samples: Sequence[Sample]) -> Future:
        future: Future = Future()
        try:
            future.set_result(encode_samples(self.processor, samples, self.prompt))
        except Exception as error:  # raised where the caller asks for the result, as a thread's would be
            future.set_exception(error)
        return future


def reference_generate(
    model: torch.nn.Module,
    inputs,
    max_new_tokens: int,
    tokenizer,
    logits_processor: LogitsProcessorList,
    **generate_kwargs,
) -> torch.LongTensor:
    """Prompt and generated ids, (batch, prompt + generated): transformers' greedy `generate`."""
    return model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        logits_processor=logits_processor,
        **generate_kwargs,
    )

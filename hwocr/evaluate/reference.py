"""The reference evaluation path: each batch encoded (hwocr/inputs/), then transformers' `generate`.

Greedy decoding with the repetition guard as a logits processor, nothing else. The fast path
(evaluate/fast/) must produce the same tokens (tests/test_evaluation_paths.py).
"""

from collections.abc import Callable, Sequence

import torch
from transformers import BatchFeature, LogitsProcessorList

from hwocr.data import Sample
from hwocr.inputs import encode_samples


class InlineEncoder:
    """The fast path's BatchEncoder interface, each batch encoded in the caller's thread when the
    caller asks for it."""

    pin = False  # nothing page-locked

    def __init__(self, processor, prompt: str):
        self.processor, self.prompt = processor, prompt

    def __enter__(self) -> "InlineEncoder":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, samples: Sequence[Sample]) -> "_OnRequest":
        return _OnRequest(lambda: encode_samples(self.processor, list(samples), self.prompt))


class _OnRequest:
    """A Future's `result()`, computed when first called."""

    def __init__(self, compute: Callable[[], BatchFeature]):
        self.compute = compute
        self.value: BatchFeature | None = None

    def result(self) -> BatchFeature:
        if self.value is None:
            self.value = self.compute()
        return self.value


def reference_generate(
    model: torch.nn.Module,
    inputs,
    max_new_tokens: int,
    tokenizer,
    logits_processor: LogitsProcessorList,
    stop_ids: tuple[int, ...] | None = None,
    **generate_kwargs,
) -> torch.LongTensor:
    """Prompt and generated ids, (batch, prompt + generated): transformers' greedy `generate`."""
    return model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(stop_ids) if stop_ids else tokenizer.eos_token_id,
        logits_processor=logits_processor,
        **generate_kwargs,
    )

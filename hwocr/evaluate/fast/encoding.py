"""Encode transcription batches (hwocr.inputs.encode_samples) beside the GPU.

A thread beside transcribe's main thread encodes the next batch while the GPU works. With the
compiled tower and graphed decoding, one processor call per batch could not keep up on the GPU host
measured, so `threads` > 1 splits each batch into slices, encodes them in parallel (PIL's resize,
most of the work, releases the GIL) and joins them into the inputs one processor call would give,
bit for bit (tests/test_encoding.py). On CUDA the joined batches are page-locked, by registration
(prefer_registered_page_locking), and handed back after each transcription (empty_pinned_cache).
benchmarks/README.md has the timelines, thread counts and page-locking times.
"""

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch.profiler import record_function
from transformers import BatchFeature

from hwocr import trace_markers as markers
from hwocr.compat import empty_host_cache, set_allocator_settings
from hwocr.data import Sample
from hwocr.inputs import copy_processor, encode_samples, setup_of, supports_raw_pixels

# the keys a DeepSeek-OCR-2 processor returns; token rows are padded, the rest stacked per image
TOKEN_KEYS = ("input_ids", "attention_mask")
STACKED_KEYS = ("pixel_values", "pixel_values_local", "num_local_patches")


class BatchEncoder:
    """`submit(samples)` -> a Future of their inputs, encoded one batch at a time beside the caller.

    threads > 1: each batch in that many slices, encoded in parallel and joined (DeepSeek-OCR-2
    processors; others are encoded whole, never page-locked). pin: joined batches in page-locked
    memory, so that their copy to the GPU is asynchronous; `self.pin` says whether any will be.
    Use as a context manager."""

    def __init__(self, processor, prompt: str, threads: int = 1, pin: bool = False):
        self.processor, self.prompt = processor, prompt
        self.batches = ThreadPoolExecutor(max_workers=1)
        self.copies: list = []
        self.slicers = None
        if joinable(processor):
            supports_raw_pixels(processor)  # its pixel table is built once and copied with it
            # a processor per thread, apart from the caller's too: each call may reset its fast
            # tokenizer's padding settings while the caller decodes with it
            self.copies = [copy_processor(processor) for _ in range(max(threads, 1))]
        if threads > 1 and self.copies:
            self.slicers = ThreadPoolExecutor(max_workers=threads)
        self.pin = pin and self.slicers is not None  # only joined batches are page-locked
        if self.pin:
            prefer_registered_page_locking()

    def __enter__(self) -> "BatchEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.batches.shutdown(wait=True, cancel_futures=True)
        if self.slicers is not None:
            self.slicers.shutdown(wait=True, cancel_futures=True)

    def submit(self, samples: Sequence[Sample]) -> Future:
        if self.slicers is None:
            return self.batches.submit(self._whole, list(samples))
        return self.batches.submit(self._in_slices, list(samples))

    def _whole(self, samples: list[Sample]) -> BatchFeature:
        with record_function(markers.ENCODE_BATCH):
            return encode_samples(self.copies[0] if self.copies else self.processor, samples, self.prompt)

    def _in_slices(self, samples: list[Sample]) -> BatchFeature:
        size = -(-len(samples) // len(self.copies))
        slices = [samples[i : i + size] for i in range(0, len(samples), size)]  # fewer when small
        with record_function(markers.ENCODE_SLICES):
            parts = self.slicers.map(
                lambda processor, part: dict(encode_samples(processor, part, self.prompt)),
                self.copies[: len(slices)],
                slices,
            )
            return join_slices(list(parts), self.processor.tokenizer, self.pin)


# torch page-locks a new block with cudaHostAlloc unless told to malloc it, fault its pages in with
# threads and register it: several times faster for a crop-mode batch's GBs (benchmarks/README.md).
# The setting is the process's: training's page-locked batches go the same way.
REGISTERED_PAGE_LOCKING = "pinned_use_cuda_host_register:True,pinned_num_register_threads:8"


def prefer_registered_page_locking() -> None:
    """Have torch page-lock by registering, unless the user's allocator settings
    (PYTORCH_CUDA_ALLOC_CONF, PYTORCH_ALLOC_CONF) say how. Set at run time: torch has read those
    variables by the time hwocr runs."""
    names = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
    if not torch.cuda.is_available() or any("pinned_" in os.environ.get(name, "") for name in names):
        return
    set_allocator_settings(REGISTERED_PAGE_LOCKING)


def empty_pinned_cache() -> None:
    """Hand the page-locked blocks that joined batches used back to the system (GBs in crop mode),
    so that training after base evaluation does not hold them."""
    empty_host_cache()


def joinable(processor) -> bool:
    """Whether join_slices knows every key this processor returns (DeepSeek-OCR-2's)."""
    return setup_of(processor) is not None and type(processor).__name__ == "DeepseekOcr2Processor"


def join_slices(parts: list[dict], tokenizer, pin: bool = False) -> BatchFeature:
    """Slices of a batch, encoded apart, as one processor call returns them: token rows padded
    again to the longest on the tokenizer's side, per-image tensors concatenated. pin: into
    page-locked memory."""
    unknown = set(parts[0]) - set(TOKEN_KEYS) - set(STACKED_KEYS)
    if unknown:
        raise ValueError(f"cannot join processor outputs with keys {sorted(unknown)}")
    length = max(part["input_ids"].shape[1] for part in parts)
    joined = {}
    with record_function(markers.JOIN_PINNED if pin else markers.JOIN_PAGEABLE):
        for key in parts[0]:
            values = [part[key] for part in parts]
            if key in TOKEN_KEYS:
                fill = tokenizer.pad_token_id if key == "input_ids" else 0
                values = [_pad(v, length, fill, tokenizer.padding_side) for v in values]
            shape = (sum(v.shape[0] for v in values), *values[0].shape[1:])
            out = torch.empty(shape, dtype=values[0].dtype, pin_memory=pin)
            joined[key] = torch.cat(values, out=out)
    return BatchFeature(data=joined)


def _pad(rows: torch.Tensor, length: int, fill: int, side: str) -> torch.Tensor:
    missing = length - rows.shape[1]
    if not missing:
        return rows
    pad = (missing, 0) if side == "left" else (0, missing)
    return torch.nn.functional.pad(rows, pad, value=fill)

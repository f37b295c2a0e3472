"""Encode transcription batches (images read, the processor run) beside the GPU.

By default a thread beside transcribe's main thread encodes the next batch while the GPU works.
On the GPU host measured, that thread ran at a fraction of its speed alone, and with the compiled
tower and graphed decoding the main thread waited for it (benchmarks/README.md has the
timelines). With `workers` > 0, worker processes encode instead, each with its own interpreter
and one slice of the batch; their tensors come back through shared memory and the thread joins
the slices into the inputs one processor call would give, bit for bit (tests/test_encoding.py).
The workers start once the thread has encoded the first batch, the thread encodes until they are
ready, and they stay for the next transcription (tuned after base evaluation): their start took
15-20 s there and slowed the thread meanwhile, so the first transcription gains nothing.
"""

import copy
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
from transformers import BatchFeature

from hwocr.data import Sample, load_image
from hwocr.model.load import encode
from hwocr.model.pixels import supports_raw_pixels

log = logging.getLogger(__name__)

# the keys a DeepSeek-OCR-2 processor returns; token rows are padded, the rest stacked per image
TOKEN_KEYS = ("input_ids", "attention_mask")
STACKED_KEYS = ("pixel_values", "pixel_values_local", "num_local_patches")


def encode_samples(processor, samples: Sequence[Sample], prompt: str) -> BatchFeature:
    """The processor's inputs for `samples`: 8-bit views where supported, prompts left-padded."""
    images = [load_image(sample.image) for sample in samples]
    prompts = [prompt] * len(samples)
    return encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")


class WorkerPool:
    """Spawned processes holding a copy of `processor`; `ready` once every one has started."""

    def __init__(self, processor, workers: int):
        self.processor, self.workers = processor, workers  # the processor kept: it is the pool's key
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),  # fork is unsafe beside CUDA and threads
            initializer=_start_worker,
            initargs=(processor,),
        )
        try:
            self.started = [self.executor.submit(_ready) for _ in range(workers)]
        except BaseException:
            self.close()
            raise

    def serves(self, processor, workers: int) -> bool:
        return self.processor is processor and self.workers == workers

    @property
    def ready(self) -> bool:
        return all(started.done() for started in self.started)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


_POOL: dict[str, WorkerPool] = {}  # one pool per process, kept for the next transcription


def start_workers(processor, workers: int) -> WorkerPool:
    """The pool for `processor` (shared by base and tuned evaluation), started if need be."""
    pool = _POOL.get("pool")
    if pool is not None and pool.serves(processor, workers):
        return pool
    if pool is not None:
        pool.close()
        del _POOL["pool"]
    _POOL["pool"] = pool = WorkerPool(processor, workers)
    return pool


class BatchEncoder:
    """`submit(samples)` -> a Future of their inputs. Use as a context manager."""

    def __init__(self, processor, prompt: str, workers: int = 0, pin: bool = False, threads: int = 1):
        self.processor, self.prompt, self.pin = processor, prompt, pin
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.workers = workers if workers > 0 and joinable(processor) else 0
        self.slicers = None
        if threads > 1 and not self.workers and joinable(processor):
            supports_raw_pixels(processor)  # the pixel table, built once and copied with the processor
            # one processor per slice: a fast tokenizer is not safe to call from two threads at once
            self.copies = [copy.deepcopy(processor) for _ in range(threads)]
            self.slicers = ThreadPoolExecutor(max_workers=threads)

    def __enter__(self) -> "BatchEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.thread.shutdown(wait=True, cancel_futures=True)
        if self.slicers is not None:
            self.slicers.shutdown(wait=True, cancel_futures=True)

    def submit(self, samples: Sequence[Sample]) -> Future:
        return self.thread.submit(self._encode, list(samples))

    def _encode(self, samples: list[Sample]) -> BatchFeature:
        pool = _POOL.get("pool") if self.workers else None
        if pool is not None and pool.serves(self.processor, self.workers):
            if pool.ready:
                return self._in_workers(pool, samples)
            return self._here(samples)  # still starting
        if self.slicers is not None:
            return self._in_threads(samples)
        inputs = self._here(samples)
        if self.workers:  # started after this batch: their start would slow its encoding
            try:
                start_workers(self.processor, self.workers)
            except Exception as error:  # noqa: BLE001 - e.g. a processor that cannot be pickled
                log.warning("encoding worker processes could not start (%s); encoding in a thread", error)
                self.workers = 0
        return inputs

    def _here(self, samples: list[Sample]) -> BatchFeature:
        return encode_samples(self.processor, samples, self.prompt)

    def _in_threads(self, samples: list[Sample]) -> BatchFeature:
        slices = _slices(samples, len(self.copies))
        # fewer slices than copies when the batch is small
        parts = self.slicers.map(
            lambda proc, part: dict(encode_samples(proc, part, self.prompt)),
            self.copies[: len(slices)],
            slices,
        )
        return join_slices(list(parts), self.processor.tokenizer, self.pin)

    def _in_workers(self, pool: WorkerPool, samples: list[Sample]) -> BatchFeature:
        slices = _slices(samples, self.workers)
        try:
            futures = [pool.executor.submit(_encode_slice, part, self.prompt) for part in slices]
            parts = [future.result() for future in futures]
        except BrokenProcessPool as error:  # a worker died (out of memory, shared memory full)
            log.warning("encoding worker processes failed (%s); encoding in a thread from now on", error)
            self.workers = 0
            if _POOL.get("pool") is pool:
                del _POOL["pool"]
            pool.close()
            return self._here(samples)
        return join_slices(parts, self.processor.tokenizer, self.pin)


def _slices(samples: list[Sample], count: int) -> list[list[Sample]]:
    size = -(-len(samples) // count)
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def joinable(processor) -> bool:
    """Whether join_slices knows every key this processor returns (DeepSeek-OCR-2's)."""
    return "hwocr_call_kwargs" in vars(processor) and type(processor).__name__ == "DeepseekOcr2Processor"


def join_slices(parts: list[dict], tokenizer, pin: bool = False) -> BatchFeature:
    """Slices of a batch, encoded apart, as one processor call returns them: token rows padded
    again to the longest on the tokenizer's side, per-image tensors concatenated. pin: into
    page-locked memory, so that the copy to the GPU is asynchronous."""
    unknown = set(parts[0]) - set(TOKEN_KEYS) - set(STACKED_KEYS)
    if unknown:
        raise ValueError(f"cannot join processor outputs with keys {sorted(unknown)}")
    length = max(part["input_ids"].shape[1] for part in parts)
    joined = {}
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


_WORKER_PROCESSOR = None


def _start_worker(processor) -> None:
    global _WORKER_PROCESSOR
    _WORKER_PROCESSOR = processor
    torch.set_num_threads(1)  # several workers share the CPUs


def _ready() -> None:
    return None


def _encode_slice(samples: list[Sample], prompt: str) -> dict:
    return dict(encode_samples(_WORKER_PROCESSOR, samples, prompt))

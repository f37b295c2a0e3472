"""Batched greedy transcription with guards: left padding, a length cap, a repetition guard.

Two paths compute the same tokens (tests/test_evaluation_paths.py):
- the reference path (evaluate/reference.py): each batch through the processor in this thread,
  then transformers' `generate` with the repetition guard as a logits processor;
- the fast path (evaluate/fast/): batches encoded by threads beside the GPU and page-locked, the
  vision tower compiled, decoding steps replayed as a CUDA graph. GenerationSettings switches each
  part; `GenerationSettings.reference()` turns them all off.

No sample is ever dropped: a sample whose image or generation fails gets an empty prediction and
its error text, and is scored like every other.
"""

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from hwocr import trace_markers as markers
from hwocr.config import FAMILIES, InferenceConfig, ModelConfig, RepetitionGuardConfig
from hwocr.data import Sample
from hwocr.evaluate.fast.decoding import can_graph, greedy_generate, grouped_experts_while_decoding
from hwocr.evaluate.fast.encoding import BatchEncoder, empty_pinned_cache
from hwocr.evaluate.fast.vision import compiled_vision
from hwocr.evaluate.guard import WindowedNoRepeatNGram, token_ids
from hwocr.evaluate.reference import InlineEncoder, reference_generate
from hwocr.inputs import encode_samples, pixels_to_device
from hwocr.metrics import Prediction
from hwocr.model.adapt import vision_tower
from hwocr.text import normalize_text

log = logging.getLogger(__name__)

# Decoding is per-step overhead bound, so a large first batch pays (the measured batch sizes:
# benchmarks/README.md). A smaller GPU halves it on out-of-memory.
AUTO_BATCH_START = {"cuda": 256, "cpu": 16}


@dataclass
class GenerationSettings:
    prompt: str
    max_new_tokens: int
    batch_size: int = 0  # 0 = start large and halve on out-of-memory
    cache: str = "dynamic"  # "static": a preallocated KV cache, decoding steps compiled by transformers
    # The repetition guard (evaluate/guard.py): no n-gram of this size repeats within the window of
    # generated tokens (0 = the whole generation); ngram 0 = off. Whitelisted token ids never banned.
    no_repeat_ngram: int = 0
    no_repeat_window: int = 0
    no_repeat_whitelist: tuple[int, ...] = ()
    # the fast path (evaluate/fast/)
    compile_vision: bool = True  # on CUDA: the vision tower's layers compiled (fast/vision.py)
    graph_decoding: bool = True  # bf16 on CUDA: decoding steps replayed as a CUDA graph (fast/decoding.py)
    # threads encoding slices of each batch beside the GPU (fast/encoding.py); 0: each batch is
    # encoded in the caller's thread when its turn comes
    encode_threads: int = 4

    def reference(self) -> "GenerationSettings":
        """These settings on the reference path: every part of the fast path off."""
        return replace(self, compile_vision=False, graph_decoding=False, encode_threads=0)

    def generate_kwargs(self) -> dict:
        return {} if self.cache == "dynamic" else {"cache_implementation": self.cache}

    def guard(self, prompt_length: int, stop_ids: tuple[int, ...]) -> WindowedNoRepeatNGram | None:
        if not self.no_repeat_ngram:
            return None
        return WindowedNoRepeatNGram(
            self.no_repeat_ngram, self.no_repeat_window, prompt_length, self.no_repeat_whitelist, stop_ids
        )


def configured_settings(
    model: ModelConfig, inference: InferenceConfig, tokenizer, max_new_tokens: int, backend: str = "hf"
) -> GenerationSettings:
    """`eval.*` as generation settings, for hwocr.run and hwocr.predict alike. A family without
    DeepSeek-OCR-2's speedups takes the reference path (evaluate/reference.py) whatever `eval.*` asks;
    under Unsloth, which patches the model's forward for its own inference, decoding is never graphed."""
    settings = GenerationSettings(
        prompt=model.prompt,
        max_new_tokens=max_new_tokens,
        batch_size=inference.batch_size,
        compile_vision=inference.compile_vision,
        graph_decoding=inference.graph_decoding and backend == "hf",
        encode_threads=inference.encode_threads,
        **guard_settings(inference.repetition_guard, tokenizer),
    )
    return settings if FAMILIES[model.family].deepseek_speedups else settings.reference()


def guard_settings(guard: RepetitionGuardConfig, tokenizer) -> dict:
    """GenerationSettings' guard fields from the config (whitelisted tokens looked up once)."""
    return {
        "no_repeat_ngram": guard.ngram,
        "no_repeat_window": guard.window,
        "no_repeat_whitelist": token_ids(tokenizer, guard.whitelist) if guard.ngram else (),
    }


@dataclass
class EvalStats:
    images_per_s: float
    seconds: float
    batch_size: int
    n_failed: int


def max_new_tokens_for(references: Sequence[str], tokenizer, margin: int) -> int:
    """Longest reference in tokens plus a margin: enough for a right answer, bounded for a loop."""
    longest = max(
        (len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references), default=0
    )
    return longest + 1 + margin  # +1 for EOS


def transcribe(
    model: torch.nn.Module,
    processor,
    samples: Sequence[Sample],
    settings: GenerationSettings,
    desc: str = "transcribing",
    on_batch: Callable[[list[Prediction]], None] | None = None,
) -> tuple[list[Prediction], EvalStats]:
    """Transcribe `samples` in order. `on_batch` sees each finished batch (for incremental saving).

    With encode_threads, the next batch's images are read and encoded beside the GPU.
    """
    device = next(model.parameters()).device
    dtype = _floating_dtype(model)
    batch_size = settings.batch_size or AUTO_BATCH_START[device.type]
    predictions: list[Prediction] = []
    started = time.perf_counter()
    model.eval()
    prepared: dict[tuple[int, int], Future] = {}  # (start, size) -> encoded inputs, one batch ahead

    cuda = device.type == "cuda"
    compiled = settings.compile_vision and cuda
    encoder = (
        BatchEncoder(processor, settings.prompt, settings.encode_threads, pin=cuda)
        if settings.encode_threads
        else InlineEncoder(processor, settings.prompt)
    )
    with (
        encoder,
        tqdm(total=len(samples), desc=desc, unit="img") as progress,
        compiled_vision(vision_tower(model)) if compiled else nullcontext(),
    ):

        def encode_soon(start: int, size: int) -> Future:
            return encoder.submit(samples[start : start + size])

        start = 0
        while start < len(samples):
            batch = list(samples[start : start + batch_size])
            inputs = prepared.pop((start, batch_size), None) or encode_soon(start, batch_size)
            following = start + len(batch)
            if following < len(samples):
                prepared[(following, batch_size)] = encode_soon(following, batch_size)
            try:
                texts, guarded = _generate(model, processor, inputs.result(), settings, device, dtype)
                results = [
                    _prediction(s, t, guarded=g) for s, t, g in zip(batch, texts, guarded, strict=True)
                ]
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                prepared.clear()
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                log.warning("out of memory: evaluation batch size lowered to %d", batch_size)
                continue
            except Exception as error:  # one bad sample must not take its batch down with it
                results = list(_one_by_one(model, processor, batch, settings, device, dtype, error))
            predictions.extend(results)
            if on_batch:
                on_batch(results)
            progress.update(len(batch))
            start += len(batch)
    seconds = time.perf_counter() - started
    if encoder.pin:
        empty_pinned_cache()
    n_failed = sum(1 for p in predictions if p.error)
    if n_failed:
        log.warning("%d of %d samples failed and are scored as empty predictions", n_failed, len(predictions))
    stats = EvalStats(len(samples) / seconds if seconds else 0.0, seconds, batch_size, n_failed)
    return predictions, stats


def _one_by_one(model, processor, batch, settings, device, dtype, batch_error) -> Iterator[Prediction]:
    log.warning("batch failed (%s); retrying its %d samples one by one", batch_error, len(batch))
    for sample in batch:
        try:
            inputs = encode_samples(processor, [sample], settings.prompt)
            (text,), (guarded,) = _generate(model, processor, inputs, settings, device, dtype)
            yield _prediction(sample, text, guarded=guarded)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            yield _prediction(sample, "", error=f"{type(error).__name__}: {error}")


def _generate(
    model, processor, inputs, settings: GenerationSettings, device, dtype
) -> tuple[list[str], list[bool]]:
    """Texts, and per text whether the repetition guard changed a token greedy decoding chose."""
    with record_function(markers.GENERATE_BATCH):
        output, prompt_length, guard = generate_ids(model, processor, inputs, settings, device, dtype)
        texts = processor.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    changed = guard.changed if guard is not None else None  # None too if it never ran
    return texts, changed.tolist() if changed is not None else [False] * len(texts)


@torch.inference_mode()
def generate_ids(
    model, processor, inputs, settings: GenerationSettings, device, dtype
) -> tuple[torch.LongTensor, int, WindowedNoRepeatNGram | None]:
    """Prompt and generated ids of one encoded batch, the prompt's length, and the guard that ran.

    Graphed decoding where settings and model allow it (fast/decoding.py), transformers' generate
    otherwise; on GPUs either keeps the experts' grouped_mm kernel while decoding."""
    with record_function(markers.TO_DEVICE):
        inputs = pixels_to_device(inputs, processor, device, dtype)
    tokenizer = processor.tokenizer
    prompt_length = inputs["input_ids"].shape[1]
    stop_ids = stop_token_ids(model, tokenizer)
    guard = settings.guard(prompt_length, stop_ids)
    processors = LogitsProcessorList([guard] if guard else [])
    if settings.graph_decoding and settings.cache == "dynamic" and can_graph(model):
        output = greedy_generate(
            model, inputs, settings.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, processors
        )
    else:
        with grouped_experts_while_decoding(model):
            output = reference_generate(
                model,
                inputs,
                settings.max_new_tokens,
                tokenizer,
                processors,
                stop_ids,
                **settings.generate_kwargs(),
            )
    return output, prompt_length, guard


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """The tokens that end a transcription: the tokenizer's EOS and every EOS id of the model's
    generation config (GLM-OCR's lists <|endoftext|> and <|user|>), as the model's own generate stops."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(i for i in [tokenizer.eos_token_id, *configured] if i is not None))


def _prediction(sample: Sample, text: str, error: str = "", guarded: bool = False) -> Prediction:
    return Prediction(
        id=sample.id,
        writer=sample.writer,
        image=str(sample.image),
        reference=sample.text,
        prediction=normalize_text(text),
        error=error,
        guarded=guarded,
    )


def _floating_dtype(model: torch.nn.Module) -> torch.dtype:
    # 4-bit models hold uint8 weights and LoRA weights are fp32; the vision tower has the input dtype.
    return next(vision_tower(model).parameters()).dtype

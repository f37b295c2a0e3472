"""Greedy decoding for DeepSeek-OCR-2 with the one-token step replayed as a CUDA graph.

At evaluation batch sizes a decoding step of the MoE language model is bound by the host issuing
its kernels, not by the GPU running them (benchmarks/README.md has the profile). A CUDA graph
issues a whole step at once. transformers' own route to that (a static cache with its compiled
decoding) gained nothing when measured, so the step is captured here, without a compiler.

What it computes is what `model.generate(do_sample=False)` computes:
- the prompt (vision included) is prefilled by the model's own forward, as generate does, and its
  keys and values are moved into a static cache one layer at a time;
- each step feeds the last token at position = tokens so far (generate's default position ids,
  left padding included), attending to the prompt's non-padding keys and every generated key;
- logits processors see the whole sequence; a finished row gets pad tokens; decoding stops when
  every row has produced EOS or at max_new_tokens.
Only the attention's key length differs (the static cache's full length, masked), so logits agree to
the kernels' rounding, not bit for bit.

Each call captures its own step. A step kept for the next batch of the same shape would keep its
static cache beside the next prefill's: more peak memory, for no gain measured (benchmarks/README.md).
"""

import contextlib
import logging
from contextlib import contextmanager

import torch
from torch.profiler import record_function
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from hwocr import trace_markers as markers
from hwocr.model.adapt import unwrap
from hwocr.model.experts import is_fused_experts

log = logging.getLogger(__name__)


def can_graph(model: torch.nn.Module) -> bool:
    """Whether a step is captured: DeepSeek-OCR-2, 16-bit weights in bf16, on a GPU of compute
    capability 8.0+.

    The MoE's grouped_mm runs its fused kernel only there; in other dtypes or on older GPUs the
    experts go through a fallback that copies the expert offsets to the host, which a graph cannot
    hold (a capture then fails and the steps run eagerly, with a warning). 4-bit models decode
    step by step: a capture through bitsandbytes' kernels has not been checked.
    """
    base = unwrap(model)
    device = base.device
    if getattr(base.config, "model_type", "") != "deepseek_ocr2" or device.type != "cuda":
        return False
    # the routed experts' own weights (a trained head may be an fp32 copy; NF4 experts are buffers)
    experts = next((module for module in base.modules() if is_fused_experts(module)), None)
    return (
        getattr(base, "hf_quantizer", None) is None
        and experts is not None
        and experts.gate_up_proj.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


@torch.inference_mode()
def greedy_generate(
    model: torch.nn.Module,
    inputs: dict,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    logits_processor: LogitsProcessorList | None = None,
    graph: bool = True,
) -> torch.LongTensor:
    """Prompt and generated ids, (batch, prompt + generated), as model.generate returns them.

    The steps run eagerly off CUDA, with graph=False, or when the capture fails."""
    base = unwrap(model)
    processors = logits_processor or LogitsProcessorList()
    input_ids = inputs["input_ids"]
    batch, prompt_length = input_ids.shape
    total = prompt_length + max_new_tokens
    device = input_ids.device

    # ---- prefill: the model's own forward, as generate runs it
    with record_function(markers.PREFILL):
        prefill = base(
            **inputs, past_key_values=DynamicCache(config=base.config), use_cache=True, logits_to_keep=1
        )
    cache = StaticCache(config=base.config, max_cache_len=total)
    for source, target in zip(prefill.past_key_values.layers, cache.layers, strict=True):
        target.update(source.keys, source.values)  # one layer's copy at a time is the transient
        source.keys = source.values = None
    allowed = torch.zeros((batch, total), dtype=torch.bool, device=device)  # keys a query may see
    allowed[:, :prompt_length] = inputs["attention_mask"].bool()
    sequence = input_ids.new_full((batch, total), pad_token_id)
    sequence[:, :prompt_length] = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=device)

    def choose(position: int, logits: torch.Tensor) -> None:
        scores = processors(sequence[:, :position], logits[:, -1].to(dtype=torch.float32, copy=True))
        token = torch.where(finished, pad_token_id, scores.argmax(dim=-1))
        sequence[:, position] = token
        finished.logical_or_(token == eos_token_id)

    choose(prompt_length, prefill.logits)
    del prefill

    # ---- decoding: one token per step, from static buffers that a graph can replay
    step_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
    # the cache slot the step writes, counted on the device (so a replayed graph reads it) in step
    # with the cache's own count: the prompt, then one per step
    slot = torch.full((1,), prompt_length, dtype=torch.long, device=device)

    def step() -> torch.Tensor:
        allowed.index_fill_(1, slot, True)
        hidden = base.model(
            input_ids=step_ids,
            attention_mask=allowed[:, None, None, :],
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        slot.add_(1)
        return base.lm_head(hidden[:, -1:])

    steps = _Steps(step, graph and device.type == "cuda")
    for position in range(prompt_length + 1, total):
        if bool(finished.all()):
            return sequence[:, :position]
        with record_function(markers.DECODE_STEP):
            step_ids.copy_(sequence[:, position - 1 : position])
            choose(position, steps())
    return sequence


class _Steps:
    """Runs `step`: the first call eagerly on a side stream (which warms it up), captured as a CUDA
    graph right after, replayed from then on. Eager throughout if not graphed or the capture fails."""

    def __init__(self, step, graph: bool):
        self.step, self.graph = step, graph
        self.captured: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None  # the graph's output buffer

    def __call__(self) -> torch.Tensor:
        if not self.graph:
            return self.step()
        if self.captured is not None:
            self.captured.replay()
            return self.output
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            logits = self.step()
        torch.cuda.current_stream().wait_stream(stream)
        logits.record_stream(torch.cuda.current_stream())  # read there: not reused before that
        try:  # capturing records the kernels without running them: the state stays as it is
            self.output = _capture(graph := torch.cuda.CUDAGraph(), self.step, stream)
            self.captured = graph
        except torch.OutOfMemoryError:  # transcribe lowers the batch size
            raise
        except Exception as error:  # an op that syncs with the host, or one capture does not allow
            log.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly", error)
            self.graph = False
        return logits


def _capture(graph: torch.cuda.CUDAGraph, step, stream: torch.cuda.Stream) -> torch.Tensor:
    """`step`'s kernels recorded into `graph` on `stream`; returns its output buffer.

    torch.cuda.graph() would first empty the allocator's caches, device and page-locked host
    memory, which the next batch then allocates again (benchmarks/README.md). thread_local: the
    encoding thread's CUDA calls (page-locked allocations) may run during the capture."""
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            output = step()
        except BaseException:
            with contextlib.suppress(Exception):  # the step's own error is the one to report
                _end_capture(graph)
            raise
        _end_capture(graph)
    return output


def _end_capture(graph: torch.cuda.CUDAGraph) -> None:
    """End the capture. When that fails (the capture was invalidated), PyTorch leaves the device's
    default generator marked as capturing, and every later random op there (dropout in training)
    fails with "Offset increment outside graph capture": the generator gets a fresh copy of its
    state, with the same seed and offset."""
    try:
        graph.capture_end()
    except Exception:
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        generator.graphsafe_set_state(generator.clone_state())
        raise


# The name under which grouped_mm is registered again for decoding (see grouped_experts_while_decoding)
GROUPED_MM_KEPT = "grouped_mm_kept_for_decoding"


@contextmanager
def grouped_experts_while_decoding(model):
    """Keep the MoE's grouped_mm kernel during decoding.

    transformers switches experts that run `grouped_mm` to `batched_mm` for the decoding steps on
    GPUs. That kernel gathers a copy of each selected expert's weights per token where grouped_mm
    reads each expert once: at evaluation batch sizes decoding steps get much slower
    (benchmarks/README.md). One kernel for every batch size also keeps batched
    and one-by-one transcription on the same arithmetic. So for the duration, grouped_mm runs under
    a second name (transformers' public ExpertsInterface.register), which the switch leaves alone.
    """
    generator = unwrap(model)
    if not hasattr(generator, "get_experts_implementation"):  # transformers 4.x: no experts kernels
        yield
        return
    chosen = generator.get_experts_implementation()
    if "grouped_mm" not in chosen.values():
        yield
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    ExpertsInterface.register(GROUPED_MM_KEPT, ALL_EXPERTS_FUNCTIONS["grouped_mm"])
    generator.set_experts_implementation(
        {key: GROUPED_MM_KEPT if value == "grouped_mm" else value for key, value in chosen.items()}
    )
    try:
        yield
    finally:
        generator.set_experts_implementation(chosen)

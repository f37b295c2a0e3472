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
"""

import logging

import torch
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from hwocr.model.adapt import unwrap

log = logging.getLogger(__name__)


def can_graph(model: torch.nn.Module) -> bool:
    """Whether a step can be captured: DeepSeek-OCR-2 on a GPU whose MoE kernel never syncs.

    Below compute capability 8.0 transformers' grouped_mm falls back to a per-expert loop that reads
    the expert offsets on the host, which a graph cannot hold.
    """
    base = unwrap(model)
    device = base.device
    return (
        getattr(base.config, "model_type", "") == "deepseek_ocr2"
        and device.type == "cuda"
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

    graph=False runs the same steps eagerly (CPU, or where can_graph says no)."""
    base = unwrap(model)
    processors = logits_processor or LogitsProcessorList()
    input_ids = inputs["input_ids"]
    batch, prompt_length = input_ids.shape
    total = prompt_length + max_new_tokens

    # ---- prefill: the model's own forward, as generate runs it
    prefill = base(**inputs, past_key_values=DynamicCache(config=base.config), use_cache=True, logits_to_keep=1)
    cache = _static_copy(prefill.past_key_values, base.config, total)
    sequence = input_ids.new_full((batch, total), pad_token_id)
    sequence[:, :prompt_length] = input_ids
    allowed = torch.zeros((batch, total), dtype=torch.bool, device=input_ids.device)
    allowed[:, :prompt_length] = inputs["attention_mask"].bool()
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)

    def choose(position: int, logits: torch.Tensor) -> None:
        scores = processors(sequence[:, :position], logits[:, -1].to(dtype=torch.float32, copy=True))
        token = torch.where(finished, pad_token_id, scores.argmax(dim=-1))
        sequence[:, position] = token
        finished.logical_or_(token == eos_token_id)

    choose(prompt_length, prefill.logits)
    del prefill

    # ---- decoding: one token per step, from static buffers a graph can replay
    step_ids = sequence[:, prompt_length : prompt_length + 1].clone()
    step_logits = None

    def step() -> torch.Tensor:
        position = cache.layers[0].cumulative_length  # on the device: read at replay time
        allowed.index_fill_(1, position.view(1), True)
        hidden = base.model(
            input_ids=step_ids, attention_mask=allowed[:, None, None, :], past_key_values=cache, use_cache=True
        ).last_hidden_state
        return base.lm_head(hidden[:, -1:])

    replay = None
    for position in range(prompt_length + 1, total):
        if bool(finished.all()):
            return sequence[:, :position]
        step_ids.copy_(sequence[:, position - 1 : position])
        if replay is not None:
            replay.replay()
        elif graph and position > prompt_length + 1:  # the first step ran eagerly: capture the second
            replay, step_logits = _capture(step, side_stream)
            if replay is None:
                graph = False
                step_logits = step()
            else:
                replay.replay()
        elif graph:  # the first step, eagerly on the stream the graph will be captured on (warms it up)
            side_stream = torch.cuda.Stream()
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                step_logits = step()
            torch.cuda.current_stream().wait_stream(side_stream)
        else:
            step_logits = step()
        choose(position, step_logits)
    return sequence


def _static_copy(dynamic: DynamicCache, config, max_cache_len: int) -> StaticCache:
    """The prefill's keys and values in a static cache, moved a layer at a time (one layer's copy
    is the only transient)."""
    static = StaticCache(config=config, max_cache_len=max_cache_len)
    for source, target in zip(dynamic.layers, static.layers, strict=True):
        target.update(source.keys, source.values)
        source.keys = source.values = None
    return static


def _capture(step, stream: torch.cuda.Stream):
    """(graph, its output buffer), or (None, None) with a warning if this model's step can't be held."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            logits = step()
        return graph, logits
    except Exception as error:  # an op that syncs with the host, or one capture does not allow
        log.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly", error)
        return None, None

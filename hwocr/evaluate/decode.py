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

The captured step, its cache and buffers are kept for the next batch of the same shape (batch size,
prompt + new tokens): capturing costs about an eager step plus the graph's instantiation.
"""

import logging
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from hwocr.model.adapt import unwrap

log = logging.getLogger(__name__)


def can_graph(model: torch.nn.Module) -> bool:
    """Whether a step can be captured: DeepSeek-OCR-2 in bf16 on a GPU of compute capability 8.0+.

    The MoE's grouped_mm runs its fused kernel only there; in other dtypes or on older GPUs the
    experts go through a fallback that copies the expert offsets to the host, which a graph cannot
    hold (a capture then fails and the steps run eagerly, with a warning).
    """
    base = unwrap(model)
    device = base.device
    return (
        getattr(base.config, "model_type", "") == "deepseek_ocr2"
        and device.type == "cuda"
        and base.lm_head.weight.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


@dataclass
class _Step:
    """One decoding step's static inputs and outputs, for one (batch, length) shape."""

    shape: tuple[int, int]
    cache: StaticCache
    allowed: torch.Tensor  # (batch, length) bool: keys a query may attend to
    ids: torch.Tensor  # (batch, 1): the token fed in
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # the graph's output buffer


class GreedyDecoder:
    """model.generate(do_sample=False) for DeepSeek-OCR-2, one step at a time from static buffers.

    Steps run eagerly off CUDA, with graph=False, or after a capture failed."""

    def __init__(self, model: torch.nn.Module, graph: bool = True):
        self.base = unwrap(model)
        self.graph = graph and self.base.device.type == "cuda"
        self._step: _Step | None = None

    def release(self) -> None:
        """Drop the kept graph, cache and buffers (before retrying a batch that ran out of memory)."""
        self._step = None

    @torch.inference_mode()
    def __call__(
        self,
        inputs: dict,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        logits_processor: LogitsProcessorList | None = None,
    ) -> torch.LongTensor:
        """Prompt and generated ids, (batch, prompt + generated), as model.generate returns them."""
        base = self.base
        processors = logits_processor or LogitsProcessorList()
        input_ids = inputs["input_ids"]
        batch, prompt_length = input_ids.shape
        total = prompt_length + max_new_tokens

        # ---- prefill: the model's own forward, as generate runs it
        prefill = base(
            **inputs, past_key_values=DynamicCache(config=base.config), use_cache=True, logits_to_keep=1
        )
        step = self._prepare((batch, total), input_ids.device)
        for source, target in zip(prefill.past_key_values.layers, step.cache.layers, strict=True):
            target.update(source.keys, source.values)  # one layer's copy at a time is the transient
            source.keys = source.values = None
        step.allowed[:, :prompt_length] = inputs["attention_mask"].bool()
        sequence = input_ids.new_full((batch, total), pad_token_id)
        sequence[:, :prompt_length] = input_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)

        def choose(position: int, logits: torch.Tensor) -> None:
            scores = processors(sequence[:, :position], logits[:, -1].to(dtype=torch.float32, copy=True))
            token = torch.where(finished, pad_token_id, scores.argmax(dim=-1))
            sequence[:, position] = token
            finished.logical_or_(token == eos_token_id)

        choose(prompt_length, prefill.logits)
        del prefill

        # ---- decoding: one token per step
        for position in range(prompt_length + 1, total):
            if bool(finished.all()):
                return sequence[:, :position]
            step.ids.copy_(sequence[:, position - 1 : position])
            choose(position, self._run(step))
        return sequence

    def _prepare(self, shape: tuple[int, int], device) -> _Step:
        """The kept step if its shape matches (emptied for a new prompt), else a new one."""
        step = self._step
        if step is None or step.shape != shape:
            self._step = None  # the old graph's memory goes before the new cache's is taken
            step = _Step(
                shape,
                StaticCache(config=self.base.config, max_cache_len=shape[1]),
                torch.zeros(shape, dtype=torch.bool, device=device),
                torch.zeros((shape[0], 1), dtype=torch.long, device=device),
            )
            self._step = step
        else:  # stale keys past the new prompt stay, masked out by `allowed` until overwritten
            for layer in step.cache.layers:
                layer.cumulative_length.zero_()
            step.allowed.zero_()
        return step

    def _forward(self, step: _Step) -> torch.Tensor:
        position = step.cache.layers[0].cumulative_length  # on the device: read at replay time
        step.allowed.index_fill_(1, position.view(1), True)
        hidden = self.base.model(
            input_ids=step.ids,
            attention_mask=step.allowed[:, None, None, :],
            past_key_values=step.cache,
            use_cache=True,
        ).last_hidden_state
        return self.base.lm_head(hidden[:, -1:])

    def _run(self, step: _Step) -> torch.Tensor:
        if not self.graph:
            return self._forward(step)
        if step.graph is not None:
            step.graph.replay()
            return step.logits
        # First step of this shape: eagerly, on a side stream (warms it up), then captured on it.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            logits = self._forward(step)
        torch.cuda.current_stream().wait_stream(stream)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                step.logits = self._forward(step)
            step.graph = graph
        except Exception as error:  # an op that syncs with the host, or one capture does not allow
            log.warning("decoding step could not be captured as a CUDA graph (%s); decoding eagerly", error)
            self.graph = False
        return logits

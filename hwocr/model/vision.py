"""Bound the frozen vision tower's transient memory: run it over the batch in chunks.

SAM's four global-attention layers attend over 4096 patches with a decomposed relative-position
bias of shape (batch, 12 heads, 4096, 4096), and the Qwen2-like encoder builds a 4352x4352 mask:
both scale with the number of images in the call. Outside autograd (the tower is frozen, see
adapt.keep_frozen_tower_out_of_autograd) the tower's output does not depend on how the batch is
split, so chunks give the same features with a peak that no longer grows with the batch.
"""

import functools
import types
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from transformers.modeling_outputs import BaseModelOutput

from hwocr import trace_markers as markers

# Images per vision-tower call: bounds the tower's transient memory in large batches.
VISION_CHUNK = 32


@dataclass
class Chunking:
    """A chunked tower's settings: images per call, and whether every call is padded to that many
    (compiled layers see one shape; evaluate/fast/vision.py)."""

    size: int
    padded: bool = False


_CHUNKED: "weakref.WeakKeyDictionary[torch.nn.Module, Chunking]" = weakref.WeakKeyDictionary()


def chunking(tower: torch.nn.Module) -> Chunking | None:
    """The chunking chunk_vision_tower installed on `tower`, if any."""
    return _CHUNKED.get(tower)


def chunk_vision_tower(tower: torch.nn.Module, chunk: int) -> bool:
    """Make `tower` process at most `chunk` images per call. Returns whether it was installed."""
    if chunk <= 0 or tower in _CHUNKED:
        return False
    forward = tower.forward
    settings = _CHUNKED[tower] = Chunking(chunk)

    @functools.wraps(forward)
    def forward_in_chunks(pixel_values, *args, **kwargs):
        with record_function(markers.VISION_TOWER):
            return _in_chunks(pixel_values, *args, **kwargs)

    def _in_chunks(pixel_values, *args, **kwargs):
        size = settings.size
        if settings.padded:
            return BaseModelOutput(
                last_hidden_state=torch.cat(
                    [_padded_call(forward, part, size, args, kwargs) for part in pixel_values.split(size)]
                )
            )
        if pixel_values.shape[0] <= size:
            return forward(pixel_values, *args, **kwargs)
        outputs = [forward(part, *args, **kwargs) for part in pixel_values.split(size)]
        return BaseModelOutput(last_hidden_state=torch.cat([o.last_hidden_state for o in outputs]))

    tower.forward = forward_in_chunks
    return True


def _padded_call(forward, part: torch.Tensor, size: int, args, kwargs) -> torch.Tensor:
    """The tower on `part` padded with blank views to `size` (views never see each other)."""
    n = part.shape[0]
    if n < size:
        part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
    return forward(part, *args, **kwargs).last_hidden_state[:n]


def folded_rel_pos_attention(self, hidden_states: torch.Tensor, output_attentions=False):
    """SAM attention with its decomposed relative-position bias folded into the dot product.

    The stock layer materialises bias[q, k] = rel_h[q, kh] + rel_w[q, kw] as a (batch, heads,
    4096, 4096) tensor for every global layer (0.4 GB per image in 16-bit) and hands SDPA an
    arbitrary float mask. The same scores come from one dot product over extended vectors:
        q' = [q * scale, rel_h[q, :], rel_w[q, :]]     k' = [k, onehot(kh), onehot(kw)]
    so q'.k' = scale * q.k + rel_h[q, kh] + rel_w[q, kw], with no bias tensor and no mask (SDPA
    runs its fused kernels with scale=1). scale = 1/8 is a power of two: q * scale is exact.
    """
    batch_size, height, width, _ = hidden_states.shape
    heads = self.num_attention_heads
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # (batch, heads, h*w, dim)
    if self.use_rel_pos:
        rel_h_table = self.get_rel_pos(height, height, self.rel_pos_h).to(query.dtype)  # (h, kh, dim)
        rel_w_table = self.get_rel_pos(width, width, self.rel_pos_w).to(query.dtype)  # (w, kw, dim)
        grid = query.reshape(batch_size, heads, height, width, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h_table).reshape(
            batch_size, heads, height * width, -1
        )
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w_table).reshape(
            batch_size, heads, height * width, -1
        )
        eye_h = torch.eye(height, dtype=query.dtype, device=query.device)
        eye_w = torch.eye(width, dtype=query.dtype, device=query.device)
        onehot_h = eye_h[:, None, :].expand(height, width, height).reshape(height * width, height)
        onehot_w = eye_w[None, :, :].expand(height, width, width).reshape(height * width, width)
        extra = height + width
        pad = (-(query.shape[-1] + extra)) % 8  # keep the head dim a multiple of 8 for fused kernels
        q_parts = [query * self.scale, rel_h, rel_w]
        k_parts = [
            key,
            onehot_h.expand(batch_size, heads, -1, -1),
            onehot_w.expand(batch_size, heads, -1, -1),
        ]
        if pad:
            zeros = query.new_zeros(batch_size, heads, height * width, pad)
            q_parts.append(zeros)
            k_parts.append(zeros)
        query, key = torch.cat(q_parts, dim=-1), torch.cat(k_parts, dim=-1)
        output = _attention_on_longer_queries(query, key, value)
    else:
        output = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
    output = output.reshape(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    output = self.proj(output.reshape(batch_size, height, width, -1))
    return output, None


def _attention_on_longer_queries(query, key, value) -> torch.Tensor:
    """SDPA (scale 1) where queries and keys are longer than the values.

    On the CPU, PyTorch's fused kernel needs one head dim for all three and otherwise falls back to a
    several times slower path; zero columns appended to the values leave the weighted sums as they
    are. GPUs keep their own kernel choice for unequal dims.
    """
    extra = query.shape[-1] - value.shape[-1]
    if query.device.type != "cpu" or extra <= 0:
        return F.scaled_dot_product_attention(query, key, value, scale=1.0)
    padded = F.pad(value, (0, extra))
    return F.scaled_dot_product_attention(query, key, padded, scale=1.0)[..., : value.shape[-1]]


def fold_sam_rel_pos(tower: torch.nn.Module) -> int:
    """Use folded_rel_pos_attention in every SAM attention layer of `tower`; returns how many."""
    n = 0
    for module in tower.modules():
        if hasattr(module, "get_decomposed_rel_pos") and not _folded(module):
            module.forward = types.MethodType(folded_rel_pos_attention, module)
            n += 1
    return n


def _folded(module: torch.nn.Module) -> bool:
    return getattr(vars(module).get("forward"), "__func__", None) is folded_rel_pos_attention

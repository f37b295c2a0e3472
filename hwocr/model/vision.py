"""Bound the frozen vision tower's transient memory: run it over the batch in chunks.

SAM's four global-attention layers attend over 4096 patches with a decomposed relative-position
bias of shape (batch, 12 heads, 4096, 4096), and the Qwen2-like encoder builds a 4352x4352 mask:
both scale with the number of images in the call. Outside autograd (the tower is frozen, see
adapt.keep_frozen_tower_out_of_autograd) the tower's output does not depend on how the batch is
split, so chunks give the same features with a peak that no longer grows with the batch.
"""

import contextlib
import functools
import types

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

# Images per vision-tower call (benchmarks/README.md has the measured trade-off).
VISION_CHUNK = 32


def chunk_vision_tower(tower: torch.nn.Module, chunk: int) -> bool:
    """Make `tower` process at most `chunk` images per call. Returns whether it was installed."""
    if chunk <= 0 or getattr(tower, "_hwocr_chunk", 0):
        return False
    forward = tower.forward

    @functools.wraps(forward)
    def forward_in_chunks(pixel_values, *args, **kwargs):
        size = tower._hwocr_chunk
        if tower._hwocr_pad_chunks:  # compiled layers: every call has the one shape they were built for
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
    tower._hwocr_chunk = chunk
    tower._hwocr_pad_chunks = False
    return True


def _padded_call(forward, part: torch.Tensor, size: int, args, kwargs) -> torch.Tensor:
    """The tower on `part` padded with blank views to `size` (views never see each other)."""
    n = part.shape[0]
    if n < size:
        part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
    return forward(part, *args, **kwargs).last_hidden_state[:n]


@contextlib.contextmanager
def compiled_vision(tower: torch.nn.Module):
    """Run the frozen tower's SAM and encoder layers compiled (torch.compile, static shapes).

    Eager, the tower is mostly copies and elementwise kernels between its matmuls; inductor fuses
    them. Chunks are padded to VISION_CHUNK views so that each view size compiles once (the
    measured speed-up and compile time: benchmarks/README.md). Compiled layers are kept on the
    module and reused by later evaluations; outside this context the layers run eagerly, as in
    training. SAM's patch embedding runs as a matmul meanwhile (patches_as_matmul).
    """
    if not getattr(tower, "_hwocr_chunk", 0):
        yield
        return
    layers = [*tower.sam_encoder.layers, *tower.vision_encoder.layers]
    eager = [vars(layer).get("forward") for layer in layers]  # None: the class's own forward
    for layer in layers:
        if "_hwocr_compiled_forward" not in vars(layer):
            layer._hwocr_compiled_forward = torch.compile(layer.forward, dynamic=False)
        layer.forward = layer._hwocr_compiled_forward
    tower._hwocr_pad_chunks = True
    embedding = tower.sam_encoder.patch_embed
    unfoldable = _patches_tile(embedding.projection)
    if unfoldable:
        embedding.forward = types.MethodType(patches_as_matmul, embedding)
    # a compiler that fails (no Triton for this GPU, no C compiler) must not fail the evaluation:
    # dynamo then warns and runs those layers eagerly
    suppress = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    try:
        yield
    finally:
        torch._dynamo.config.suppress_errors = suppress
        tower._hwocr_pad_chunks = False
        if unfoldable:
            del embedding.forward
        for layer, forward in zip(layers, eager, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _patches_tile(conv: torch.nn.Module) -> bool:
    """Whether the convolution is a patch embedding: non-overlapping kernels, nothing padded."""
    return (
        isinstance(conv, torch.nn.Conv2d)
        and conv.stride == conv.kernel_size
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def patches_as_matmul(self, pixel_values: torch.Tensor) -> torch.Tensor:
    """SAM's patch embedding, a 16x16 convolution of stride 16, as one matmul over the unfolded
    patches: the same sums in another order, an order of magnitude faster than cuDNN's kernel for
    3 input channels (benchmarks/results/h200_sam_convs_matmul.json)."""
    conv = self.projection
    batch, channels, height, width = pixel_values.shape
    kh, kw = conv.kernel_size
    rows, cols = height // kh, width // kw  # as the convolution, a remainder is dropped
    pixel_values = pixel_values[:, :, : rows * kh, : cols * kw]
    patches = pixel_values.reshape(batch, channels, rows, kh, cols, kw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(batch, rows, cols, channels * kh * kw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


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
        output = F.scaled_dot_product_attention(query, key, value, scale=1.0)
    else:
        output = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
    output = output.reshape(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    output = self.proj(output.reshape(batch_size, height, width, -1))
    return output, None


def fold_sam_rel_pos(tower: torch.nn.Module) -> int:
    """Use folded_rel_pos_attention in every SAM attention layer of `tower`; returns how many."""
    n = 0
    for module in tower.modules():
        if hasattr(module, "get_decomposed_rel_pos") and not getattr(module, "_hwocr_folded", False):
            module.forward = types.MethodType(folded_rel_pos_attention, module)
            module._hwocr_folded = True
            n += 1
    return n

"""The frozen vision tower's layers compiled for evaluation, and SAM's patch embedding as a matmul."""

import contextlib
import types
import weakref

import torch
import torch.nn.functional as F

from hwocr.compat import compile_errors_run_eagerly
from hwocr.model.vision import chunking

# tower -> its layers' compiled forwards, kept for later evaluations of the same model
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def compiled_vision(tower: torch.nn.Module):
    """Run the frozen tower's SAM and encoder layers compiled (torch.compile, static shapes).

    Eager, the tower is mostly copies and elementwise kernels between its matmuls; inductor fuses
    them. Chunks are padded to VISION_CHUNK views so that each view size compiles once (the
    measured speed-up and compile time: benchmarks/README.md). Compiled layers are kept for the
    tower and reused by later evaluations; outside this context the layers run eagerly, as in
    training. SAM's patch embedding runs as a matmul meanwhile (patches_as_matmul).
    """
    chunks = chunking(tower)
    if chunks is None:
        yield
        return
    layers = [*tower.sam_encoder.layers, *tower.vision_encoder.layers]
    eager = [vars(layer).get("forward") for layer in layers]  # None: the class's own forward
    if tower not in _COMPILED:
        _COMPILED[tower] = [torch.compile(layer.forward, dynamic=False) for layer in layers]
    for layer, compiled in zip(layers, _COMPILED[tower], strict=True):
        layer.forward = compiled
    chunks.padded = True
    embedding = tower.sam_encoder.patch_embed
    unfoldable = _patches_tile(embedding.projection)
    if unfoldable:
        embedding.forward = types.MethodType(patches_as_matmul, embedding)
    # a compiler that fails (no Triton for this GPU, no C compiler) must not fail the evaluation:
    # dynamo then warns and runs those layers eagerly
    try:
        with compile_errors_run_eagerly():
            yield
    finally:
        chunks.padded = False
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

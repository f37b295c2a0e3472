"""Random DeepSeek-OCR-2 vision weights whose features carry the image.

transformers' initialisation suits a model that will load trained weights, not one that must run
with random ones. Left as it is, a random model sees every image alike: SAM's linear and conv
weights are drawn at std ~1e-10, and each learned query of the Qwen2-like encoder attends almost
uniformly to all patches, so its output is an average of mostly blank paper. The tiny test model
and the full-size benchmark model are random, and the features they hand the language model must
differ from image to image, or no test can tell whether training reads the image.

The fix is an initialisation, not a new architecture. In DeepSeek's trained encoder the queries
read the patches in order; here each query starts by attending to the patch of its own index.
"""

import math

import torch
from transformers import DeepseekOcr2ForConditionalGeneration

# How much more the patch a query reads scores than its neighbours, in nats: enough that a
# query's attention is mostly on its own patch, small enough that 16-bit scores stay exact.
QUERY_FOCUS_NATS = 8.0


@torch.no_grad()
def live_vision_weights(model: DeepseekOcr2ForConditionalGeneration) -> None:
    """Initialise the vision tower so that image features depend on the image at every stage."""
    live_sam_weights(model)
    queries_read_their_patches(model)


@torch.no_grad()
def live_sam_weights(model: DeepseekOcr2ForConditionalGeneration) -> None:
    """PyTorch's default init for SAM's linear and conv layers (as in DeepSeek's own SAM code)
    and small random position tables, where transformers' init leaves them ~0."""
    sam = model.model.vision_tower.sam_encoder
    for module in sam.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.reset_parameters()
    for name, param in sam.named_parameters():
        if "rel_pos" in name or name == "pos_embed":
            param.normal_(0.0, 0.02)


@torch.no_grad()
def queries_read_their_patches(model: DeepseekOcr2ForConditionalGeneration) -> None:
    """Make query i of every encoder layer attend to patch i.

    The encoder runs [patches, queries] as one sequence with rotary positions, so a query at
    position n + i and patch i are n apart, where n is the view's patch count (the query table's
    size: 256 for the global view, 144 for a tile). With the query and key projections' weights at
    zero, q and k are their biases; a key bias of ones and a query bias rotated back by n positions
    make the score peak exactly n positions back. Half of the heads serve the global view, half a
    tile. Values, outputs and MLPs get PyTorch's default init, so what a query reads reaches the
    residual stream at full strength rather than at std 0.02.
    """
    tower = model.model.vision_tower
    encoder = tower.vision_encoder
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    inv_freq = encoder.rotary_emb.inv_freq.float().cpu()
    grids = (tower.query_1024_resolution.num_embeddings, tower.query_768_resolution.num_embeddings)
    heads, kv_heads = encoder.config.num_attention_heads, encoder.config.num_key_value_heads
    for layer in encoder.layers:
        attention = layer.self_attn
        half = attention.head_dim // 2
        # a query of length `scale` per frequency pair against keys of length 1: the score falls by
        # scale * sum(1 - cos(freq)) / sqrt(head_dim) one position away from the peak
        scale = QUERY_FOCUS_NATS * math.sqrt(attention.head_dim) / float((1 - torch.cos(inv_freq)).sum())
        key_bias = torch.zeros(kv_heads, attention.head_dim)
        key_bias[:, :half] = 1.0
        query_bias = torch.zeros(heads, attention.head_dim)
        for head in range(heads):
            phase = -inv_freq * grids[head % len(grids)]
            query_bias[head, :half], query_bias[head, half:] = torch.cos(phase), torch.sin(phase)
        attention.q_proj.weight.zero_()
        attention.k_proj.weight.zero_()
        attention.q_proj.bias.copy_((scale * query_bias).flatten())
        attention.k_proj.bias.copy_(key_bias.flatten())

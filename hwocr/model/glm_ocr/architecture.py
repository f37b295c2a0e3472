"""GLM-OCR configs built offline: the released full-size shapes and a tiny twin.

The full-size config (random weights) measures real memory and speed on a GPU without a download;
the tiny one runs the whole pipeline on a CPU in seconds. The released shapes are those of
zai-org/GLM-OCR's config.json (https://huggingface.co/zai-org/GLM-OCR/blob/main/config.json):
a CogViT-style vision tower (24 blocks, 1024 wide, patch 14, 2x2 merge) and a GLM decoder (16
layers, 1536 wide, 16 query / 8 key-value heads of 128, vocabulary 59392): 1.1 B weights, of which
the card's 0.9 B leave out the embedding and output tables.
"""

from transformers import GlmOcrConfig

from hwocr.model.random_weights import TINY_DECODER

# Token ids of the released checkpoint (its config.json and generation_config.json).
FULL_VOCAB = 59392
FULL_TOKEN_IDS = {
    "pad_token_id": 59246,  # <|endoftext|>
    "eos_token_id": [59246, 59253],  # <|endoftext|>, <|user|>: either ends a generation
    "image_token_id": 59280,
    "video_token_id": 59281,
    "image_start_token_id": 59256,
    "image_end_token_id": 59257,
    "video_start_token_id": 59258,
    "video_end_token_id": 59259,
}


def full_size_config(token_ids: dict | None = None) -> GlmOcrConfig:
    """The released GLM-OCR shapes (the multi-token-prediction layer the checkpoint also holds is
    not part of transformers' model and is skipped when the weights load). `token_ids`: another
    tokenizer's ids for FULL_TOKEN_IDS' keys (a random-weight benchmark checkpoint's)."""
    ids = token_ids or FULL_TOKEN_IDS
    return GlmOcrConfig(
        text_config={
            "vocab_size": FULL_VOCAB,
            "hidden_size": 1536,
            "intermediate_size": 4608,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "attention_bias": False,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [16, 24, 24],
                "partial_rotary_factor": 1.0,
                "rope_theta": 10000,
            },
            "pad_token_id": ids["pad_token_id"],
            "eos_token_id": ids["eos_token_id"],
        },
        vision_config={
            "hidden_size": 1024,
            "depth": 24,
            "num_heads": 16,
            "attention_bias": True,
            "intermediate_size": 4096,
            "image_size": 336,
            "patch_size": 14,
            "out_hidden_size": 1536,
            "rms_norm_eps": 1e-05,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **{key: value for key, value in ids.items() if key not in ("pad_token_id", "eos_token_id")},
    )


def tiny_config(token_ids: dict[str, int | list[int]], vocab_size: int) -> GlmOcrConfig:
    """The same architecture at ~0.3 M parameters. `token_ids` holds the keys of FULL_TOKEN_IDS,
    looked up in the tiny tokenizer. The vision tower keeps the released patch layout's structure
    (temporal patch 2, 2x2 merge) at patch 4, so a 64x64 view gives 64 image tokens."""
    return GlmOcrConfig(
        text_config={
            "vocab_size": vocab_size,
            **TINY_DECODER,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],  # the released [16, 24, 24] over 64 frequency pairs, scaled to 8
                "partial_rotary_factor": 1.0,
                "rope_theta": 10000,
            },
            "pad_token_id": token_ids["pad_token_id"],
            "eos_token_id": token_ids["eos_token_id"],
        },
        vision_config={
            "hidden_size": 32,
            "depth": 2,
            "num_heads": 2,
            "intermediate_size": 64,
            "image_size": 64,
            "patch_size": 4,
            "out_hidden_size": 64,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **{key: value for key, value in token_ids.items() if key not in ("pad_token_id", "eos_token_id")},
    )

"""DeepSeek-OCR-2 configs built offline: the real full-size shapes and a tiny twin.

Neither needs the hub. The full-size config (random weights) measures real memory and speed on a
GPU; the tiny one runs the whole pipeline on a CPU in minutes.
"""

from transformers import DeepseekOcr2Config

# Token ids of the real checkpoint; the tiny tokenizer is built to reproduce bos/eos.
FULL_VOCAB = 129280
FULL_IMAGE_TOKEN_ID = 128815


def full_size_config() -> DeepseekOcr2Config:
    """The released DeepSeek-OCR-2 shapes (3.39 B parameters, 2.42 B of them routed experts)."""
    return DeepseekOcr2Config(
        image_token_id=FULL_IMAGE_TOKEN_ID,
        vision_config={
            "sam_config": {},  # SAM ViT-B defaults: 768 hidden, 12 layers, patch 16, 1024 px
            "encoder_config": {
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "rope_theta": 1000000.0,  # the official encoder's (Qwen2-0.5B's), not the default 10000
            },
        },
        text_config=_moe_text_config(
            vocab_size=FULL_VOCAB,
            hidden_size=1280,
            num_hidden_layers=12,
            num_attention_heads=10,
            intermediate_size=6848,
            moe_intermediate_size=896,
            n_routed_experts=64,
            num_experts_per_tok=6,
        ),
    )


def tiny_config(
    vocab_size: int, image_token_id: int, bos_token_id: int, eos_token_id: int, pad_token_id: int
):
    """Same architecture at ~0.5 M parameters.

    The vision tower has two learned query tables (144 and 256 entries), so the tiny SAM must keep
    size/patch = 64 (global, 128 px at patch 2) and tile/patch = 48 (96 px tiles).
    """
    return DeepseekOcr2Config(
        image_token_id=image_token_id,
        vision_config={
            "sam_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 128,
                "patch_size": 2,
                "output_channels": 16,
                "window_size": 8,
                "global_attn_indexes": [],  # 4096 patches: global attention would dominate CPU time
                "downsample_channels": [32, 64],
            },
            "encoder_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": vocab_size,
            },
        },
        text_config=_moe_text_config(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            moe_intermediate_size=32,
            n_routed_experts=4,
            num_experts_per_tok=2,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            max_position_embeddings=1024,
        ),
    )


def _moe_text_config(num_hidden_layers: int, **kwargs) -> dict:
    # DeepSeek-3B-MoE: the first layer is dense, the rest mixture-of-experts with 2 shared experts.
    return {
        "num_key_value_heads": kwargs["num_attention_heads"],
        "n_shared_experts": 2,
        "mlp_layer_types": ["dense"] + ["sparse"] * (num_hidden_layers - 1),
        "num_hidden_layers": num_hidden_layers,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "max_position_embeddings": 8192,
        **kwargs,
    }

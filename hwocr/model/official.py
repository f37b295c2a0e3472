"""DeepSeek's own hub layout (deepseek-ai/DeepSeek-OCR-2) read by transformers' native classes.

The official repository ships remote code: a `deepseek_vl_v2` config.json with `language_config`
and a hand-written `vision_config`, the `DeepseekVLV2Processor` files and the official weight key
names. Its weights load through transformers' own conversion mapping ("deepseek_ocr2" in
conversion_mapping.py); what remains is turning its config into a `DeepseekOcr2Config`, as
transformers' conversion script does, and building the processor that AutoProcessor cannot.
"""

import json

from transformers import AutoTokenizer, DeepseekOcr2Config, DeepseekOcr2Processor
from transformers.utils import cached_file, is_torchvision_available

OFFICIAL_MODEL_TYPE = "deepseek_vl_v2"
# The Qwen2-0.5B-shaped encoder: the official builder hard-codes these and its config.json states
# only the width. A checkpoint may state the others under vision_config.width["qwen2-0-5b"].
ENCODER_DEFAULTS = {"layers": 24, "heads": 14, "kv_heads": 2, "intermediate_size": 4864}
# Text fields of the official config that the native text config does not have.
TEXT_DEAD_KEYS = (
    "auto_map",
    "architectures",
    "lm_head",
    "rm_head",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "use_mla",
    "v_head_dim",
    "first_k_dense_replace",
)


def read_config(source: str, revision: str | None) -> dict:
    """config.json of a hub id (at the revision) or a local directory; {} where there is none."""
    path = cached_file(source, "config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def is_official(config: dict) -> bool:
    return config.get("model_type") == OFFICIAL_MODEL_TYPE and "language_config" in config


def native_config(official: dict) -> DeepseekOcr2Config:
    """The official config.json as a `DeepseekOcr2Config` (transformers' convert_config, plus the
    encoder sizes a reduced checkpoint states)."""
    text = {k: v for k, v in official["language_config"].items() if k not in TEXT_DEAD_KEYS}
    for mla_field in ("kv_lora_rank", "q_lora_rank"):  # None in the official file: MHA, not MLA
        if text.get(mla_field, 0) is None:
            del text[mla_field]
    dense = official["language_config"].get("first_k_dense_replace", 0)
    text["mlp_layer_types"] = ["dense"] * dense + ["sparse"] * (text["num_hidden_layers"] - dense)
    width = official["vision_config"]["width"]
    sam, qwen = width["sam_vit_b"], {**ENCODER_DEFAULTS, **width["qwen2-0-5b"]}
    vision = {
        "sam_config": {
            "hidden_size": sam["width"],
            "num_hidden_layers": sam["layers"],
            "num_attention_heads": sam["heads"],
            "global_attn_indexes": sam["global_attn_indexes"],
            # the official SAM hard-codes Conv2d(256, 512) and Conv2d(512, 896); config.json's
            # "downsample_channels": [512, 1024] is not what its code builds
            "downsample_channels": [512, qwen["dim"]],
        },
        "encoder_config": {
            "hidden_size": qwen["dim"],
            "num_hidden_layers": qwen["layers"],
            "num_attention_heads": qwen["heads"],
            "num_key_value_heads": qwen["kv_heads"],
            "intermediate_size": qwen["intermediate_size"],
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "vocab_size": 1,  # the official encoder deletes its token embedding
        },
    }
    return DeepseekOcr2Config(text_config=text, vision_config=vision)


def native_processor(source: str, revision: str | None) -> DeepseekOcr2Processor:
    """A DeepseekOcr2Processor from the official repo's tokenizer files and the port's image
    processor (its defaults are the official ones: mean/std 0.5, pad 127, 1024 global, 768 tiles).

    AutoProcessor cannot build one: the repo's processor_config.json names the remote
    DeepseekVLV2Processor, so AutoProcessor returns the bare tokenizer. AutoTokenizer picks
    TokenizersBackend for this model type (transformers' list of hub configs whose tokenizer class
    is wrong), which keeps tokenizer.json's byte-level pre-tokenizer.
    """
    from transformers import DeepseekOcr2ImageProcessor, DeepseekOcr2ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    # The backend AutoProcessor would pick for the community conversion.
    image_processor = (
        DeepseekOcr2ImageProcessor() if is_torchvision_available() else DeepseekOcr2ImageProcessorPil()
    )
    return DeepseekOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)

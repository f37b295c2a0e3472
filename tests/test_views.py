"""hwocr's DeepSeek-OCR-2 views follow DeepSeek's own preprocessing (hwocr/inputs/views.py), checked
against the PIL calls DeepSeek's infer() makes; tests/test_official_ocr2.py runs DeepSeek's code
itself. Also: deepseek-ai's own config layout read as a native config, and the loader's guards."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from hwocr.config import ModelConfig
from hwocr.errors import ModelLoadError
from hwocr.inputs import encode
from hwocr.inputs.views import global_view_shift
from hwocr.model.architecture import full_size_config
from hwocr.model.families.deepseek_ocr2 import require_every_weight
from hwocr.model.load import load_processor, warn_unpinned
from hwocr.model.official import is_official, native_config

PROMPT = "<image>\nFree OCR."
# wide, tall and square; (1600, 163) and (128, 125) leave a margin of 4k+3 at side 128, where
# ImageOps.pad centres one pixel further than the port
SIZES = [(1600, 163), (1603, 120), (300, 110), (120, 1600), (128, 125), (50, 50)]


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    generator = np.random.default_rng(seed)
    image = Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(image).text((2, size[1] // 2 - 5), "Việt", fill="black")
    return image


def deepseek_transform(image: Image.Image) -> torch.Tensor:
    """infer()'s BasicImageTransform: ToTensor, then Normalize(0.5, 0.5)."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (array - 0.5) / 0.5


def processor_for(tiny_model_config, mode: str):
    cfg = ModelConfig(**{**vars(tiny_model_config), "image_mode": mode})
    return load_processor(cfg)


@pytest.mark.parametrize("mode", ["base", "dynamic"])
def test_global_view_is_placed_as_imageops_pad_places_it(tiny_model_config, mode):
    processor = processor_for(tiny_model_config, mode)
    side = processor.image_processor.size["height"]
    assert any(global_view_shift(*size, side)[0] for size in SIZES)  # the case the adapter exists for
    for seed, size in enumerate(SIZES):
        image = picture(size, seed)
        ours = encode(processor, [image], [PROMPT], return_tensors="pt")["pixel_values"][0]
        theirs = deepseek_transform(ImageOps.pad(image, (side, side), color=(127, 127, 127)))
        assert torch.allclose(ours, theirs, atol=1e-6), (size, float((ours - theirs).abs().max()))


def test_small_mode_squashes_like_infer(tiny_model_config):
    """infer(image_size <= 768, crop_mode=False): image.resize((side, side)), no padding."""
    processor = processor_for(tiny_model_config, "small")
    side = processor.image_processor.size["height"]
    for seed, size in enumerate(SIZES):
        image = picture(size, seed)
        ours = encode(processor, [image], [PROMPT], return_tensors="pt")
        theirs = deepseek_transform(image.resize((side, side)))
        assert torch.allclose(ours["pixel_values"][0], theirs, atol=1e-6), size
        assert int(ours["num_local_patches"][0]) == 0


def test_exif_orientation_is_applied_like_infer(tiny_model_config, tmp_path):
    processor = processor_for(tiny_model_config, "dynamic")
    upright = picture((400, 60), 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: shown after turning it a quarter right
    path = tmp_path / "rotated.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    with Image.open(path) as stored:
        rotated = stored.convert("RGB")
    assert rotated.size == (60, 400)
    ours = encode(processor, [rotated], [PROMPT], return_tensors="pt")
    reference = encode(processor, [upright], [PROMPT], return_tensors="pt")
    assert ours["input_ids"].tolist() == reference["input_ids"].tolist()
    assert torch.equal(ours["pixel_values"], reference["pixel_values"])
    assert torch.equal(ours["pixel_values_local"], reference["pixel_values_local"])


# deepseek-ai/DeepSeek-OCR-2's config.json fields that the conversion reads (values of the release)
OFFICIAL_CONFIG = {
    "model_type": "deepseek_vl_v2",
    "architectures": ["DeepseekOCR2ForCausalLM"],
    "language_config": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_size": 1280,
        "intermediate_size": 6848,
        "kv_lora_rank": None,
        "lm_head": True,
        "max_position_embeddings": 8192,
        "moe_intermediate_size": 896,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_attention_heads": 10,
        "num_experts_per_tok": 6,
        "num_hidden_layers": 12,
        "num_key_value_heads": 10,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "rm_head": False,
        "topk_method": "greedy",
        "use_mla": False,
        "v_head_dim": 0,
        "vocab_size": 129280,
    },
    "vision_config": {
        "image_size": 1024,
        "width": {
            "qwen2-0-5b": {"dim": 896},
            "sam_vit_b": {
                "downsample_channels": [512, 1024],  # what the file says; the code builds 512, 896
                "global_attn_indexes": [2, 5, 8, 11],
                "heads": 12,
                "layers": 12,
                "width": 768,
            },
        },
    },
}


def test_official_config_reads_as_the_released_architecture():
    assert is_official(OFFICIAL_CONFIG)
    ours, full = native_config(OFFICIAL_CONFIG), full_size_config()
    for part in ("text_config", "vision_config"):
        mine, reference = getattr(ours, part).to_dict(), getattr(full, part).to_dict()
        if part == "text_config":  # the file's dtype, and group routing that greedy top-k ignores
            for key in ("dtype", "n_group", "topk_group"):
                mine[key] = reference[key] = None
        else:  # the encoder has no token embedding: its vocabulary size is unused
            mine["encoder_config"]["vocab_size"] = reference["encoder_config"]["vocab_size"] = None
        assert mine == reference, part
    assert ours.image_token_id == full.image_token_id == 128815


def test_official_load_refuses_unmapped_weights():
    cfg = ModelConfig(name="deepseek_ocr2", source="deepseek-ai/DeepSeek-OCR-2", revision="a" * 40)
    require_every_weight(cfg, {"missing_keys": set(), "unexpected_keys": [], "mismatched_keys": []})
    with pytest.raises(ModelLoadError, match=r"missing_keys: \['model.layers.0.mlp.experts.gate_up_proj'\]"):
        require_every_weight(cfg, {"missing_keys": {"model.layers.0.mlp.experts.gate_up_proj"}})


@pytest.mark.parametrize(
    ("source", "revision", "warns"),
    [
        ("deepseek-community/DeepSeek-OCR-2", "main", True),
        ("deepseek-community/DeepSeek-OCR-2", None, True),
        ("deepseek-ai/DeepSeek-OCR-2", "aaa02f3811945a91062062994c5c4a3f4c0af2b0", False),
    ],
)
def test_unpinned_hub_revision_warns_with_the_pin_command(caplog, source, revision, warns):
    caplog.set_level(logging.WARNING, logger="hwocr.model.load")
    warn_unpinned(ModelConfig(name="deepseek_ocr2", source=source, revision=revision))
    messages = [r.getMessage() for r in caplog.records]
    assert bool(messages) == warns, messages
    if warns:
        assert "model_info" in messages[0] and source in messages[0] and "model.revision=" in messages[0]


def test_local_directory_needs_no_pin(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="hwocr.model.load")
    warn_unpinned(ModelConfig(name="deepseek_ocr2", source=str(tmp_path), revision=None))
    assert not caplog.records

"""DeepSeek-OCR v1: the hub's remote code (no native transformers class), LoRA only."""

import torch

from hwocr.config import ModelConfig
from hwocr.model.families.base import ModelFamily

_PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class DeepseekOcr1(ModelFamily):
    name = "ocr1"
    model_types = ("deepseek_vl_v2",)
    not_quantized = ("model.sam_model", "model.vision_model", "model.projector", "lm_head")  # SAM, CLIP-L
    language_model_targets = rf"model\.layers\.\d+\..*\.{_PROJECTIONS}"  # remote code: model.layers.N...
    vision_parts = {"encoder": ("model.vision_model",), "tower": ("model.sam_model", "model.vision_model")}
    tower_without_grad = True  # v1's remote code runs its encoders under no_grad

    def load_processor(self, cfg: ModelConfig, source: str, revision: str | None):
        from hwocr.model.ocr1 import Ocr1Processor

        return Ocr1Processor.from_pretrained(
            source,
            revision=revision,
            image_mode=cfg.image_mode,
            image_size=cfg.image_size,
            tile_size=cfg.tile_size,
            trust_remote_code=cfg.trust_remote_code,
        )

    def model_class(self, cfg: ModelConfig):
        from transformers import AutoModel  # v1's auto_map names its remote class under AutoModel

        return AutoModel

    def before_load(self, cfg: ModelConfig) -> None:
        from hwocr.preflight import require_ocr1_transformers

        require_ocr1_transformers()

    def after_load(self, model, cfg: ModelConfig, hardware) -> None:
        """A 4-bit fp16 load casts v1's CLIP `position_ids` buffer (an arange) to fp16, and its
        embedding lookup then fails; the values are exact small integers, so cast them back."""
        for module in model.modules():
            ids = getattr(module, "position_ids", None)
            if isinstance(ids, torch.Tensor) and ids.is_floating_point():
                module.position_ids = ids.round().long()

    def vision_tower(self, model):
        return model.model.sam_model


FAMILY = DeepseekOcr1()

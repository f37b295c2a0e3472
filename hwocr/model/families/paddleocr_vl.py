"""PaddleOCR-VL (NaViT-style vision encoder + ERNIE-4.5-0.3B) through transformers' native classes."""

from pathlib import Path

from hwocr.config import ModelConfig
from hwocr.inputs.settings import set_up_chat_processor
from hwocr.model.families.base import ModelFamily, pil_processor

_PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class PaddleOcrVl(ModelFamily):
    name = "paddleocr_vl"
    model_types = ("paddleocr_vl",)
    not_quantized = ("model.visual", "model.projector", "lm_head")
    language_model_targets = rf"model\.language_model\.layers\.\d+\..*\.{_PROJECTIONS}"
    # encoder = the vision transformer's layers; tower = the whole vision model (patch and position
    # embeddings too) and the projector
    vision_parts = {
        "encoder": ("model.visual.vision_model.encoder",),
        "tower": ("model.visual", "model.projector"),
    }
    fully_trained = ("model.language_model", "model.projector", "lm_head")

    def tiny_checkpoint(self, path: Path) -> Path:
        from hwocr.model.paddleocr_vl.tiny import ensure_tiny_checkpoint

        return ensure_tiny_checkpoint(path)

    def load_processor(self, cfg: ModelConfig, source: str, revision: str | None):
        from transformers import PaddleOCRVLImageProcessorPil, PaddleOCRVLProcessor

        processor = pil_processor(
            PaddleOCRVLProcessor, PaddleOCRVLImageProcessorPil, source, revision, cfg.trust_remote_code
        )
        return set_up_chat_processor(processor)

    def model_class(self, cfg: ModelConfig):
        from transformers import PaddleOCRVLForConditionalGeneration

        return PaddleOCRVLForConditionalGeneration

    def vision_tower(self, model):
        return model.model.visual


FAMILY = PaddleOcrVl()

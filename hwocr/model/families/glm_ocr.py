"""GLM-OCR (CogViT-style vision tower + GLM-0.5B decoder, zai-org/GLM-OCR) through transformers'
native `glm_ocr` classes: the model card's chat template and prompt, its processor without the video
half (hwocr/model/glm_ocr/processor.py), answers appended after the generation prompt for training
(hwocr/model/glm_ocr/inputs.py)."""

from pathlib import Path

from hwocr.config import ModelConfig
from hwocr.inputs.settings import set_up_chat_processor
from hwocr.model.families.base import ModelFamily, pil_processor


class GlmOcr(ModelFamily):
    name = "glm_ocr"
    model_types = ("glm_ocr",)
    # the vision tower (its merger, the projector, included) and the output head stay 16-bit
    not_quantized = ("model.visual", "lm_head")
    # the decoder's attention and its fused gate/up and down projections (the vision blocks have no
    # q/k/v/o_proj, but their MLP reuses gate/up/down names: anchored on the language model)
    language_model_targets = (
        r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate_up|down)_proj)"
    )
    # encoder = the vision transformer's blocks; tower = all of the vision model: patch embedding,
    # blocks, downsampling and the merger that projects into the decoder
    vision_parts = {"encoder": ("model.visual.blocks",), "tower": ("model.visual",)}
    # full fine-tuning trains the decoder and its head, as LLaMA-Factory's full SFT does by default
    # (freeze_vision_tower, freeze_multi_modal_projector), plus what lora.vision names
    fully_trained = ("model.language_model", "lm_head")

    def tiny_checkpoint(self, path: Path) -> Path:
        from hwocr.model.glm_ocr.tiny import ensure_tiny_checkpoint

        return ensure_tiny_checkpoint(path)

    def load_processor(self, cfg: ModelConfig, source: str, revision: str | None):
        from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

        from hwocr.model.glm_ocr.inputs import answer_after_prompt
        from hwocr.model.glm_ocr.processor import GlmOcrProcessor

        processor = pil_processor(GlmOcrProcessor, Glm46VImageProcessorPil, source, revision, remote=False)
        return set_up_chat_processor(processor, training_example=answer_after_prompt)

    def model_class(self, cfg: ModelConfig):
        from transformers import GlmOcrForConditionalGeneration

        return GlmOcrForConditionalGeneration

    def vision_tower(self, model):
        return model.model.visual


FAMILY = GlmOcr()

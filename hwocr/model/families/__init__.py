"""Model families: one object per `model.family` that the shared pipeline asks instead of branching.

To add a family: a module here with a ModelFamily subclass instance named FAMILY, an entry in
FAMILIES below, its traits in hwocr.config.FAMILIES, and a conf/model/*.yaml. Code of the family's own
(configs, processor, tiny checkpoint) goes in a package named after it, as hwocr/model/paddleocr_vl/
and hwocr/model/glm_ocr/.
"""

import torch
from peft import PeftModel

from hwocr.model.families.base import ModelFamily
from hwocr.model.families.deepseek_ocr1 import FAMILY as DEEPSEEK_OCR1
from hwocr.model.families.deepseek_ocr2 import FAMILY as DEEPSEEK_OCR2
from hwocr.model.families.glm_ocr import FAMILY as GLM_OCR
from hwocr.model.families.paddleocr_vl import FAMILY as PADDLEOCR_VL

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (DEEPSEEK_OCR2, DEEPSEEK_OCR1, PADDLEOCR_VL, GLM_OCR)}

__all__ = ["FAMILIES", "ModelFamily", "family", "family_of"]


def family(name: str) -> ModelFamily:
    """The family of `model.family=name` (validated by hwocr.config, so known here)."""
    return FAMILIES[name]


def family_of(model: torch.nn.Module) -> ModelFamily:
    """The family of a loaded model (PEFT-wrapped or not), by its config's model_type. A model_type
    no family names is v1's remote code, whose model_type is the checkpoint's own."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    model_type = getattr(base.config, "model_type", "")
    for candidate in FAMILIES.values():
        if model_type in candidate.model_types:
            return candidate
    return DEEPSEEK_OCR1

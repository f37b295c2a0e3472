"""What a model family implements: loading, the inputs' style, and what LoRA and full fine-tuning adapt.

A family is one object (a ModelFamily subclass instance, registered in families/__init__.py) that the
shared pipeline asks instead of branching on `model.family`. Its config-side traits (image modes, the
settings it supports) are `hwocr.config.FAMILIES[name]`, which needs no torch.
"""

from pathlib import Path

import torch
from transformers import AutoProcessor, AutoTokenizer, PreTrainedModel, ProcessorMixin

from hwocr.config import FAMILIES, FamilyTraits, ModelConfig


class ModelFamily:
    name: str = ""  # model.family
    model_types: tuple[str, ...] = ()  # config.model_type of the models it loads
    # Module-name prefixes kept in 16-bit under 4-bit loading (bitsandbytes' llm_int8_skip_modules,
    # matched from the start of the name): the vision side and the output head.
    not_quantized: tuple[str, ...] = ()
    # A full-match regex over module names: the language model's projections (LoRA's default targets).
    language_model_targets: str = ""
    # lora.vision -> module-name prefixes of the vision parts that adapt (LoRA or full fine-tuning).
    vision_parts: dict[str, tuple[str, ...]] = {}
    # Module-name prefixes trained under full fine-tuning (lora=none) besides the vision parts.
    fully_trained: tuple[str, ...] = ()
    # Whether the model runs its vision tower under no_grad itself (else hwocr wraps a frozen tower).
    tower_without_grad: bool = False

    @property
    def traits(self) -> FamilyTraits:
        return FAMILIES[self.name]

    # --- loading ---------------------------------------------------------------------------------
    def tiny_checkpoint(self, path: Path) -> Path:
        """Build (or reuse) the family's tiny random checkpoint at `path` (model.build_tiny)."""
        raise NotImplementedError(f"model.family={self.name} has no tiny checkpoint")

    def load_processor(self, cfg: ModelConfig, source: str, revision: str | None) -> ProcessorMixin:
        """The processor, set up for hwocr's input style (hwocr/inputs/settings.py)."""
        return AutoProcessor.from_pretrained(
            source, revision=revision, trust_remote_code=cfg.trust_remote_code
        )

    def model_class(self, cfg: ModelConfig):
        raise NotImplementedError

    def from_pretrained_kwargs(self, cfg: ModelConfig, source: str, revision: str | None) -> dict:
        """Extra from_pretrained arguments (e.g. a config read from another layout)."""
        return {}

    def check_loaded(self, cfg: ModelConfig, source: str, revision: str | None, info: dict) -> None:
        """Refuse a load whose loading info says weights were missed (where that can happen)."""

    def before_load(self, cfg: ModelConfig) -> None:
        """Checks of the environment before any weight is read (e.g. a transformers version)."""

    def after_load(self, model: PreTrainedModel, cfg: ModelConfig, hardware) -> None:
        """Fix-ups and hwocr's speedups on the loaded model."""

    # --- adaptation ------------------------------------------------------------------------------
    def vision_tower(self, model: PreTrainedModel) -> torch.nn.Module:
        """The vision encoder (its dtype is the pixels' dtype; frozen, it runs without grad)."""
        raise NotImplementedError


def pil_processor(processor_class, image_processor_class, source: str, revision: str | None, remote: bool):
    """`processor_class` assembled from its saved tokenizer (chat template included) and the PIL
    backend of its image processor. AutoProcessor would pick the torchvision backend, which needs a
    working torchvision (often missing or CUDA-only) and rounds pixels differently on each machine."""
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=remote)
    image_processor = image_processor_class.from_pretrained(source, revision=revision)
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )

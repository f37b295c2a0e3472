"""DeepSeek-OCR-2 through transformers' native classes: the default family, with hwocr's speedups."""

from pathlib import Path

from transformers import AutoProcessor

from hwocr.config import ModelConfig
from hwocr.errors import ModelLoadError
from hwocr.inputs.settings import set_up_processor
from hwocr.model.families.base import ModelFamily
from hwocr.model.official import is_official, native_config, native_processor, read_config

_PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class DeepseekOcr2(ModelFamily):
    name = "ocr2"
    model_types = ("deepseek_ocr2",)
    not_quantized = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    # the vision encoder reuses these names, so the regex anchors on the language model
    language_model_targets = rf".*language_model.*\.{_PROJECTIONS}"  # model.language_model.layers.N...
    # `encoder` is what Unsloth's finetune_vision_layers adapts: the Qwen2-like encoder (its learned
    # queries too, under full fine-tuning); `tower` adds SAM.
    vision_parts = {
        "encoder": ("model.vision_tower.vision_encoder", "model.vision_tower.query_"),
        "tower": ("model.vision_tower",),
    }
    fully_trained = ("model.language_model", "model.multi_modal_projector", "lm_head", "model.view_separator")

    def tiny_checkpoint(self, path: Path) -> Path:
        from hwocr.model.tiny import ensure_tiny_checkpoint

        return ensure_tiny_checkpoint(path)

    def official_layout(self, cfg: ModelConfig, source: str, revision: str | None) -> bool:
        """deepseek-ai's own repo layout (remote-code config), which hwocr reads with native classes."""
        if cfg.build_tiny:
            return False
        try:
            return is_official(read_config(source, revision))
        except (OSError, ValueError):
            return False  # no config.json to read: the load itself reports it

    def load_processor(self, cfg: ModelConfig, source: str, revision: str | None):
        if self.official_layout(cfg, source, revision):
            processor = native_processor(source, revision)
        else:
            processor = AutoProcessor.from_pretrained(
                source, revision=revision, trust_remote_code=cfg.trust_remote_code
            )
        return set_up_processor(processor, cfg)

    def model_class(self, cfg: ModelConfig):
        from transformers import DeepseekOcr2ForConditionalGeneration  # transformers >= 5.17

        return DeepseekOcr2ForConditionalGeneration

    def from_pretrained_kwargs(self, cfg: ModelConfig, source: str, revision: str | None) -> dict:
        # deepseek-ai's own repo: its remote-code config as a native config; the weights' official
        # key names go through transformers' conversion mapping ("deepseek_ocr2").
        if self.official_layout(cfg, source, revision):
            return {"config": native_config(read_config(source, revision))}
        return {}

    def check_loaded(self, cfg: ModelConfig, source: str, revision: str | None, info: dict) -> None:
        if self.official_layout(cfg, source, revision):
            require_every_weight(cfg, info)

    def after_load(self, model, cfg: ModelConfig, hardware) -> None:
        if cfg.memory_optimizations:
            optimize_loaded_model(model, hardware)

    def vision_tower(self, model):
        return model.model.vision_tower


def require_every_weight(cfg: ModelConfig, info: dict) -> None:
    """deepseek-ai's layout: a renamed key that the conversion mapping misses would load as random
    weights."""
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems:
        raise ModelLoadError(
            f"model.source='{cfg.source}' (deepseek-ai's layout) did not map onto the native model: "
            + "; ".join(f"{k}: {sorted(map(str, v))[:5]} ({len(v)})" for k, v in problems.items())
            + ". transformers' conversion mapping for deepseek_ocr2 changed? Pin transformers==5.17.0 or "
            "use model.source=deepseek-community/DeepSeek-OCR-2"
        )


def optimize_loaded_model(model, hardware) -> None:
    """NF4 routed experts under 4-bit loading; SAM attention without a materialised bias; the vision
    tower run in chunks of images."""
    from hwocr.model.experts import quantize_experts
    from hwocr.model.vision import VISION_CHUNK, chunk_vision_tower, fold_sam_rel_pos

    if hardware.load_in_4bit:
        quantize_experts(model)
    fold_sam_rel_pos(model.model.vision_tower)
    chunk_vision_tower(model.model.vision_tower, VISION_CHUNK)


FAMILY = DeepseekOcr2()

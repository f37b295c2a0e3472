"""Load DeepSeek-OCR(-2) and its processor from a hub id (pinned revision) or a local directory."""

import logging
import re
from pathlib import Path

import torch
from transformers import AutoProcessor, BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

from hwocr.config import DTYPES, HardwareConfig, ModelConfig, is_local_dir
from hwocr.errors import ModelLoadError
from hwocr.inputs.settings import set_up_processor
from hwocr.model.official import is_official, native_config, native_processor, read_config
from hwocr.preflight import require_ocr1_transformers

log = logging.getLogger(__name__)

# Kept in 16-bit under 4-bit loading: the frozen vision tower and projector (quality, small) and the
# output head. Matched from the start of the module name; this replaces bitsandbytes' default.
NOT_QUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# v1's remote code: SAM, CLIP-L, the projector and the output head.
OCR1_NOT_QUANTIZED = ["model.sam_model", "model.vision_model", "model.projector", "lm_head"]


def torch_dtype(hardware: HardwareConfig) -> torch.dtype:
    return getattr(torch, DTYPES[hardware.dtype])


def resolve_source(cfg: ModelConfig) -> tuple[str, str | None]:
    """(path or hub id, revision). A local directory wins; its revision is meaningless."""
    if cfg.build_tiny:
        from hwocr.model.tiny import ensure_tiny_checkpoint  # DeepSeek-OCR-2 classes: transformers 5

        return str(ensure_tiny_checkpoint(Path(cfg.source).resolve())), None
    if is_local_dir(cfg.source):
        return str(Path(cfg.source).expanduser().resolve()), None
    return cfg.source, cfg.revision


def load_processor(cfg: ModelConfig) -> ProcessorMixin:
    source, revision = resolve_source(cfg)
    if cfg.family == "ocr1":
        from hwocr.model.ocr1 import Ocr1Processor

        with _explained_load_errors(cfg):
            return Ocr1Processor.from_pretrained(
                source,
                revision=revision,
                image_mode=cfg.image_mode,
                image_size=cfg.image_size,
                tile_size=cfg.tile_size,
                trust_remote_code=cfg.trust_remote_code,
            )
    with _explained_load_errors(cfg):
        if official_layout(cfg, source, revision):
            processor = native_processor(source, revision)
        else:
            processor = AutoProcessor.from_pretrained(
                source, revision=revision, trust_remote_code=cfg.trust_remote_code
            )
    return set_up_processor(processor, cfg)


def official_layout(cfg: ModelConfig, source: str, revision: str | None) -> bool:
    """deepseek-ai's own repo layout (remote-code config), which hwocr reads with native classes."""
    if cfg.family != "ocr2" or cfg.build_tiny:
        return False
    try:
        return is_official(read_config(source, revision))
    except (OSError, ValueError):
        return False  # no config.json to read: the load itself reports it


def quantization_config(cfg: ModelConfig, hardware: HardwareConfig) -> BitsAndBytesConfig | None:
    """NF4 with double quantization (QLoRA) when the hardware profile asks for 4-bit."""
    if not hardware.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(hardware),
        llm_int8_skip_modules=OCR1_NOT_QUANTIZED if cfg.family == "ocr1" else NOT_QUANTIZED,
    )


def warn_unpinned(cfg: ModelConfig) -> None:
    """A hub id at a branch (or no revision) is whatever the repo holds that day."""
    if cfg.build_tiny or is_local_dir(cfg.source) or re.fullmatch(r"[0-9a-f]{40}", cfg.revision or ""):
        return
    log.warning(
        "model.source=%s at revision %s is unpinned: the hub repo can change its weights, tokenizer or "
        "config under you, and runs stop being comparable. Pin the commit it has today: "
        "python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('%s').sha)\" "
        "then pass model.revision=<that sha> (or set it in conf/model/).",
        cfg.source,
        cfg.revision or "(none: the default branch)",
        cfg.source,
    )


def load_model(
    cfg: ModelConfig, hardware: HardwareConfig, device_map=None, backend: str = "hf"
) -> PreTrainedModel:
    """Load weights in the hardware profile's dtype, 4-bit NF4 when it asks for QLoRA."""
    warn_unpinned(cfg)
    source, revision = resolve_source(cfg)
    if device_map is None:
        # cuda: this process's GPU (set per rank under DDP). cpu: said outright, since 4-bit loading
        # otherwise moves the weights to a GPU it finds, away from the batches.
        device_map = {"": torch.cuda.current_device() if hardware.device == "cuda" else "cpu"}
    if cfg.family == "ocr1":
        require_ocr1_transformers()
    official = official_layout(cfg, source, revision)
    if backend == "unsloth":
        if official:
            raise ModelLoadError(
                f"backend=unsloth cannot read deepseek-ai's own repo layout ('{cfg.source}': remote-code "
                "config). Use backend=hf, or the transformers-native conversion: "
                "model.source=deepseek-community/DeepSeek-OCR-2"
            )
        from hwocr.model.unsloth import load_with_unsloth

        model = load_with_unsloth(
            cfg, torch_dtype(hardware), source, revision, quantization_config(cfg, hardware)
        )
    else:
        # deepseek-ai's own repo: its remote-code config as a native config; the weights' official
        # key names go through transformers' conversion mapping ("deepseek_ocr2").
        config = {"config": native_config(read_config(source, revision))} if official else {}
        with _explained_load_errors(cfg):
            model, info = _model_class(cfg).from_pretrained(
                source,
                **config,
                revision=revision,
                dtype=torch_dtype(hardware),
                quantization_config=quantization_config(cfg, hardware),
                device_map=device_map,
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,  # never unpickle downloaded weights (hwocr/model/weights.py)
                output_loading_info=True,
            )
        if official:  # a renamed key that the mapping misses would load as random weights
            _require_every_weight(cfg, info)
    log.info(
        "loaded %s (%s, %s%s, backend %s, attention %s)",
        source,
        revision or "local",
        hardware.dtype,
        ", 4-bit" if hardware.load_in_4bit else "",
        backend,
        getattr(model.config, "_attn_implementation", None),
    )
    if cfg.family == "ocr1":
        _restore_integer_position_ids(model)
    if cfg.memory_optimizations and cfg.family == "ocr2":
        optimize_loaded_model(model, hardware)
    return model


def _require_every_weight(cfg: ModelConfig, info: dict) -> None:
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems:
        raise ModelLoadError(
            f"model.source='{cfg.source}' (deepseek-ai's layout) did not map onto the native model: "
            + "; ".join(f"{k}: {sorted(map(str, v))[:5]} ({len(v)})" for k, v in problems.items())
            + ". transformers' conversion mapping for deepseek_ocr2 changed? Pin transformers==5.17.0 or "
            "use model.source=deepseek-community/DeepSeek-OCR-2"
        )


def _restore_integer_position_ids(model: torch.nn.Module) -> None:
    """A 4-bit fp16 load casts v1's CLIP `position_ids` buffer (an arange) to fp16, and its
    embedding lookup then fails; the values are exact small integers, so cast them back."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_floating_point():
            module.position_ids = ids.round().long()


def _model_class(cfg: ModelConfig):
    if cfg.family == "ocr1":
        from transformers import AutoModel  # v1's auto_map names its remote class under AutoModel

        return AutoModel
    from transformers import DeepseekOcr2ForConditionalGeneration  # transformers >= 5.17

    return DeepseekOcr2ForConditionalGeneration


def optimize_loaded_model(model: PreTrainedModel, hardware: HardwareConfig) -> None:
    """NF4 routed experts under 4-bit loading; SAM attention without a materialised bias; the vision
    tower run in chunks of images."""
    from hwocr.model.experts import quantize_experts
    from hwocr.model.vision import VISION_CHUNK, chunk_vision_tower, fold_sam_rel_pos

    if hardware.load_in_4bit:
        quantize_experts(model)
    fold_sam_rel_pos(model.model.vision_tower)
    chunk_vision_tower(model.model.vision_tower, VISION_CHUNK)


class _explained_load_errors:
    """Turn hub/IO failures into one message that names the source and the way out."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, (OSError, ValueError)):
            return False
        where = f"'{self.cfg.source}'" + (f" at revision {self.cfg.revision}" if self.cfg.revision else "")
        raise ModelLoadError(
            f"could not load model.source={where}: {exc}\n"
            "Either download it first (`hf download <id> --revision <rev> --local-dir DIR`) and pass "
            "model.source=DIR, or run offline with the tiny model: `python -m hwocr.run +experiment=demo`."
        ) from exc

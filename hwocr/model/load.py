"""Load DeepSeek-OCR(-2) and its processor from a hub id (pinned revision) or a local directory."""

import logging
from pathlib import Path

import torch
from transformers import AutoProcessor, BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

from hwocr.config import DTYPES, HardwareConfig, ModelConfig, is_local_dir
from hwocr.errors import ModelLoadError
from hwocr.preflight import require_ocr1_transformers

log = logging.getLogger(__name__)

# Kept in 16-bit under 4-bit loading: the frozen vision tower and projector (quality, small) and the
# output head. Matched from the start of the module name; this replaces bitsandbytes' default.
NOT_QUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# v1's remote code: SAM, CLIP-L, the projector and the output head.
OCR1_NOT_QUANTIZED = ["model.sam_model", "model.vision_model", "model.projector", "lm_head"]


def torch_dtype(hardware: HardwareConfig) -> torch.dtype:
    return getattr(torch, DTYPES[hardware.dtype])


def image_mode_settings(cfg: ModelConfig) -> dict:
    """Image-processor settings for a mode.

    The processor counts image tokens from its *instance* size and tile_size, so the mode is set on
    the processor itself rather than passed per call (a per-call size gives "Image features and
    image tokens do not match").
    """
    if cfg.image_mode == "base":
        side, tile, crop = cfg.image_size, cfg.image_size, False
    elif cfg.image_mode == "small":
        side, tile, crop = cfg.tile_size, cfg.tile_size, False
    else:  # gundam: a global view plus tile crops of wide images
        side, tile, crop = cfg.image_size, cfg.tile_size, True
    return {"size": {"height": side, "width": side}, "tile_size": tile, "crop_to_patches": crop}


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
        processor = AutoProcessor.from_pretrained(
            source, revision=revision, trust_remote_code=cfg.trust_remote_code
        )
    settings = image_mode_settings(cfg)
    # size and tile_size are read from the instance when image tokens are counted...
    processor.image_processor.size = settings["size"]
    processor.image_processor.tile_size = settings["tile_size"]
    processor.image_processor.crop_to_patches = settings["crop_to_patches"]
    # ...but the processor's class-level default crop_to_patches=True beats the instance attribute,
    # so it must be passed on every call: encode() does that.
    processor.hwocr_call_kwargs = {"crop_to_patches": settings["crop_to_patches"]}
    processor.tokenizer.padding_side = "left"  # batched generation
    return processor


def encode(processor: ProcessorMixin, images: list, texts: list[str], **kwargs):
    """Run the processor with the image mode chosen in load_processor."""
    return processor(images=images, text=texts, **getattr(processor, "hwocr_call_kwargs", {}), **kwargs)


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


def load_model(
    cfg: ModelConfig, hardware: HardwareConfig, device_map=None, backend: str = "hf"
) -> PreTrainedModel:
    """Load weights in the hardware profile's dtype, 4-bit NF4 when it asks for QLoRA."""
    source, revision = resolve_source(cfg)
    if device_map is None and hardware.device == "cuda":
        device_map = {"": torch.cuda.current_device()}  # this process's GPU (set per rank under DDP)
    if cfg.family == "ocr1":
        require_ocr1_transformers()
    if backend == "unsloth":
        from hwocr.model.unsloth import load_with_unsloth

        model = load_with_unsloth(
            cfg, torch_dtype(hardware), source, revision, quantization_config(cfg, hardware)
        )
    else:
        with _explained_load_errors(cfg):
            model = _model_class(cfg).from_pretrained(
                source,
                revision=revision,
                dtype=torch_dtype(hardware),
                quantization_config=quantization_config(cfg, hardware),
                device_map=device_map,
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,  # never unpickle downloaded weights (hwocr/train/checkpoints.py)
            )
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
    if hardware.optimize and cfg.family == "ocr2":
        optimize_loaded_model(model, hardware)
    return model


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

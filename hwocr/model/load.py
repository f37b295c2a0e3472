"""Load DeepSeek-OCR(-2) and its processor from a hub id (pinned revision) or a local directory."""

import logging
import re
from pathlib import Path

import torch
from transformers import AutoProcessor, BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

from hwocr.config import DTYPES, HardwareConfig, ModelConfig, is_local_dir
from hwocr.errors import ModelLoadError
from hwocr.model.bos import with_one_bos
from hwocr.model.official import is_official, native_config, native_processor, read_config
from hwocr.model.pixels import RAW_PIXELS, supports_raw_pixels
from hwocr.model.processor_setup import ProcessorSetup, set_up, setup_of
from hwocr.model.views import follow_pil_centering, squash, upright
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
    else:  # dynamic: a global view plus tile crops of wide images, as DeepSeek's code does
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
        if official_layout(cfg, source, revision):
            processor = native_processor(source, revision)
        else:
            processor = AutoProcessor.from_pretrained(
                source, revision=revision, trust_remote_code=cfg.trust_remote_code
            )
    settings = image_mode_settings(cfg)
    # size and tile_size are read from the instance when image tokens are counted...
    processor.image_processor.size = settings["size"]
    processor.image_processor.tile_size = settings["tile_size"]
    processor.image_processor.crop_to_patches = settings["crop_to_patches"]
    # ...but the processor's class-level default crop_to_patches=True beats the instance attribute,
    # so it must be passed on every call: encode() does that. The tokenizer adds no special tokens:
    # encode() puts exactly one BOS in front, as DeepSeek's code does (model/bos.py).
    if processor.tokenizer.bos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer of model.source={cfg.source!r} names no BOS token; DeepSeek-OCR-2 prompts "
            "start with one (DeepSeek's code hard-codes id 0)"
        )
    set_up(
        processor,
        ProcessorSetup(
            call_kwargs={"crop_to_patches": settings["crop_to_patches"], "add_special_tokens": False},
            # infer(image_size=768, crop_mode=False) squashes; base (image_size 1024) pads as the port does
            squash=settings["size"]["height"] if cfg.image_mode == "small" else None,
        ),
    )
    processor.tokenizer.padding_side = "left"  # batched generation
    return processor


def encode(processor: ProcessorMixin, images: list, texts: list[str], raw_pixels: bool = False, **kwargs):
    """Run the processor with the image mode chosen in load_processor, on the views DeepSeek's own
    code builds where the port's differ (hwocr/model/views.py); for DeepSeek-OCR-2, each prompt
    starts with exactly one BOS (hwocr/model/bos.py; v1's Ocr1Processor puts its own BOS first).

    raw_pixels: DeepSeek-OCR-2's views stay 8-bit, for model/pixels.py to normalise on the GPU."""
    images = upright(images)
    setup = setup_of(processor)  # None: v1's processor, which needs none of this
    if setup is not None and setup.squash:
        images = squash(images, setup.squash)
    if raw_pixels and supports_raw_pixels(processor):
        kwargs = {**kwargs, **RAW_PIXELS}
    encoded = processor(images=images, text=texts, **(setup.call_kwargs if setup else {}), **kwargs)
    if setup is not None:
        side = processor.image_processor.size["height"]  # the global view's side in every hwocr mode
        encoded["pixel_values"] = follow_pil_centering(
            encoded["pixel_values"], [im.size for im in images], side
        )
        tokenizer = processor.tokenizer
        encoded = with_one_bos(
            encoded, tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.padding_side
        )
    return encoded


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

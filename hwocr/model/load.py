"""Load a model and its processor from a hub id (pinned revision) or a local directory; what differs by
model family (classes, layouts, fix-ups) is the family's (hwocr/model/families/)."""

import logging
import re
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

from hwocr.config import DTYPES, HardwareConfig, ModelConfig, is_local_dir
from hwocr.errors import ModelLoadError
from hwocr.model.families import family

log = logging.getLogger(__name__)


def torch_dtype(hardware: HardwareConfig) -> torch.dtype:
    return getattr(torch, DTYPES[hardware.dtype])


def resolve_source(cfg: ModelConfig) -> tuple[str, str | None]:
    """(path or hub id, revision). A local directory wins; its revision is meaningless."""
    if cfg.build_tiny:
        return str(family(cfg.family).tiny_checkpoint(Path(cfg.source).resolve())), None
    if is_local_dir(cfg.source):
        return str(Path(cfg.source).expanduser().resolve()), None
    return cfg.source, cfg.revision


def load_processor(cfg: ModelConfig) -> ProcessorMixin:
    source, revision = resolve_source(cfg)
    with _explained_load_errors(cfg):
        return family(cfg.family).load_processor(cfg, source, revision)


def quantization_config(cfg: ModelConfig, hardware: HardwareConfig) -> BitsAndBytesConfig | None:
    """NF4 with double quantization (QLoRA) when the hardware profile asks for 4-bit; the family's
    vision side and output head stay in 16-bit."""
    if not hardware.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(hardware),
        llm_int8_skip_modules=list(family(cfg.family).not_quantized),
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
    model_family = family(cfg.family)
    model_family.before_load(cfg)
    extra = model_family.from_pretrained_kwargs(cfg, source, revision)
    if backend == "unsloth":
        if extra:
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
        with _explained_load_errors(cfg):
            model, info = model_family.model_class(cfg).from_pretrained(
                source,
                **extra,
                revision=revision,
                dtype=torch_dtype(hardware),
                quantization_config=quantization_config(cfg, hardware),
                device_map=device_map,
                trust_remote_code=cfg.trust_remote_code,
                use_safetensors=True,  # never unpickle downloaded weights (hwocr/model/weights.py)
                output_loading_info=True,
            )
        model_family.check_loaded(cfg, source, revision, info)
    log.info(
        "loaded %s (%s, %s%s, backend %s, attention %s)",
        source,
        revision or "local",
        hardware.dtype,
        ", 4-bit" if hardware.load_in_4bit else "",
        backend,
        getattr(model.config, "_attn_implementation", None),
    )
    model_family.after_load(model, cfg, hardware)
    return model


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

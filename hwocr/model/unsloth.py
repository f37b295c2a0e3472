"""The Unsloth backend (`backend=unsloth`): FastVisionModel loading and LoRA.

Unsloth is imported here only, lazily: it needs a CUDA GPU at import time, patches transformers,
TRL and PEFT globally when imported, and takes ~30 s to import. CPU installs never import it.
"""

import logging
import os

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from hwocr.config import FAMILIES, HardwareConfig, LoraConfig, ModelConfig
from hwocr.errors import ModelLoadError

log = logging.getLogger(__name__)


class UnslothUnavailable(ModelLoadError):
    """backend=unsloth was asked for where Unsloth cannot run."""


def fast_vision_model():
    """Unsloth's FastVisionModel, or an error that says why it is not available here."""
    if not torch.cuda.is_available():
        raise UnslothUnavailable(
            "backend=unsloth needs a CUDA GPU and none is visible here; use backend=hf (the default)"
        )
    # Unsloth writes its compiled modules to ./unsloth_compiled_cache unless told otherwise.
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", os.path.abspath("outputs/cache/unsloth_compiled"))
    try:
        from unsloth import FastVisionModel
    except ImportError as error:
        raise UnslothUnavailable(
            f"backend=unsloth needs the unsloth extra: pip install -e '.[unsloth]' ({error})"
        ) from error
    except RuntimeError as error:  # Unsloth's own "cannot find any torch accelerator" and kin
        raise UnslothUnavailable(f"Unsloth could not start on this machine: {error}") from error
    return FastVisionModel


def load_with_unsloth(
    cfg: ModelConfig,
    dtype: torch.dtype,
    source: str,
    revision: str | None,
    quantization: BitsAndBytesConfig | None,
) -> PreTrainedModel:
    """FastVisionModel.from_pretrained with hwocr's quantization choices.

    hwocr passes its own BitsAndBytesConfig: Unsloth's default skip list keeps DeepSeek-OCR-2's
    vision tower in 16-bit but would quantize v1's SAM and CLIP encoders.
    """
    from transformers import AutoModel

    if FAMILIES[cfg.family].remote_code:
        # Unsloth compiles each decoder layer for training; v1's MoE loops over experts in Python and
        # recompiles as the token counts change, several times slower than without the compile
        # (experiments/gpu-v1-h100-smoke.md). Read on every forward; a user's setting wins.
        os.environ.setdefault("UNSLOTH_BLOCK_COMPILE", "0")
    FastVisionModel = fast_vision_model()
    kwargs = {"quantization_config": quantization} if quantization else {}
    model, _tokenizer = FastVisionModel.from_pretrained(
        source,
        revision=revision,
        dtype=dtype,
        load_in_4bit=quantization is not None,
        load_in_16bit=quantization is None,
        # v1's remote class is registered under AutoModel; for DeepSeek-OCR-2 Unsloth picks the
        # generation class itself (AutoModel would give the headless DeepseekOcr2Model).
        auto_model=AutoModel if FAMILIES[cfg.family].remote_code else None,
        trust_remote_code=cfg.trust_remote_code,
        # Without flash-attn, Unsloth picks flex_attention for remote-code models such as v1, which
        # compiles again for every new batch shape; sdpa is what the hf backend uses.
        attn_implementation="sdpa",
        use_gradient_checkpointing=False,  # hwocr's hardware profile decides, in add_lora
        device_map={"": torch.cuda.current_device()},
        **kwargs,
    )
    FastVisionModel.for_inference(model)  # the base evaluation comes first: KV cache on
    return model


def add_lora(model: PreTrainedModel, lora: LoraConfig, target_modules: str, hardware: HardwareConfig):
    """FastVisionModel.get_peft_model on the language model's projections, then training mode."""
    FastVisionModel = fast_vision_model()
    model = FastVisionModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=target_modules,
        use_gradient_checkpointing="unsloth" if hardware.gradient_checkpointing else False,
        random_state=torch.initial_seed() % 2**32,  # set_seed(train.seed) ran just before
    )
    FastVisionModel.for_training(model)
    return model


def for_inference(model: torch.nn.Module) -> None:
    fast_vision_model().for_inference(model)

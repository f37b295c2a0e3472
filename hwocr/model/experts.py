"""4-bit routed experts: NF4 storage for the fused 3-D expert weights that bitsandbytes skips.

bitsandbytes quantizes only nn.Linear, so a 4-bit load leaves DeepSeek-OCR-2's 2.42 B routed-expert
weights (`mlp.experts.gate_up_proj` / `down_proj`, fused 3-D parameters) in 16-bit: 4.8 GB of the
6.1 GB the model then needs. `quantize_experts` packs each of them with bitsandbytes' own NF4
blockwise format (blocksize 64, double-quantized absmax, as the rest of the model) and keeps
only the packed bytes. In forward, a layer's experts are dequantized to the compute dtype once and
handed to the experts kernel the model is configured with (`grouped_mm` where torch has it, the
per-expert loop otherwise); the dequantized copy is a transient of that one layer (0.44 GB at full
size), released after the layer (under gradient checkpointing also during backward).

Outputs equal those of a model whose expert weights were rounded to NF4: the same rounding that
bitsandbytes applies to every other linear layer of a QLoRA model.
"""

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS = ("gate_up_proj", "down_proj")


def is_fused_experts(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Parameter) for name in WEIGHTS) and all(
        getattr(module, name).dim() == 3 for name in WEIGHTS
    )


class _DequantizedView:
    """What the transformers experts kernels read from `self`, with dequantized weights."""

    def __init__(self, module: nn.Module, gate_up_proj: torch.Tensor, down_proj: torch.Tensor):
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.num_experts = module.num_experts
        self.act_fn = module.act_fn
        self.config = module.config
        self.has_gate = getattr(module, "has_gate", True)
        self.has_bias = getattr(module, "has_bias", False)
        self.is_transposed = getattr(module, "is_transposed", False)
        self.is_concatenated = getattr(module, "is_concatenated", True)
        self._module_apply_gate = type(module)._apply_gate

    def _apply_gate(self, gate_up_out: torch.Tensor) -> torch.Tensor:
        return self._module_apply_gate(self, gate_up_out)


class QuantizedExpertsMixin:
    """Swapped in as a subclass of the model's experts class (so isinstance checks still hold)."""

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        import bitsandbytes.functional as bnbf

        out = []
        for name in WEIGHTS:
            packed = getattr(self, f"{name}_nf4")
            state = self._hwocr_quant_states[name]
            if state.absmax.device != packed.device:  # the module was moved after quantization
                state.to(packed.device)
                if state.nested:
                    state.state2.absmax = state.state2.absmax.to(packed.device)
                    state.state2.code = state.state2.code.to(packed.device)
            out.append(bnbf.dequantize_4bit(packed, state).to(dtype))
        return out[0], out[1]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        gate_up, down = self.dequantized(hidden_states.dtype)
        # LoRA factors handed over by PEFT's wrappers (model/expert_lora.py), folded in per expert as
        # PEFT folds them into a 16-bit Parameter: W + scaling * lhs @ rhs.
        factors = self._hwocr_lora_factors
        gate_up = _with_lora(gate_up, factors.get("gate_up_proj", ()))
        down = _with_lora(down, factors.get("down_proj", ()))
        view = _DequantizedView(self, gate_up, down)
        implementation = ALL_EXPERTS_FUNCTIONS.get_interface(
            self.config._experts_implementation, self._hwocr_eager_forward
        )
        return implementation(view, hidden_states, top_k_index, top_k_weights)


def _with_lora(weight: torch.Tensor, factors) -> torch.Tensor:
    for lhs, rhs, scaling in factors:
        weight = torch.baddbmm(weight, lhs.to(weight.dtype), rhs.to(weight.dtype), alpha=scaling)
    return weight


_SUBCLASSES: dict[type, type] = {}


def _quantized_class(cls: type) -> type:
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Quantized{cls.__name__}", (QuantizedExpertsMixin, cls), {})
    return _SUBCLASSES[cls]


@torch.no_grad()
def quantize_experts(model: nn.Module, compress_statistics: bool = True) -> int:
    """Store every fused-experts module's weights as NF4 in place; returns the weights packed.

    Frozen weights only: the packed weights themselves never train; a LoRA on them goes through
    model/expert_lora.py.
    """
    import bitsandbytes.functional as bnbf

    n_params = 0
    for _name, module in list(model.named_modules()):
        if isinstance(module, QuantizedExpertsMixin) or not is_fused_experts(module):
            continue
        cls = type(module)
        eager = getattr(cls.forward, "__wrapped__", cls.forward)  # the class's own per-expert loop
        states = {}
        for weight_name in WEIGHTS:
            weight = getattr(module, weight_name)
            n_params += weight.numel()
            packed, state = bnbf.quantize_4bit(
                weight.data.contiguous(),
                blocksize=64,
                compress_statistics=compress_statistics,
                quant_type="nf4",
            )
            del module._parameters[weight_name]
            module.register_buffer(f"{weight_name}_nf4", packed, persistent=False)
            states[weight_name] = state
        module._hwocr_quant_states = states
        module._hwocr_lora_factors = {}  # weight name -> [(lhs, rhs, scaling)] while a LoRA is active
        module._hwocr_eager_forward = eager
        module.__class__ = _quantized_class(cls)
        if module.gate_up_proj_nf4.is_cuda:
            torch.cuda.empty_cache()
    if n_params:
        log.info("routed experts stored as NF4: %s weights", f"{n_params:,}")
    return n_params

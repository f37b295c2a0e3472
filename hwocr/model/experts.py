"""4-bit routed experts: NF4 storage for the fused 3-D expert weights that bitsandbytes skips.

bitsandbytes quantizes only nn.Linear, so a 4-bit load leaves DeepSeek-OCR-2's 2.42 B routed-expert
weights (`mlp.experts.gate_up_proj` / `down_proj`, fused 3-D parameters) in 16-bit: most of the
memory the model then needs. `quantize_experts` packs each of them with bitsandbytes' own NF4
blockwise format (blocksize 64, double-quantized absmax, as the rest of the model) and keeps
only the packed bytes. In forward, a layer's experts are dequantized to the compute dtype once and
handed to the experts kernel the model is configured with (`grouped_mm` where torch has it, the
per-expert loop otherwise); the dequantized copy is a transient of that one layer, released after
the layer (under gradient checkpointing also during backward).

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


class QuantizedExpertsMixin:
    """Swapped in as a subclass of the model's experts class (so isinstance checks still hold).

    The fused weights are buffers `<name>_nf4` with their bitsandbytes states in `quant_states`;
    `lora_factors` holds, per weight name, the factors of the active LoRA (model/expert_lora.py).
    In forward the layer's weights are dequantized and attached under their usual names for the one
    call to the class's own forward, which runs whatever experts kernel the model is configured with.
    """

    quant_states: dict  # weight name -> bitsandbytes QuantState
    lora_factors: dict  # weight name -> [(lhs, rhs, scaling)] while a LoRA is active

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        import bitsandbytes.functional as bnbf

        out = []
        for name in WEIGHTS:
            packed = getattr(self, f"{name}_nf4")
            state = self.quant_states[name]
            if state.absmax.device != packed.device:  # the module was moved after quantization
                state.to(packed.device)
                if state.nested:
                    state.state2.absmax = state.state2.absmax.to(packed.device)
                    state.state2.code = state.state2.code.to(packed.device)
            out.append(bnbf.dequantize_4bit(packed, state).to(dtype))
        return out[0], out[1]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        gate_up, down = self.dequantized(hidden_states.dtype)
        # LoRA factors handed over by PEFT's wrappers (model/expert_lora.py), folded in per expert as
        # PEFT folds them into a 16-bit Parameter: W + scaling * lhs @ rhs.
        self.gate_up_proj = _with_lora(gate_up, self.lora_factors.get("gate_up_proj", ()))
        self.down_proj = _with_lora(down, self.lora_factors.get("down_proj", ()))
        try:
            return super().forward(hidden_states, top_k_index, top_k_weights)
        finally:  # plain attributes for this call only: the packed bytes stay the only copy
            del self.gate_up_proj, self.down_proj


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
            delattr(module, weight_name)  # the Parameter goes; the packed buffer replaces it
            module.register_buffer(f"{weight_name}_nf4", packed, persistent=False)
            states[weight_name] = state
        module.__class__ = _quantized_class(cls)
        module.quant_states = states
        module.lora_factors = {}
        if module.gate_up_proj_nf4.is_cuda:
            torch.cuda.empty_cache()
    if n_params:
        log.info("routed experts stored as NF4: %s weights", f"{n_params:,}")
    return n_params

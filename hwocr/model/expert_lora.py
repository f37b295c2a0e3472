"""LoRA on DeepSeek-OCR-2's routed experts, also where hwocr stores them as NF4 (model/experts.py).

The 64 routed experts of each MoE layer are two fused 3-D Parameters (`mlp.experts.gate_up_proj`,
`down_proj`), which `target_modules` cannot reach. PEFT adapts them through `target_parameters`
(lora.ParamWrapper, huggingface/peft#3009): around the experts' forward it parametrizes the
Parameter as W + scaling * lhs @ rhs, per expert, and the experts kernel reads that.

NF4-packed experts have no Parameter to parametrize: their weights are bytes that
QuantizedExpertsMixin dequantizes once per layer and forward. So hwocr keeps PEFT's ParamWrapper for
everything but that one step. PEFT still creates, trains, saves and loads the lora_A/lora_B weights
(the adapter is a plain PEFT adapter, loadable onto a 16-bit model without hwocr). Only the step that
reaches the weight changes: the wrapper hands its low-rank factors to the packed module, which adds
them to the weights it has just dequantized (one baddbmm, PEFT's own fold). The LoRA delta is thus
applied in the compute dtype on top of NF4(W), as QLoRA does for every other layer.
"""

from contextlib import contextmanager

import torch
from peft.tuners.lora.layer import ParamWrapper
from torch import nn

from hwocr.model.experts import WEIGHTS, QuantizedExpertsMixin

# PEFT's target_parameters match these as name suffixes; only the language model has routed experts.
EXPERT_PARAMETERS = [f"mlp.experts.{name}" for name in WEIGHTS]


def _stand_in(module: QuantizedExpertsMixin, name: str) -> torch.Tensor:
    """A tensor with the packed weight's original shape, dtype and device, and no memory of its own
    (one element, expanded): what PEFT reads from a target Parameter to size and place its LoRA."""
    state = module.quant_states[name]
    packed = getattr(module, f"{name}_nf4")
    return torch.empty((), dtype=state.dtype, device=packed.device).expand(state.shape)


class PackedExpertsParamWrapper(ParamWrapper):
    """PEFT's ParamWrapper around NF4-packed experts: the LoRA factors go to the module, not into a
    parametrization of a Parameter that packing removed."""

    def get_param(self) -> torch.Tensor:
        return _stand_in(self.get_base_layer(), self.parameter_name)

    @contextmanager
    def _activate_lora(self, active_adapters: list[str]):
        adapters = [name for name in active_adapters if name in self.lora_A]
        base = self.get_base_layer()
        base.lora_factors[self.parameter_name] = [self.get_delta_factors(a) for a in adapters]
        try:
            yield
        finally:
            del base.lora_factors[self.parameter_name]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "a LoRA on NF4-packed routed experts cannot be merged into them; merge on a model loaded "
            "in 16-bit (hardware.load_in_4bit=false), where PEFT's own ParamWrapper holds the experts"
        )

    def unmerge(self) -> None:
        self.merge()


@contextmanager
def peft_sees_packed_experts(model: nn.Module):
    """Around get_peft_model / PeftModel.from_pretrained: let PEFT find and wrap packed experts.

    PEFT looks for target parameters among each module's registered Parameters, so for the duration
    each packed weight is registered again as a stand-in (`_stand_in`). Afterwards the stand-ins are
    removed (no state dict, parameter count or DDP broadcast ever sees them) and the wrappers PEFT
    put around packed experts become PackedExpertsParamWrapper.
    """
    packed = [m for m in model.modules() if isinstance(m, QuantizedExpertsMixin)]
    for module in packed:
        for name in WEIGHTS:
            module.register_parameter(name, nn.Parameter(_stand_in(module, name), requires_grad=False))
    try:
        yield
    finally:
        for module in packed:
            for name in WEIGHTS:
                if name in dict(module.named_parameters(recurse=False)):
                    delattr(module, name)
        for module in model.modules():
            if isinstance(module, ParamWrapper) and _wraps_packed(module):
                module.__class__ = PackedExpertsParamWrapper


def _wraps_packed(wrapper: ParamWrapper) -> bool:
    return isinstance(wrapper.get_base_layer(), QuantizedExpertsMixin)


def adapted_expert_parameters(model: nn.Module) -> list[str]:
    """Names of the trainable LoRA weights that adapt routed experts (for logs and tests)."""
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and ".mlp.experts." in name and "lora_" in name
    ]

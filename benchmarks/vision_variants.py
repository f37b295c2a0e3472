"""Time ways of running DeepSeek-OCR-2's vision tower on one GPU, against transformers' own layers.

    python benchmarks/vision_variants.py --json benchmarks/results/h200_vision_variants.json

Full-size shapes (SAM ViT-B + the 24-layer Qwen2-like encoder), random weights, bf16, one chunk of
images as hwocr.model.vision feeds it (32 DeepSeek crops of 768 px, 32 global views of 1024 px).
Each variant reports milliseconds per call (median of warm calls), the first call's seconds (its
compile time where it compiles) and its largest difference from transformers' SDPA layers in fp32.
"""

import argparse
import copy
import json
import statistics
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from hwocr.io import write_atomic
from hwocr.model.architecture import full_size_config
from hwocr.model.vision import fold_sam_rel_pos
from hwocr.report.record import environment_info


def flex_rel_pos_attention(self, hidden_states: torch.Tensor, output_attentions=False):
    """SAM attention through FlexAttention: the decomposed bias is added inside the kernel."""
    from hwocr_bench_flex import flex_attention  # set by install_flex (a compiled kernel)

    batch_size, height, width, _ = hidden_states.shape
    heads = self.num_attention_heads
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)
    rel_h_table = self.get_rel_pos(height, height, self.rel_pos_h).to(query.dtype)
    rel_w_table = self.get_rel_pos(width, width, self.rel_pos_w).to(query.dtype)
    grid = query.reshape(batch_size, heads, height, width, -1)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h_table).reshape(batch_size, heads, height * width, -1)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w_table).reshape(batch_size, heads, height * width, -1)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + rel_h[b, h, q_idx, kv_idx // width] + rel_w[b, h, q_idx, kv_idx % width]

    output = flex_attention(query, key, value, score_mod=score_mod, scale=self.scale)
    output = output.reshape(batch_size, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(output.reshape(batch_size, height, width, -1)), None


def install_flex(tower) -> None:
    import sys

    from torch.nn.attention.flex_attention import flex_attention

    module = types.ModuleType("hwocr_bench_flex")
    module.flex_attention = torch.compile(flex_attention, dynamic=False)
    sys.modules["hwocr_bench_flex"] = module
    for m in tower.modules():
        if hasattr(m, "get_decomposed_rel_pos"):
            m.forward = types.MethodType(flex_rel_pos_attention, m)


def compile_layers(tower) -> None:
    for layer in [*tower.sam_encoder.layers, *tower.vision_encoder.layers]:
        layer.forward = torch.compile(layer.forward, dynamic=False)


def build(dtype):
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2VisionModel

    config = full_size_config().vision_config
    torch.manual_seed(0)
    tower = DeepseekOcr2VisionModel._from_config(config, attn_implementation="sdpa", torch_dtype=dtype)
    # transformers' init leaves SAM's output at ~0 (and its rel-pos tables at 0): random weights of
    # a trained model's scale instead, so that every variant's output differs where its math does
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if "rel_pos" in name:
                param.normal_(0, 1.0)
            elif param.dim() >= 2:
                param.normal_(0, 0.02)
            elif "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.normal_(0, 0.02)
    return tower.to(DEVICE).eval()


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, list[float], torch.Tensor]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, times, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="stock,fold,flex,fold+compile,flex+compile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default="benchmarks/results/h200_vision_variants.json")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    base = build(torch.bfloat16)
    reference = copy.deepcopy(base).float()
    inputs = {
        "crops_768": torch.randn(args.chunk, 3, 768, 768, device=DEVICE),
        "global_1024": torch.randn(args.chunk, 3, 1024, 1024, device=DEVICE),
    }
    with torch.inference_mode():
        expected = {k: reference(x).last_hidden_state for k, x in inputs.items()}
    del reference
    result = {
        "name": Path(args.json).stem,
        **environment_info(),
        "command": "python benchmarks/vision_variants.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "variants": {},
    }
    for variant in args.variants.split(","):
        torch._dynamo.reset()
        tower = copy.deepcopy(base)
        if variant.startswith("fold"):
            fold_sam_rel_pos(tower)
        if variant.startswith("flex"):
            install_flex(tower)
        if variant.endswith("+compile"):
            compile_layers(tower)
        row = {}
        for name, x in inputs.items():
            x = x.to(torch.bfloat16)
            try:
                with torch.inference_mode():
                    first, times, out = timed(
                        lambda x=x, tower=tower: tower(x).last_hidden_state, args.repeats
                    )
                    _, sam_times, _ = timed(
                        lambda x=x, tower=tower: tower.sam_encoder(x).last_hidden_state, args.repeats
                    )
            except Exception as error:  # a variant that cannot run is reported, not fatal
                row[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                continue
            ref = expected[name]
            row[name] = {
                "ms": round(statistics.median(times) * 1000, 1),
                "sam_ms": round(statistics.median(sam_times) * 1000, 1),
                "first_call_s": round(first, 2),
                "max_abs_diff_vs_fp32_stock": float((out.float() - ref).abs().max()),
                "ref_max_abs": float(ref.abs().max()),
                "cosine_vs_fp32_stock": float(
                    F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
                ),
            }
        result["variants"][variant] = row
        print(variant, json.dumps(row), flush=True)
        del tower
    write_atomic(Path(args.json), json.dumps(result, indent=2))
    print("wrote", args.json)


if __name__ == "__main__":
    main()

"""SAM's convolutions (patch embedding, neck, downsampling) on one vision chunk, with cuDNN's
default algorithm choice and with torch.backends.cudnn.benchmark (which times the candidates once
per shape); and the patch embedding as evaluation runs it, one matmul (hwocr/model/vision.py
patches_as_matmul), with both patch embeddings' largest error against an fp32 convolution.
They run outside the compiled layers.

    python benchmarks/sam_convs.py --json benchmarks/results/h200_sam_convs.json
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hwocr.evaluate.fast.vision import patches_as_matmul
from hwocr.io import write_atomic
from hwocr.model.architecture import full_size_config
from hwocr.report.record import environment_info


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json")
    args = p.parse_args()
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2VisionModel

    tower = DeepseekOcr2VisionModel._from_config(full_size_config().vision_config, dtype=torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of the script
    sam = tower.sam_encoder.to(device).eval()
    torch.manual_seed(0)
    sam.patch_embed.projection.reset_parameters()  # the model's init leaves it near zero: errors need scale
    result = {
        "name": Path(args.json).stem if args.json else "sam_convs",
        **environment_info(),
        "command": "python " + " ".join(sys.argv),
        "ms": {},
    }
    for side in (768, 1024):
        # uniform in [-1, 1], as normalised pixels are
        pixels = torch.rand(args.chunk, 3, side, side, device=device).mul(2).sub(1).bfloat16()
        with torch.inference_mode():
            embedded = sam.patch_embed(pixels)
            necked = sam.neck(embedded)
            parts = {
                "patch_embed": lambda x=pixels: sam.patch_embed(x),
                "patch_embed_matmul": lambda x=pixels: patches_as_matmul(sam.patch_embed, x),
                "neck": lambda x=embedded: sam.neck(x),
                "proj": lambda x=necked: sam.proj(x),
            }
            for benchmark in (False, True):
                torch.backends.cudnn.benchmark = benchmark
                for name, run in parts.items():
                    run()
                    sync()
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        run()
                        sync()
                        times.append(time.perf_counter() - start)
                    key = f"{name}_{side}_{'benchmark' if benchmark else 'default'}"
                    result["ms"][key] = round(statistics.median(times) * 1000, 2)
        result.setdefault("max_abs_error_vs_fp32", {}).update(embedding_errors(sam.patch_embed, pixels, side))
    torch.backends.cudnn.benchmark = False
    print(json.dumps(result["ms"]), json.dumps(result["max_abs_error_vs_fp32"]))
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def embedding_errors(embedding, pixels: torch.Tensor, side: int) -> dict:
    """Largest error of the bf16 convolution and of the bf16 matmul against the convolution in fp32
    (TF32 off), and the largest fp32 output, for scale."""
    exact = copy.deepcopy(embedding).float()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        reference = exact(pixels.float())
        conv, matmul = embedding(pixels).float(), patches_as_matmul(embedding, pixels).float()
    torch.backends.cudnn.allow_tf32 = tf32
    return {
        f"conv_bf16_{side}": (conv - reference).abs().max().item(),
        f"matmul_bf16_{side}": (matmul - reference).abs().max().item(),
        f"output_max_abs_{side}": reference.abs().max().item(),
    }


if __name__ == "__main__":
    main()

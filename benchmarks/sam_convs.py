"""SAM's convolutions (patch embedding, neck, downsampling) on one vision chunk, with cuDNN's
default algorithm choice and with torch.backends.cudnn.benchmark (which times the candidates once
per shape). They run outside the compiled layers (hwocr/model/vision.py).

    python benchmarks/sam_convs.py --json benchmarks/results/h200_sam_convs.json
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

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

    tower = DeepseekOcr2VisionModel._from_config(full_size_config().vision_config, torch_dtype=torch.bfloat16)
    sam = tower.sam_encoder.cuda().eval()
    result = {
        "name": Path(args.json).stem if args.json else "sam_convs",
        **environment_info(),
        "command": "python " + " ".join(sys.argv),
        "ms": {},
    }
    for side in (768, 1024):
        pixels = torch.randn(args.chunk, 3, side, side, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            embedded = sam.patch_embed(pixels)
            necked = sam.neck(embedded)
            parts = {
                "patch_embed": lambda x=pixels: sam.patch_embed(x),
                "neck": lambda x=embedded: sam.neck(x),
                "proj": lambda x=necked: sam.proj(x),
            }
            for benchmark in (False, True):
                torch.backends.cudnn.benchmark = benchmark
                for name, run in parts.items():
                    run()
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        run()
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - start)
                    key = f"{name}_{side}_{'benchmark' if benchmark else 'default'}"
                    result["ms"][key] = round(statistics.median(times) * 1000, 2)
    torch.backends.cudnn.benchmark = False
    print(json.dumps(result["ms"]))
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

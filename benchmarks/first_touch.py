"""How long fresh host memory takes to write, three times over in one process: pageable (numpy) and
page-locked (torch's pinned cache: allocated, then written; emptied between rounds, then kept). The
first round pays the page faults, and on a VM that grows its memory on first use, that growth too.
CPU (pinned rounds: CUDA only).

    python benchmarks/first_touch.py --gib 8 --json benchmarks/results/gpuhost_first_touch.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the environment record)

from hwocr.evaluate.fast.encoding import empty_pinned_cache  # noqa: E402
from hwocr.io import write_atomic  # noqa: E402


def seconds(write, *args) -> float:
    started = time.perf_counter()
    write(*args)
    return round(time.perf_counter() - started, 3)


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    size = int(args.gib * 2**30)
    rounds: dict[str, list[float]] = {"pageable_s": [], "pageable_rewrite_s": []}
    for _ in range(args.rounds):
        memory = np.empty(size, np.uint8)
        rounds["pageable_s"].append(seconds(memory.fill, 1))  # fresh pages: faulted in
        rounds["pageable_rewrite_s"].append(seconds(memory.fill, 2))  # the same pages again
        del memory
    if torch.cuda.is_available():
        for kept in (False, True):  # the cache emptied after each round (as transcribe does), or kept
            kind = "pinned_kept" if kept else "pinned"
            rounds[f"{kind}_alloc_s"], rounds[f"{kind}_write_s"] = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                memory = torch.empty(size, dtype=torch.uint8, pin_memory=True)
                rounds[f"{kind}_alloc_s"].append(round(time.perf_counter() - started, 3))
                rounds[f"{kind}_write_s"].append(seconds(memory.fill_, 1))
                del memory
                if not kept:
                    empty_pinned_cache()
    result = {"name": "first_touch", **bench.environment(args), "gib": args.gib, **rounds}
    print(json.dumps(rounds))
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

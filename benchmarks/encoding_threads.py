"""How fast transcribe's encoder prepares one batch, by the number of threads encoding its slices
(CPU only: nothing else runs beside it).

    python benchmarks/encoding_threads.py --lines 256 --threads 1 2 4 8 --json benchmarks/results/cpu_encoding_threads.json
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the bench's synthetic lines)
from gil_contention import processor_checkpoint  # noqa: E402

from hwocr.config import DEFAULT_PROMPT  # noqa: E402
from hwocr.evaluate.fast.encoding import BatchEncoder  # noqa: E402
from hwocr.io import write_atomic  # noqa: E402
from hwocr.model import load_processor  # noqa: E402


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["dynamic", "base"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dir", default="/tmp/hwocr-bench", help="where the processor and lines are saved")
    p.add_argument("--json")
    args = p.parse_args()
    folder = Path(args.dir)
    samples = bench.line_samples(args.lines, folder / "lines", 1600, 120)
    seconds: dict = {}
    for mode in args.modes:
        processor = load_processor(replace(processor_checkpoint(folder / "processor"), image_mode=mode))
        for threads in args.threads:
            with BatchEncoder(processor, DEFAULT_PROMPT, threads=threads) as encoder:
                encoder.submit(samples[:8]).result()  # warm: files cached, pixel table built
                runs = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    encoder.submit(samples).result()
                    runs.append(round(time.perf_counter() - started, 2))
            seconds.setdefault(mode, {})[str(threads)] = runs
            print(f"{mode}: {args.lines} lines, {threads} threads: {runs} s", flush=True)
    result = {
        "name": "encoding_threads",
        **bench.environment(args),
        "cpus": len(os.sched_getaffinity(0)),
        "lines": args.lines,
        "seconds_per_batch": seconds,
    }
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

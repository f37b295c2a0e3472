"""How fast can a crop-mode batch be encoded on this host's CPUs: one thread (as transcribe does
today), the batch split over k threads, or over k spawned processes (tensors back via shared memory).

    python benchmarks/encode_workers.py --lines 256 --json benchmarks/results/gpuhost_encode_workers.json

Each way reports its seconds for the whole batch (median of --repeats) and whether its merged
inputs equal the one-thread encoding exactly.
"""

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the bench's synthetic lines)
from gil_contention import _processor_checkpoint  # noqa: E402

from hwocr.data import load_image  # noqa: E402
from hwocr.io import write_atomic  # noqa: E402
from hwocr.model import load_processor  # noqa: E402
from hwocr.model.load import encode  # noqa: E402

PROCESSOR = None


def load(folder: Path) -> None:
    global PROCESSOR
    PROCESSOR = load_processor(_processor_checkpoint(folder / "processor"))
    torch.set_num_threads(1)


def encode_part(samples):
    images = [load_image(s.image) for s in samples]
    return dict(
        encode(
            PROCESSOR,
            images,
            ["<image>\nFree OCR."] * len(images),
            raw_pixels=True,
            padding=True,
            return_tensors="pt",
        )
    )


def merge(parts: list[dict], pad_id: int) -> dict:
    """Sub-batches' inputs as one batch: token rows left-padded to the longest, views concatenated."""
    length = max(p["input_ids"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if key in ("input_ids", "attention_mask"):
            fill = pad_id if key == "input_ids" else 0
            values = [torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values]
        out[key] = torch.cat(values)
    return out


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=256)
    p.add_argument("--workers", default="2,4,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/tmp/hwocr-bench")
    p.add_argument("--json")
    args = p.parse_args()
    folder = Path(args.dir)
    load(folder)
    pad_id = PROCESSOR.tokenizer.pad_token_id
    samples = bench.line_samples(args.lines, folder / "lines", 1600, 120)
    encode_part(samples[:4])  # warm
    reference = encode_part(samples)

    def split(k):
        n = -(-len(samples) // k)
        return [samples[i : i + n] for i in range(0, len(samples), n)]

    def timed(run) -> tuple[float, bool]:
        times, same = [], True
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
            same = same and all(torch.equal(out[k], reference[k]) for k in reference)
        return round(statistics.median(times), 3), same

    rows = {"one_thread": timed(lambda: encode_part(samples))}
    for k in map(int, args.workers.split(",")):
        with ThreadPoolExecutor(k) as pool:
            rows[f"threads_{k}"] = timed(
                lambda k=k, pool=pool: merge(list(pool.map(encode_part, split(k))), pad_id)
            )
        with mp.get_context("spawn").Pool(k, initializer=load, initargs=(folder,)) as pool:
            pool.map(encode_part, split(k))  # warm
            rows[f"processes_{k}"] = timed(
                lambda k=k, pool=pool: merge(pool.map(encode_part, split(k)), pad_id)
            )
    result = {
        "name": Path(args.json).stem if args.json else "encode_workers",
        **bench.environment(args),
        "lines": args.lines,
        "cpu_count": len(__import__("os").sched_getaffinity(0)),
        "seconds": {k: v[0] for k, v in rows.items()},
        "equal_to_one_thread": {k: v[1] for k, v in rows.items()},
    }
    print(json.dumps({k: result[k] for k in ("cpu_count", "seconds", "equal_to_one_thread")}))
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Does the processor in transcribe's background thread slow a launch-bound main thread? (CPU)

Times a loop of 20,000 small torch ops (each mostly dispatcher and Python under the GIL, as a
decoding loop launching kernels is) alone, beside the crop-mode processor encoding 24 lines in a
thread (as transcribe runs it), and beside the same work in a forked process.

    python benchmarks/gil_contention.py --json benchmarks/results/cpu_gil_contention.json
"""

import argparse
import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the bench's synthetic lines)

from hwocr.config import ModelConfig  # noqa: E402
from hwocr.data import load_image  # noqa: E402
from hwocr.inputs import encode  # noqa: E402
from hwocr.io import write_atomic  # noqa: E402
from hwocr.model import load_processor  # noqa: E402


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=24)
    p.add_argument("--ops", type=int, default=20_000)
    p.add_argument("--dir", default="/tmp/hwocr-bench", help="where the processor and lines are saved")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.dir)
    processor = load_processor(processor_checkpoint(folder / "processor"))
    samples = bench.line_samples(args.lines, folder / "lines", 1600, 120)

    def encode_lines():
        images = [load_image(s.image) for s in samples]
        prompts = ["<image>\nFree OCR."] * len(images)
        return encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")

    x = torch.zeros(8)

    def loop() -> float:
        started = time.perf_counter()
        for _ in range(args.ops):
            x.add_(1.0)
        return time.perf_counter() - started

    def beside(start) -> tuple[float, float]:
        """Median loop time while `start()`'s work runs, and that work's wall time."""
        started, runs = time.perf_counter(), []
        done = start()
        while not done.is_set():
            runs.append(loop())
        return sorted(runs)[len(runs) // 2], time.perf_counter() - started

    def in_thread() -> threading.Event:
        done = threading.Event()
        threading.Thread(target=lambda: (encode_lines(), done.set())).start()
        return done

    def in_process() -> threading.Event:
        done = threading.Event()
        worker = multiprocessing.get_context("fork").Process(target=encode_lines)
        worker.start()
        threading.Thread(target=lambda: (worker.join(), done.set())).start()
        return done

    encode_lines()  # warm: files cached, processor set up
    alone = min(loop() for _ in range(3))
    started = time.perf_counter()
    encode_lines()
    encode_alone = time.perf_counter() - started
    loop_thread, encode_thread = beside(in_thread)
    loop_process, encode_process = beside(in_process)
    result = {
        "name": "cpu_gil_contention",
        **bench.environment(args),
        "lines": args.lines,
        "ops": args.ops,
        "loop_ms": {
            "alone": alone * 1e3,
            "processor_in_thread": loop_thread * 1e3,
            "processor_in_process": loop_process * 1e3,
        },
        "processor_s": {
            "alone": encode_alone,
            "beside_loop_in_thread": encode_thread,
            "beside_loop_in_process": encode_process,
        },
    }
    result["loop_ms"] = {k: round(v, 1) for k, v in result["loop_ms"].items()}
    result["processor_s"] = {k: round(v, 2) for k, v in result["processor_s"].items()}
    print(json.dumps({k: result[k] for k in ("loop_ms", "processor_s")}))
    if args.json:
        write_atomic(Path(args.json), json.dumps(result, indent=2))
    return result


def processor_checkpoint(path: Path) -> ModelConfig:
    """DeepSeek-OCR-2's image processor (PIL, as the bench's full-size checkpoint) with the bench tokenizer."""
    if not (path / "processor_config.json").is_file():
        from transformers import DeepseekOcr2ImageProcessorPil, DeepseekOcr2Processor

        from hwocr.model.tiny import build_tokenizer

        DeepseekOcr2Processor(
            image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=build_tokenizer()
        ).save_pretrained(path)
    return ModelConfig(name="processor", source=str(path), image_mode="dynamic")


if __name__ == "__main__":
    main()

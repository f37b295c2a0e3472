"""Estimate the user's real job from measured H200 figures: UIT-HWDB line, one epoch of training plus
the base and the tuned evaluation, on Kaggle's 2xT4 and on one H100.

An ESTIMATE, not a measurement: no T4 or H100 was measured. Each H200 figure (benchmarks/results)
is scaled by the ratio of the GPUs' datasheet peaks: compute for training; for generation the
smaller of the compute and the memory-bandwidth ratios (the vision prefill is compute-bound,
decoding reads every weight per step), so the evaluation estimate errs long. 2xT4 is taken as
twice one T4 (DDP, one model copy per GPU; the real scaling is below 2). Prints a markdown table
and its arithmetic.

    python benchmarks/time_table.py              # defaults: the preset's T4 and H100 settings
"""

import argparse
import json
from pathlib import Path

from table import timed_passes  # benchmarks/ is on the path when this file runs

RESULTS = Path(__file__).parent / "results"
# Datasheet peaks: dense fp16/bf16 tensor TFLOP/s and memory TB/s.
PEAKS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "T4": (65.0, 0.32)}
# UIT-HWDB line has 7,273 lines; the split below is an assumption (pass your own counts).
DEFAULT_TRAIN, DEFAULT_TEST = 5818, 1455


def read(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def train_rate(result: dict) -> float:
    """The product's Trainer path where it was measured (bench --task run), else the bare step."""
    return result.get("run", result["train"])["samples_per_s"]


def generate_rate(result: dict) -> float:
    """The product's default where several passes were measured: the last one, warm (the tower's
    one-off compile, ~35 s on the H200's host, is left out)."""
    if passes := timed_passes(result):  # bench.py --compare: passes in the order run
        return list(passes.values())[-1]["images_per_s"]
    compared = result["generate"].get("eager_vs_compiled_vision")  # the older format of the same
    return compared["compiled_again"]["images_per_s"] if compared else result["generate"]["images_per_s"]


def estimate(h200_train: float, h200_generate: float, gpu: str, n_gpus: int, train: int, test: int) -> dict:
    compute = PEAKS[gpu][0] / PEAKS["H200"][0]
    bandwidth = PEAKS[gpu][1] / PEAKS["H200"][1]
    train_rate_ = h200_train * compute * n_gpus
    generate_rate_ = h200_generate * min(compute, bandwidth) * n_gpus
    train_h = train / train_rate_ / 3600
    eval_h = 2 * test / generate_rate_ / 3600  # base and tuned
    return {
        "train_samples_per_s": train_rate_,
        "eval_images_per_s": generate_rate_,
        "train_h": train_h,
        "eval_h": eval_h,
        "total_h": train_h + eval_h,
        "gpu_h": (train_h + eval_h) * n_gpus,
        "compute_scale": compute,
        "bandwidth_scale": bandwidth,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training lines")
    p.add_argument("--test", type=int, default=DEFAULT_TEST, help="test lines")
    p.add_argument("--t4-train", default="h200_t4_dynamic_b16", help="result: T4 settings")
    # T4s decode step by step (no graphed decoding below compute capability 8.0 or in fp16)
    p.add_argument("--t4-generate", default="h200_generate_compiled_vs_eager_dynamic_guard_lora")
    p.add_argument("--h100-train", default="h200_run_bf16_gundam_b32_pad32", help="result: bf16 settings")
    p.add_argument("--h100-generate", default="h200_generate_eval_passes_dynamic_guard_lora")
    return p


def render(args: argparse.Namespace) -> str:
    """The estimate as markdown: a title line, the table, and its arithmetic."""
    rows = [
        ("2xT4 (Kaggle), hardware=t4x2", "T4", 2, args.t4_train, args.t4_generate),
        ("1xH100, hardware=h100", "H100", 1, args.h100_train, args.h100_generate),
    ]
    lines = [
        f"UIT-HWDB line, {args.train} training and {args.test} test lines, DeepSeek's crop mode "
        "(image_mode=dynamic), ESTIMATE",
        "",
        "| machine | train samples/s | eval images/s | 1 epoch | base + tuned eval | total | GPU-hours |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for label, gpu, n, train_name, generate_name in rows:
        train_h200, generate_h200 = train_rate(read(train_name)), generate_rate(read(generate_name))
        e = estimate(train_h200, generate_h200, gpu, n, args.train, args.test)
        lines.append(
            f"| {label} | {e['train_samples_per_s']:.2f} | {e['eval_images_per_s']:.2f} | {e['train_h']:.2f} h | "
            f"{e['eval_h']:.2f} h | {e['total_h']:.2f} h | {e['gpu_h']:.2f} |"
        )
        notes.append(
            f"- {label}: training {train_h200} samples/s on the H200 ({train_name}) x {e['compute_scale']:.3f} "
            f"(peak compute {gpu}/H200) x {n} GPU(s); evaluation {generate_h200} images/s on the H200 "
            f"({generate_name}) x {min(e['compute_scale'], e['bandwidth_scale']):.3f} (the smaller of the compute "
            f"and bandwidth ratios {gpu}/H200) x {n} GPU(s)."
        )
    return "\n".join([*lines, "", *notes])


def main() -> None:
    print(render(parser().parse_args()))


if __name__ == "__main__":
    main()

"""Time the metrics on N line pairs (the target: 10,000 pairs well under 1 s).

python benchmarks/bench_metrics.py [--pairs 10000] [--repeats 5]
"""

import argparse
import random
import statistics
import time

from hwocr.data.vietnamese import generate_lines
from hwocr.metrics import Prediction, corpus_metrics
from hwocr.metrics.paired import paired_comparison


def noisy(text: str, rng: random.Random, rate: float) -> str:
    """Substitute, drop or insert characters at `rate`, like an imperfect OCR model."""
    out = []
    for char in text:
        roll = rng.random()
        if roll < rate / 3:
            out.append(rng.choice("aăâeêioôơuưyđ"))
        elif roll < 2 * rate / 3:
            continue
        elif roll < rate:
            out.extend([char, rng.choice("nhtg ")])
        else:
            out.append(char)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    references = generate_lines(args.pairs, seed=0)
    base = [Prediction(f"{i}", "w", "x.jpg", ref, noisy(ref, rng, 0.3)) for i, ref in enumerate(references)]
    tuned = [Prediction(f"{i}", "w", "x.jpg", ref, noisy(ref, rng, 0.1)) for i, ref in enumerate(references)]

    def timed(fn) -> list[float]:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return times

    eval_times = timed(lambda: corpus_metrics(base))
    paired_times = timed(lambda: paired_comparison(base, tuned, n_boot=2000, seed=0))
    chars = sum(len(r) for r in references) / len(references)
    print(f"{args.pairs} pairs, mean reference length {chars:.1f} chars, {args.repeats} repeats")
    print(f"corpus_metrics(): median {statistics.median(eval_times):.3f} s, max {max(eval_times):.3f} s")
    print(f"paired_comparison(2000 bootstrap): median {statistics.median(paired_times):.3f} s")


if __name__ == "__main__":
    main()

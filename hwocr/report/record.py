"""Turn a finished run dir into an experiment record (markdown) for `experiments/`.

python -m hwocr.report.record outputs/runs/demo/<ts> > experiments/demo.md

The record holds the exact command, the machine and library versions the run saw, and the
results table, all read from the run's own files: nothing is typed in by hand.
"""

import sys
from pathlib import Path

import yaml

from hwocr.io import read_json

TABLE_KEYS = [
    ("cer", "corpus CER", "{:.2%}"),
    ("mean_cer", "mean CER", "{:.2%}"),
    ("median_cer", "median CER", "{:.2%}"),
    ("perfect_match_rate", "perfect match", "{:.2%}"),
    ("substitution_rate", "substitution rate", "{:.2%}"),
    ("deletion_rate", "deletion rate", "{:.2%}"),
    ("insertion_rate", "insertion rate", "{:.2%}"),
    ("wer", "WER", "{:.2%}"),
    ("vi_cer_no_tone", "CER ignoring tones", "{:.2%}"),
    ("vi_cer_no_diacritics", "CER ignoring all diacritics", "{:.2%}"),
    ("n_samples", "samples", "{:.0f}"),
    ("n_failed", "failed samples", "{:.0f}"),
    ("n_repetition_guarded", "samples the repetition guard changed", "{:.0f}"),
    ("images_per_s", "images/s", "{:.1f}"),
]


def environment_info() -> dict[str, str]:
    """What the results depend on: device, library versions, core count."""
    import os
    import platform

    import peft
    import torch
    import transformers

    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def render(run_dir: Path) -> str:
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    environment = read_json(run_dir / "environment.json")
    stages = {name: read_json(run_dir / "eval" / name / "metrics.json") for name in ("base", "tuned")}
    stages = {name: metrics for name, metrics in stages.items() if metrics}
    paired = read_json(run_dir / "eval" / "comparison.json").get("paired", {})
    training = read_json(run_dir / "train_summary.json")

    lines = [
        f"# {run_dir.name}",
        "",
        "Command:",
        "",
        "```bash",
        "python -m hwocr.run " + " ".join(overrides),
        "```",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in environment.items())
        if environment
        else "Machine: unknown",
        "",
        "| metric | " + " | ".join(stages) + " |",
        "|---|" + "---|" * len(stages),
    ]
    for key, label, fmt in TABLE_KEYS:
        if any(key in metrics for metrics in stages.values()):
            cells = [fmt.format(m[key]) if key in m else "" for m in stages.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if paired:
        lines += [
            "",
            f"Tuned minus base, corpus CER: {paired['cer_delta']:+.2%} "
            f"(95% bootstrap CI {paired['cer_delta_ci_low']:+.2%} to {paired['cer_delta_ci_high']:+.2%}, "
            f"{paired['n_boot']} resamples); samples improved {paired['share_improved']:.0%}, "
            f"worse {paired['share_worse']:.0%}, unchanged {paired['share_unchanged']:.0%}.",
        ]
    if training:
        lines += ["", "Training: " + ", ".join(f"{k} {v:.4g}" for k, v in training.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hwocr.report.record RUN_DIR")
    sys.stdout.write(render(Path(sys.argv[1])))


if __name__ == "__main__":
    main()

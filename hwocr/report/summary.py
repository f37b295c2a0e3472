"""The message a run ends with: what it checked, and what its numbers mean.

A real checkpoint's run ends with its CER figures. The tiny model (`model.build_tiny`) has random
weights and cannot read, so its CER is no OCR result: its run instead lists the stages and files it
checked, says what the training loss shows the model learned, measured against two references (a
uniform guess, and the labels' unigram distribution: the best guess that ignores the image and the
context), and names the command that gives real results.
"""

import math
from collections import Counter
from pathlib import Path

from hwocr.report.files import PREDICTIONS_TABLE
from hwocr.text import normalize_text
from hwocr.train.checkpoints import MARKER
from hwocr.train.progress import duration

REAL_COMMAND = "python -m hwocr.run +experiment=lines dataset.root=/path/to/UIT_HWDB_line"
STAGE_FILES = ("metrics.json", "predictions.csv", PREDICTIONS_TABLE)


def _check(label: str, detail: str, run_dir: Path, paths: list[str]) -> str:
    missing = [p for p in paths if not (run_dir / p).exists()]
    status = "MISSING " + ", ".join(missing) if missing else "ok"
    return f"  {label:10s} {status:3s}  {detail}"


def checks(run_dir: Path, data: dict, results: dict, trained) -> list[str]:
    """One line per stage that ran, with the files it must have left (MISSING names any that didn't)."""
    lines = [
        _check(
            "data",
            f"{data['n_train']} train / {data['n_val']} validation / {data['n_test']} test lines, "
            f"{data['skipped_total']} skipped (data_report.json)",
            run_dir,
            ["data_report.json", "resolved_config.yaml"],
        )
    ]

    def evaluation(name: str) -> str:
        metrics = results[name].metrics
        detail = f"{metrics['n_samples']} lines transcribed, {metrics['n_failed']} failed (eval/{name}/)"
        return _check(f"{name} eval", detail, run_dir, [f"eval/{name}/{f}" for f in STAGE_FILES])

    if "base" in results:
        lines.append(evaluation("base"))
    if trained is not None:
        step = trained.steps
        lines.append(
            _check(
                "training",
                f"{step} steps, checkpoint-{step} complete, adapter saved (checkpoints/, adapter/)",
                run_dir,
                [f"checkpoints/checkpoint-{step}/{MARKER}", "adapter/adapter_config.json"],
            )
        )
    if "tuned" in results:
        lines.append(evaluation("tuned"))
    report = ["eval/gallery.html"] + (["eval/comparison.json"] if len(results) == 2 else [])
    n_plots = len(list((run_dir / "plots").glob("*.png")))
    lines.append(
        _check("report", f"{', '.join(Path(p).name for p in report)}, {n_plots} figures", run_dir, report)
    )
    return lines


def unigram_entropy(texts: list[str], tokenizer) -> float:
    """Nats per token of the texts' own token distribution (EOS included, as in the training loss)."""
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


def learning(trained, tokenizer, train_texts: list[str]) -> list[str]:
    """What the training loss says, in words that depend on the measured values."""
    losses = [(e["step"], e["loss"]) for e in trained.log_history if "loss" in e]
    if len(losses) < 2:
        return ["Training logged fewer than two losses: nothing to say about what it learned."]
    (s0, first), (s1, last) = losses[0], losses[-1]
    uniform, unigram = math.log(len(tokenizer)), unigram_entropy(train_texts, tokenizer)
    lines = [
        f"Training loss (nats per label token): {first:.2f} at step {s0}, {last:.2f} at step {s1}. For "
        f"reference, a uniform guess over the {len(tokenizer):,}-token vocabulary scores {uniform:.2f}, "
        f"and the training labels' unigram distribution (the best guess that ignores the image and the "
        f"context) {unigram:.2f}."
    ]
    if last < unigram:
        lines.append(
            "The loss is below the unigram figure: the language side learned which tokens follow which "
            "in the training labels."
        )
    elif last < first - 0.05:
        lines.append(
            "The loss fell toward the unigram figure: the model learned how frequent the label tokens are."
        )
    else:
        lines.append("The loss did not fall: the model learned nothing measurable.")
    val = [(e["step"], e["eval_loss"]) for e in trained.log_history if "eval_loss" in e]
    if len(val) >= 2:
        lines.append(
            f"Validation loss (held-out lines): {val[0][1]:.2f} at step {val[0][0]}, "
            f"{val[-1][1]:.2f} at step {val[-1][0]}."
        )
    return lines


def reading(results: dict, image_size: int) -> list[str]:
    name = "tuned" if "tuned" in results else "base"
    preds = results[name].predictions
    texts = {normalize_text(p.prediction) for p in preds}
    if texts == {""}:
        writes = f"writes nothing (an empty transcription) for each of the {len(preds)} test lines"
    elif len(texts) == 1:
        writes = f"writes the same transcription for each of the {len(preds)} test lines"
    else:
        writes = f"writes {len(texts)} distinct transcriptions for the {len(preds)} test lines"
    cers = ", ".join(f"{n} {r.metrics['cer']:.2%}" for n, r in results.items())
    return [
        f"It cannot read: the vision tower has random, frozen weights and sees each line as one "
        f"{image_size}x{image_size}-pixel view. The {name} model {writes}; its CER ({cers}) measures a "
        "guess, not OCR."
    ]


def closing_summary(
    cfg, run_dir: Path, data: dict, results: dict, trained, tokenizer, train_texts, seconds
) -> str:
    """The run's last words: CER figures for a real model; checks and an honest reading for the tiny one."""
    took = duration(seconds)
    if not cfg.model.build_tiny:
        lines = [f"\nResults (the stages took {took}): {run_dir}"]
        for name, result in results.items():
            lines.append(
                f"  {name:5s} CER {result.metrics['cer']:.2%}  ({run_dir / 'eval' / name / 'metrics.json'})"
            )
        lines.append(f"  samples: {run_dir / 'eval' / 'gallery.html'}")
        return "\n".join(lines)
    lines = [
        f"\nThe stages took {took}: {run_dir}",
        "This run used the tiny model: random weights, built offline, to check the machinery end to end.",
        "Every stage that ran, and the files it left:",
        *checks(run_dir, data, results, trained),
    ]
    if trained is not None:
        lines += learning(trained, tokenizer, train_texts)
    if results:
        lines += reading(results, cfg.model.image_size)
    lines.append(f"Real results need the real checkpoint and data, e.g.\n  {REAL_COMMAND}")
    return "\n".join(lines)

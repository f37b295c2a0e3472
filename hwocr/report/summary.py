"""The message a run ends with: what it checked, and what its numbers mean.

Every run ends with its CER figures beside the score to beat: the best guess that ignores the image
(one training text written for every test image). The tiny model (`model.build_tiny`, the demo's)
also lists the stages and files it checked, says what its training loss shows, and names the
command that gives real results.
"""

import math
from collections import Counter
from pathlib import Path

from hwocr.metrics import best_blind_guess
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
            f"{data['n_train']} train / {data['n_val']} validation / {data['n_test']} test images, "
            f"{data['skipped_total']} skipped (data_report.json)",
            run_dir,
            ["data_report.json", "resolved_config.yaml"],
        )
    ]

    def evaluation(name: str) -> str:
        metrics = results[name].metrics
        detail = f"{metrics['n_samples']} images transcribed, {metrics['n_failed']} failed (eval/{name}/)"
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
            f"Validation loss (held-out writers): {val[0][1]:.2f} at step {val[0][0]}, "
            f"{val[-1][1]:.2f} at step {val[-1][0]}."
        )
    return lines


def reading(results: dict, train_texts: list[str]) -> list[str]:
    """CER on the test images against the best image-blind guess, in words that follow the figures."""
    name = "tuned" if "tuned" in results else "base"
    preds = results[name].predictions
    guess, guess_cer = best_blind_guess(train_texts, [p.reference for p in preds])
    cers = ", ".join(f"{n} {r.metrics['cer']:.2%}" for n, r in results.items())
    metrics = results[name].metrics
    distinct = len({normalize_text(p.prediction) for p in preds})
    lines = [
        f"Test CER on {len(preds)} images: {cers}. The {name} model reads "
        f"{round(metrics['perfect_match_rate'] * len(preds))} of them exactly and writes {distinct} "
        f"distinct transcriptions. The best guess that ignores the image (writing {guess!r} for every "
        f"image) scores {guess_cer:.2%}."
    ]
    if metrics["cer"] < guess_cer / 2:
        lines.append(f"The {name} model reads: its CER is under half the image-blind guess's.")
    elif metrics["cer"] < guess_cer:
        lines.append(f"The {name} model beats the image-blind guess, but by less than half.")
    else:
        lines.append(
            f"The {name} model does no better than the image-blind guess: it has not learned to read."
        )
    return lines


def closing_summary(
    cfg, run_dir: Path, data: dict, results: dict, trained, tokenizer, train_texts, seconds
) -> str:
    """The run's last words: CER figures against the image-blind guess; for the tiny model also the
    stages it checked and what its training loss shows."""
    took = duration(seconds)
    if not cfg.model.build_tiny:
        lines = [f"\nResults (the stages took {took}): {run_dir}"]
        for name, result in results.items():
            lines.append(
                f"  {name:5s} CER {result.metrics['cer']:.2%}  ({run_dir / 'eval' / name / 'metrics.json'})"
            )
        if results and train_texts:
            lines += reading(results, train_texts)
        lines.append(f"  samples: {run_dir / 'eval' / 'gallery.html'}")
        return "\n".join(lines)
    lines = [
        f"\nThe stages took {took}: {run_dir}",
        "This run used the tiny model: random weights, built offline, small enough for a CPU.",
        "Every stage that ran, and the files it left:",
        *checks(run_dir, data, results, trained),
    ]
    if trained is not None:
        lines += learning(trained, tokenizer, train_texts)
    if results and train_texts:
        lines += reading(results, train_texts)
    lines.append(f"Real results need the real checkpoint and data, e.g.\n  {REAL_COMMAND}")
    return "\n".join(lines)

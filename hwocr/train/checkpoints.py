"""Checkpoints a resume can trust, atomic output directories, and a graceful stop on SIGTERM.

The Trainer writes `checkpoint-N/` file by file, so a process killed mid-save leaves a directory
that looks like a checkpoint but is not one. hwocr therefore:

- writes `hwocr_complete.json` (every file's size) into a checkpoint only after the Trainer has
  finished saving it (`CompletionMarker`, a callback), after fsync-ing its files;
- resumes (`train.resume=auto`) from the newest checkpoint whose marker matches the files on disk,
  whose `trainer_state.json` parses and whose weights are complete safetensors; a newer checkpoint
  that fails is renamed to `corrupt-checkpoint-N` with a warning and the previous one is used;
- resumes (`auto`) only a checkpoint trained with the same settings: the marker records them, and a
  rerun in the same directory after the data, model, adapter or recipe changed is an error naming what
  changed, not a silent continuation of the other training (extending `train.max_steps` is a resume);
- never loads pickled weights: a checkpoint or adapter with only `*.bin` weights is refused.
  (The optimizer, scheduler and RNG states are `.pt`/`.pth` files; transformers 5 reads them with
  `torch.load(..., weights_only=True)`, which cannot run code.)
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TrainerCallback

from hwocr.config import flatten
from hwocr.errors import CheckpointError
from hwocr.io import fsync_tree, write_json
from hwocr.model.weights import weights_problem

log = logging.getLogger(__name__)

MARKER = "hwocr_complete.json"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else -1


def checkpoint_problem(path: Path, require_marker: bool = True) -> str | None:
    """Why `path` is not a complete Trainer checkpoint, or None."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    if require_marker:
        marker = path / MARKER
        if not marker.is_file():
            return f"no {MARKER}: its save was interrupted"
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"{MARKER} is unreadable: {error}"
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes, {size} when it was saved"
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        if not isinstance(state.get("global_step"), int):
            return f"{TRAINER_STATE} has no global_step"
    except (OSError, ValueError, AttributeError) as error:
        return f"{TRAINER_STATE} is missing or unreadable ({type(error).__name__})"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (path / name).is_file():
            return f"{name} is missing"
    return weights_problem(path)


# Settings a resume may change: how long to train and how often to save, validate and log.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.epochs",
    "train.save_steps",
    "train.eval_steps",
    "train.logging_steps",
    "train.resume",
    "dataset.max_eval_samples",
}
# Parts of the config that shape the training a checkpoint holds (evaluation and tracking do not).
TRAINING_SECTIONS = ("model", "lora", "dataset", "train")
TRAINING_HARDWARE = ("dtype", "load_in_4bit", "per_device_batch", "grad_accum", "gradient_checkpointing")


def training_settings(cfg) -> dict[str, object]:
    """The run config's settings that a checkpoint's training depends on, flat ("lora.r": 16)."""
    flat = {}
    for section in TRAINING_SECTIONS:
        flat |= flatten(dataclasses.asdict(getattr(cfg, section)), f"{section}.")
    flat |= {f"hardware.{key}": getattr(cfg.hardware, key) for key in TRAINING_HARDWARE}
    settings = {key: value for key, value in flat.items() if key not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(settings))  # as the marker will read back (tuples -> lists)


def settings_changes(checkpoint: Path, settings: dict[str, object]) -> list[str] | None:
    """How `settings` differ from those `checkpoint` was trained with ("lora.r: 8 -> 16"); None when
    its marker does not record them (a checkpoint from an hwocr that did not)."""
    saved = json.loads((checkpoint / MARKER).read_text(encoding="utf-8")).get("settings")
    if saved is None:
        return None
    keys = sorted(set(saved) | set(settings))
    return [
        f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}"
        for key in keys
        if saved.get(key) != settings.get(key)
    ]


def find_resume_checkpoint(resume: str, checkpoint_dir: Path, settings: dict | None = None) -> Path | None:
    """The checkpoint to resume from: `never` -> None; a path -> it, if complete; `auto` -> the newest
    complete one in `checkpoint_dir` (newer broken ones are renamed `corrupt-*` with a warning), which
    must have been trained with `settings` (training_settings), when given."""
    if resume == "never":
        return None
    if resume != "auto":
        problem = checkpoint_problem(Path(resume), require_marker=False)
        if problem:
            raise CheckpointError(f"train.resume={resume} is not a usable checkpoint: {problem}")
        return Path(resume)
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(
        (p for p in checkpoint_dir.iterdir() if checkpoint_step(p) >= 0 and p.is_dir()),
        key=checkpoint_step,
        reverse=True,
    )
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            if settings is not None:
                _check_same_training(candidate, settings)
            return candidate
        aside = candidate.with_name(f"corrupt-{candidate.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning(
            "checkpoint %s is incomplete or corrupt (%s): moved to %s; trying the previous one",
            candidate,
            problem,
            aside.name,
        )
        os.replace(candidate, aside)
    return None


def _check_same_training(checkpoint: Path, settings: dict) -> None:
    changes = settings_changes(checkpoint, settings)
    if changes is None:
        log.warning("%s does not record the settings it was trained with: resuming it unchecked", checkpoint)
    elif changes:
        raise CheckpointError(
            f"{checkpoint} holds a training run with other settings ({'; '.join(changes)}): resuming it "
            f"would continue that training under these settings. Write to a new directory "
            f"(hydra.run.dir=...), start over here with train.resume=never, or continue it anyway with "
            f"train.resume={checkpoint}"
        )


def mark_complete(checkpoint: Path, step: int, settings: dict | None = None) -> None:
    """Write the completion marker (after fsync-ing every file) via a temp name and a rename."""
    sizes = {k: v for k, v in fsync_tree(checkpoint).items() if k != MARKER}
    write_json(checkpoint / MARKER, {"step": step, "files": sizes, "settings": settings}, durable=True)


class CompletionMarker(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has finished writing it (on_save), with the
    settings it was trained with (training_settings)."""

    def __init__(self, settings: dict | None = None):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                mark_complete(checkpoint, state.global_step, self.settings)


class GracefulStop(TrainerCallback):
    """On SIGTERM (what schedulers and Kaggle send before killing): save a checkpoint at the end of the
    current step and stop training. A second SIGTERM kills the process at once. Other signals in
    `signals` (the stop request a multi-GPU launcher forwards to its workers, hwocr/distributed.py)
    ask for the same stop and never kill."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.received is None:
            log.warning(
                "received %s: saving a checkpoint after the current step, then stopping",
                signal.Signals(signum).name,
            )
        self.received = self.received or signum
        if signum == signal.SIGTERM:
            signal.signal(signum, signal.SIG_DFL)  # a second one ends the process

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread (e.g. a notebook's worker thread): no handler
                log.debug("not installing a %s handler outside the main thread", signum)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.received is not None
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank must stop at the same step, or the others hang in the next collective
            flag = torch.tensor([int(requested)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and self.received is None:
                self.received = signal.SIGTERM
        if requested:
            control.should_save = True
            control.should_training_stop = True
        return control


def checkpoint_global_step(path: Path) -> int:
    """The step a checkpoint was saved at (trainer_state.json; the directory name as a fallback)."""
    try:
        return int(json.loads((Path(path) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint_step(Path(path))

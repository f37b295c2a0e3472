"""Checkpoints a resume can trust, atomic outputs, and resumable evaluation (no model needed)."""

import dataclasses
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerControl, TrainerState, TrainingArguments

import hwocr.evaluate.stage as evaluate_module
from hwocr.config import DEFAULT_PROMPT, Config
from hwocr.data import Sample
from hwocr.evaluate.stage import EvalStats, GenerationSettings, evaluate_checkpoint
from hwocr.io import atomic_directory
from hwocr.metrics import Prediction
from hwocr.model.weights import require_safetensors, safetensors_problem
from hwocr.report import read_predictions
from hwocr.train.checkpoints import (
    MARKER,
    CheckpointError,
    CompletionMarker,
    GracefulStop,
    checkpoint_problem,
    find_resume_checkpoint,
    mark_complete,
    training_settings,
)


def fake_checkpoint(folder: Path, step: int, marked: bool = True) -> Path:
    """What the Trainer writes for a PEFT model: adapter weights, optimizer, scheduler, RNG, state."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file(
        {"lora_A": torch.full((4, 8), float(step)), "lora_B": torch.zeros(8, 4)},
        path / "adapter_model.safetensors",
    )
    (path / "adapter_config.json").write_text("{}")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (path / name).write_bytes(b"x" * 64)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if marked:
        mark_complete(path, step)
    return path


def test_the_newest_complete_checkpoint_is_used(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    assert find_resume_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-6"
    assert find_resume_checkpoint("never", tmp_path) is None
    assert find_resume_checkpoint("auto", tmp_path / "absent") is None


def _changed(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def test_auto_resumes_only_a_checkpoint_of_the_same_training(tmp_path):
    """A rerun in the same directory after the data, adapter or recipe changed is an error naming what
    changed; a longer schedule is a resume; naming the checkpoint resumes it whatever changed."""
    cfg = Config()
    checkpoint = fake_checkpoint(tmp_path, 4, marked=False)
    mark_complete(checkpoint, 4, training_settings(cfg))

    longer = _changed(cfg, "train", max_steps=900, save_steps=300)
    assert find_resume_checkpoint("auto", tmp_path, training_settings(longer)) == checkpoint
    more_writers = _changed(cfg, "dataset", synth=dataclasses.replace(cfg.dataset.synth, n_train_writers=40))
    for other, change in (
        (more_writers, "dataset.synth.n_train_writers: 12 -> 40"),
        (_changed(cfg, "lora", r=8), "lora.r: 16 -> 8"),
        (_changed(cfg, "train", lr=1e-3), "train.lr: 0.0002 -> 0.001"),
        (_changed(cfg, "hardware", per_device_batch=4), "hardware.per_device_batch: "),
    ):
        with pytest.raises(CheckpointError, match="other settings") as error:
            find_resume_checkpoint("auto", tmp_path, training_settings(other))
        assert change in str(error.value) and f"train.resume={checkpoint}" in str(error.value)
    assert find_resume_checkpoint(str(checkpoint), tmp_path, training_settings(more_writers)) == checkpoint


def test_a_checkpoint_that_does_not_record_its_settings_resumes_with_a_warning(tmp_path, caplog):
    checkpoint = fake_checkpoint(tmp_path, 2)  # marked without settings, as older hwocr did
    with caplog.at_level(logging.WARNING, logger="hwocr.train.checkpoints"):
        assert find_resume_checkpoint("auto", tmp_path, training_settings(Config())) == checkpoint
    assert "does not record the settings" in caplog.text


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _truncate(p / "adapter_model.safetensors"), "adapter_model.safetensors has"),
        (lambda p: (p / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda p: (p / MARKER).unlink(), "save was interrupted"),
        (lambda p: (p / "optimizer.pt").write_bytes(b""), "optimizer.pt has 0 bytes"),
    ],
    ids=["truncated-safetensors", "no-trainer-state", "interrupted-save", "truncated-optimizer"],
)
def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage, message):
    fake_checkpoint(tmp_path, 2)
    last = fake_checkpoint(tmp_path, 4)
    damage(last)
    with caplog.at_level(logging.WARNING, logger="hwocr.train.checkpoints"):
        assert find_resume_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-2"
    assert "checkpoint-4 is incomplete or corrupt" in caplog.text and message in caplog.text
    # set aside, so a later save of step 4 cannot mix with its files and no later resume trusts it
    assert not last.exists() and len(list(tmp_path.glob("corrupt-checkpoint-4-*"))) == 1


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])


def test_safetensors_structure_is_checked_without_a_marker(tmp_path):
    good = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(100)}, good)
    assert safetensors_problem(good) is None
    for cut in (3, 20, len(good.read_bytes()) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(good.read_bytes()[:cut])
        assert "truncated" in safetensors_problem(bad)
    # an explicit train.resume=PATH has no marker to check: the structure still is
    path = fake_checkpoint(tmp_path / "explicit", 3, marked=False)
    assert checkpoint_problem(path, require_marker=False) is None
    _truncate(path / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="not a usable checkpoint.*truncated"):
        find_resume_checkpoint(str(path), tmp_path)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="only pickled weights.*adapter_model.bin.*safetensors"):
        require_safetensors(tmp_path)
    from hwocr.errors import ModelLoadError
    from hwocr.model import attach_adapter

    with pytest.raises(ModelLoadError, match="pickled"):
        attach_adapter(None, tmp_path)  # refused before anything is loaded


def test_completion_marker_and_graceful_stop_callbacks(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state = TrainerState(global_step=5)
    path = fake_checkpoint(tmp_path, 5, marked=False)
    assert "interrupted" in checkpoint_problem(path)
    CompletionMarker().on_save(args, state, TrainerControl())
    assert checkpoint_problem(path) is None

    stop = GracefulStop()
    previous = signal.getsignal(signal.SIGTERM)
    with stop.installed():
        control = stop.on_step_end(args, state, TrainerControl())
        assert not control.should_save
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, does not end the process
        control = stop.on_step_end(args, state, TrainerControl())
    assert stop.received == signal.SIGTERM and control.should_save and control.should_training_stop
    assert signal.getsignal(signal.SIGTERM) == previous


def test_atomic_directory_never_leaves_a_half_written_adapter(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "adapter_model.safetensors").write_text("v1")
    assert (target / "adapter_model.safetensors").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "adapter_model.safetensors").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "adapter_model.safetensors").read_text() == "v1"  # the old one, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp dir left


# --- resumable evaluation ------------------------------------------------------------------------


class Crash(Exception):
    pass


def fake_transcribe(calls: list, crash_after_batches: int | None = None):
    def transcribe(model, processor, samples, settings, desc="", on_batch=None):
        calls.append([s.id for s in samples])
        out = []
        for n, start in enumerate(range(0, len(samples), 2)):
            if crash_after_batches is not None and n == crash_after_batches:
                raise Crash("the machine vanished")
            batch = [
                Prediction(s.id, s.writer, str(s.image), s.text, s.text[:3])
                for s in samples[start : start + 2]
            ]
            out += batch
            on_batch(batch)
        return out, EvalStats(1.0, float(len(samples)), 2, 0)

    return transcribe


class NoTracker:
    def __getattr__(self, name):
        return lambda *a, **k: None


def test_evaluation_resumes_where_it_stopped(tmp_path, monkeypatch):
    samples = [
        Sample(f"test/w{i % 3}/{i}.jpg", f"w{i % 3}", "test", Path(f"{i}.jpg"), f"chữ số {i}")
        for i in range(7)
    ]
    settings = GenerationSettings(prompt=DEFAULT_PROMPT, max_new_tokens=20)
    model = torch.nn.Linear(2, 2)
    calls: list = []
    monkeypatch.setattr(evaluate_module, "transcribe", fake_transcribe(calls, crash_after_batches=2))
    with pytest.raises(Crash):
        evaluate_checkpoint("base", model, None, samples, settings, tmp_path, NoTracker())
    partial = tmp_path / "eval" / "base" / "predictions.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4  # header + two batches
    assert not (tmp_path / "eval" / "base" / "metrics.json").exists()
    with open(partial, "a") as file:  # a crash in the middle of writing a line
        file.write('{"id": "test/w2/5.jp')

    monkeypatch.setattr(evaluate_module, "transcribe", fake_transcribe(calls))
    result = evaluate_checkpoint("base", model, None, samples, settings, tmp_path, NoTracker())
    assert calls[-1] == [s.id for s in samples[4:]]  # only what was not predicted yet
    rows = read_predictions(tmp_path / "eval" / "base" / "predictions.csv")
    assert [r.id for r in rows] == [s.id for s in samples]  # all, once, in order
    assert [p.id for p in result.predictions] == [s.id for s in samples]
    metrics = json.loads((tmp_path / "eval" / "base" / "metrics.json").read_text())
    assert metrics["n_samples"] == 7

    # a rerun of a finished evaluation transcribes nothing and keeps the measured throughput
    n_calls = len(calls)
    evaluate_checkpoint("base", model, None, samples, settings, tmp_path, NoTracker())
    assert len(calls) == n_calls
    again = json.loads((tmp_path / "eval" / "base" / "metrics.json").read_text())
    assert again["images_per_s"] == metrics["images_per_s"] > 0

    # other weights (e.g. the tuned adapter) never reuse these predictions
    with torch.no_grad():
        model.weight.add_(1.0)
    evaluate_checkpoint("base", model, None, samples, settings, tmp_path, NoTracker())
    assert calls[-1] == [s.id for s in samples]


def _graceful_stop_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True)
        stop = GracefulStop()
        if rank == 1:
            stop.received = signal.SIGTERM  # only one rank got the signal (so far)
        control = stop.on_step_end(args, TrainerState(global_step=3), TrainerControl())
        results.put((rank, control.should_save, control.should_training_stop))
    finally:
        dist.destroy_process_group()


def test_graceful_stop_stops_every_rank_at_the_same_step(monkeypatch):
    """Under DDP a rank that stops alone leaves the others hanging in the next collective."""
    import multiprocessing
    import socket

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_graceful_stop_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(results.get(timeout=5) for _ in range(2)) == [(0, True, True), (1, True, True)]

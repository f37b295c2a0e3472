"""Fine-tune with the Hugging Face Trainer: schedule, checkpoints, validation loss, resume."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hwocr import distributed
from hwocr.config import FAMILIES, Config
from hwocr.data import Sample
from hwocr.errors import TrainingInterrupted
from hwocr.inputs import OcrCollator
from hwocr.io import atomic_directory
from hwocr.train import checkpoints
from hwocr.train.checkpoints import CompletionMarker, GracefulStop
from hwocr.train.loss import causal_lm_loss_on_targets

log = logging.getLogger(__name__)


class SampleDataset(Dataset):
    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


@dataclass
class TrainResult:
    train_loss: float
    steps: int
    runtime_s: float
    samples_per_s: float
    peak_memory_gib: float
    resumed_from_step: int | None
    adapter_dir: Path
    log_history: list[dict]  # the Trainer's logs: {"loss", "step", ...} and {"eval_loss", "step", ...}

    def metrics(self) -> dict[str, float]:
        return {
            "train/mean_loss": self.train_loss,  # the mean over the run (transformers' training_loss)
            "train/steps": self.steps,
            "train/runtime_s": self.runtime_s,
            "train/samples_per_s": self.samples_per_s,
            "train/peak_memory_gib": self.peak_memory_gib,
        }


class OcrTrainer(Trainer):
    """The HF Trainer with the loss computed from logits at target positions only (train/loss.py)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = causal_lm_loss_on_targets(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # what Trainer.compute_loss does for a loss that divides by num_items_in_batch
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


def training_arguments(cfg: Config, checkpoint_dir: Path) -> TrainingArguments:
    hw, train = cfg.hardware, cfg.train
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=hw.per_device_batch,
        per_device_eval_batch_size=hw.per_device_batch,
        gradient_accumulation_steps=hw.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.lr,
        lr_scheduler_type=train.scheduler,
        **_warmup(train.warmup_ratio),
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        save_strategy="steps",
        save_steps=train.save_steps,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        fp16=hw.dtype == "fp16",
        bf16=hw.dtype == "bf16",
        use_cpu=hw.device == "cpu",
        dataloader_num_workers=hw.dataloader_workers,
        dataloader_pin_memory=hw.device == "cuda",
        remove_unused_columns=False,  # the collator needs the Sample objects
        label_names=["labels"],
        prediction_loss_only=True,  # validation needs the loss, not every batch's full-vocabulary logits
        report_to="none",  # hwocr.tracking owns the MLflow run
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


def _warmup(ratio: float) -> dict:
    """transformers 5 takes the ratio as warmup_steps (a float < 1) and deprecates warmup_ratio;
    4.x (the ocr1 profile) wants an int there and the ratio in warmup_ratio."""
    import transformers

    return (
        {"warmup_steps": ratio}
        if int(transformers.__version__.split(".")[0]) >= 5
        else {"warmup_ratio": ratio}
    )


def train(
    model: torch.nn.Module,
    processor,
    train_samples: list[Sample],
    val_samples: list[Sample],
    cfg: Config,
    run_dir: Path,
    callbacks: list[TrainerCallback] = (),
    pixel_dtype: torch.dtype = torch.float32,
) -> TrainResult:
    checkpoint_dir = run_dir / "checkpoints"
    settings = checkpoints.training_settings(cfg)
    args = training_arguments(cfg, checkpoint_dir)
    if not val_samples:
        args.eval_strategy = "no"
        log.warning("no validation samples: validation loss is not computed")
    # v1's remote forward takes no logits_to_keep: it computes its own loss from full logits.
    speedups = FAMILIES[cfg.model.family].deepseek_speedups
    trainer_class = OcrTrainer if cfg.model.memory_optimizations and speedups else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=SampleDataset(train_samples),
        eval_dataset=SampleDataset(val_samples) if val_samples else None,
        data_collator=OcrCollator(processor, cfg.model.prompt, pixel_dtype),
        callbacks=[*callbacks, CompletionMarker(settings)],
    )
    # the newest COMPLETE checkpoint of this same training; broken newer ones are set aside
    resume = checkpoints.find_resume_checkpoint(cfg.train.resume, checkpoint_dir, settings)
    resumed_step = None
    if resume:
        resumed_step = checkpoints.checkpoint_global_step(resume)
        log.info("resuming from %s (step %d)", resume, resumed_step)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    stop = GracefulStop(signals=distributed.stop_signals())
    trainer.add_callback(stop)
    started = time.perf_counter()
    with stop.installed():
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - started

    adapter_dir = run_dir / "adapter"
    if stop.received is not None:
        step = trainer.state.global_step
        saved = checkpoint_dir / f"checkpoint-{step}"
        raise TrainingInterrupted(
            f"training stopped by a signal at step {step}; checkpoint saved to {saved}", step, saved
        )
    if trainer.is_world_process_zero():
        with atomic_directory(adapter_dir) as tmp:  # a crash never leaves a half-written adapter
            trainer.save_model(str(tmp))  # PEFT models save only the adapter
            processor.save_pretrained(str(tmp))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return TrainResult(
        train_loss=output.training_loss,
        steps=output.global_step,
        runtime_s=runtime,
        samples_per_s=output.metrics.get("train_samples_per_second", 0.0),
        peak_memory_gib=peak,
        resumed_from_step=resumed_step,
        adapter_dir=adapter_dir,
        log_history=list(trainer.state.log_history),
    )

"""Measure hwocr's training step and batched generation: peak memory, samples/s, images/s.

Runs the product's own code: load_model / load_processor (4-bit through BitsAndBytesConfig, image
modes), prepare_for_training (LoRA, frozen tower, checkpointing), OcrCollator, the Trainer's loss
(train/loss.py for the optimized recipe) and evaluate.generate.transcribe.

    # full-size DeepSeek-OCR-2 shapes with random weights (a GPU), T4 settings
    python benchmarks/bench.py --model full --dtype fp16 --load-in-4bit --batch 8 --task train
    # the same with the unoptimised recipe
    python benchmarks/bench.py --model full --dtype fp16 --load-in-4bit --batch 8 --recipe baseline
    # on a CPU
    python benchmarks/bench.py --model tiny --dtype fp32 --batch 2 --steps 2 --task both
    # GLM-OCR's released shapes with random weights (model.family=glm_ocr), T4 settings; tiny on a CPU
    python benchmarks/bench.py --model glm_ocr --dtype fp16 --batch 16 --task both
    python benchmarks/bench.py --model tiny_glm_ocr --dtype fp32 --batch 2 --steps 2 --task both
    # DeepSeek-OCR v1 (remote code, the ocr1 install profile) from a local checkpoint, either backend
    HWOCR_V1_CHECKPOINT=/path/to/v1 python benchmarks/bench.py --model v1 --dtype fp16 --load-in-4bit \
        --batch 8 --task both --backend unsloth

The full-size DeepSeek-OCR-2 model is built once with random weights and saved (model + a
Vietnamese byte-level BPE tokenizer + the DeepSeek-OCR-2 image processor) to --checkpoint-dir, so
that 4-bit loading goes through the product's from_pretrained path and yields the product's
quantized layout; PaddleOCR-VL's and GLM-OCR's likewise (hwocr/model/paddleocr_vl/tiny.py,
hwocr/model/glm_ocr/tiny.py). v1 is measured from a checkpoint directory you provide (the hub's, or one
built from its remote code); this repo does not build v1.
"""

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from hwocr.config import (
    DEFAULT_PROMPT,
    DTYPES,
    FAMILIES,
    HardwareConfig,
    LoraConfig,
    ModelConfig,
    model_option,
)
from hwocr.data import Sample
from hwocr.io import write_atomic
from hwocr.model.load import torch_dtype
from hwocr.report.record import environment_info

# ----------------------------------------------------------------------------------------------
# model and data


def build_full_checkpoint(path: Path) -> Path:
    """Random-weight DeepSeek-OCR-2 at full size, saved like a hub checkpoint (bf16)."""
    if (path / "config.json").is_file():
        return path
    from transformers import DeepseekOcr2ImageProcessorPil

    from hwocr.model.architecture import full_size_config
    from hwocr.model.tiny import build_tokenizer, save_random_checkpoint

    torch.manual_seed(0)
    # The real vocabulary size (129,280: lm_head cost) with the offline tokenizer's special ids.
    save_random_checkpoint(
        path,
        full_size_config(),
        build_tokenizer(),
        DeepseekOcr2ImageProcessorPil(),
        patch_size=16,
        dtype=torch.bfloat16,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


def build_full_glm_checkpoint(path: Path) -> Path:
    """Random-weight GLM-OCR at the released shapes, saved like a hub checkpoint (bf16)."""
    if (path / "config.json").is_file():
        return path
    from hwocr.model.glm_ocr.tiny import build_full_size_checkpoint

    return build_full_size_checkpoint(path, device="cuda" if torch.cuda.is_available() else "cpu")


def model_config(args) -> ModelConfig:
    folder = Path(args.checkpoint_dir) / args.model
    if args.model == "paddleocr_vl":
        from hwocr.model.paddleocr_vl.tiny import build_full_checkpoint as build_full_paddleocr_vl

        build_full_paddleocr_vl(folder, device="cuda" if torch.cuda.is_available() else "cpu")
    if args.model == "glm_ocr":
        build_full_glm_checkpoint(folder)
    if args.model in ("paddleocr_vl", "tiny_paddleocr_vl", "glm_ocr", "tiny_glm_ocr"):
        return model_option(args.model, folder)
    if args.model == "v1":
        if not args.v1_checkpoint:
            raise SystemExit("--model v1 needs --v1-checkpoint DIR (or HWOCR_V1_CHECKPOINT)")
        return ModelConfig(
            name="deepseek_ocr",
            family="ocr1",
            source=args.v1_checkpoint,
            trust_remote_code=True,
            tile_size=640,
            image_mode=args.image_mode,
        )
    if args.model == "tiny":
        return ModelConfig(
            name="tiny",
            source=str(Path(args.checkpoint_dir) / "tiny"),
            build_tiny=True,
            image_size=128,
            tile_size=96,
            image_mode=args.image_mode,
        )
    source = build_full_checkpoint(Path(args.checkpoint_dir) / "full")
    return ModelConfig(name="deepseek_ocr2", source=str(source), image_mode=args.image_mode)


def line_samples(n: int, folder: Path, width: int, height: int, seed: int = 0) -> list[Sample]:
    """Synthetic 1600x120 handwriting-like lines with Vietnamese text (a handwriting font)."""
    from PIL import Image, ImageDraw, ImageFont

    from hwocr.data import generate_lines

    font_path = Path(__file__).resolve().parents[1] / "hwocr" / "data" / "fonts" / "playwrite-vn.ttf"
    font = ImageFont.truetype(str(font_path), size=int(height * 0.45))
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, text in enumerate(generate_lines(n, seed=seed)):
        path = folder / f"{width}x{height}_{seed}_{i}.png"
        if not path.is_file():
            image = Image.new("RGB", (width, height), (246, 243, 236))
            ImageDraw.Draw(image).text((20, height // 5), text, fill=(20, 20, 60), font=font)
            image.save(path)
        samples.append(Sample(id=f"bench/{i}", writer="bench", split="test", image=path, text=text))
    return samples


# ----------------------------------------------------------------------------------------------
# memory accounting


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


def weight_bytes_by_component(model) -> dict[str, float]:
    """Bytes of parameters and buffers, grouped by the part of the model they belong to."""
    groups: dict[str, int] = {}
    seen = set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.data_ptr() in seen or tensor.device.type == "meta":
            continue
        seen.add(tensor.data_ptr())
        if "lora_" in name:
            group = "lora (trainable)"
        elif "vision_tower.sam_encoder" in name or "sam_model" in name:  # v2 / v1 names
            group = "vision: SAM"
        elif "vision_tower" in name or "vision_model" in name or "model.visual" in name:
            group = "vision: encoder"
        elif any(part in name for part in ("projector", "view_separator", "view_seperator", "image_newline")):
            group = "projector"
        elif "mlp.experts" in name:
            group = "LM: routed experts"
        elif "shared_experts" in name or ".mlp." in name:
            group = "LM: dense + shared MLP"
        elif "self_attn" in name:
            group = "LM: attention"
        elif "embed_tokens" in name:
            group = "LM: embeddings"
        elif "lm_head" in name:
            group = "lm_head"
        else:
            group = "other (norms, router)"
        size = tensor.numel() * tensor.element_size()
        quant_state = getattr(tensor, "quant_state", None)
        if quant_state is not None:
            size += quant_state.absmax.numel() * quant_state.absmax.element_size()
        groups[group] = groups.get(group, 0) + size
    from hwocr.model.experts import QuantizedExpertsMixin

    for module in model.modules():  # NF4 experts keep their absmax in quant states
        for state in module.quant_states.values() if isinstance(module, QuantizedExpertsMixin) else ():
            groups["LM: routed experts"] += state.absmax.numel() * state.absmax.element_size()
    return {k: gib(v) for k, v in sorted(groups.items())}


class MemoryProbe:
    """Peak allocated memory per stage of a training step (CUDA only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stages: dict[str, dict] = {}
        self._stage = None
        self._start = 0

    def mark(self, stage: str | None) -> None:
        if not self.enabled:
            return
        torch.cuda.synchronize()
        if self._stage is not None:
            peak = torch.cuda.max_memory_allocated()
            entry = self.stages.setdefault(
                self._stage, {"start_gib": 0.0, "peak_gib": 0.0, "transient_gib": 0.0}
            )
            entry["start_gib"] = gib(self._start)
            entry["peak_gib"] = max(entry["peak_gib"], gib(peak))
            entry["transient_gib"] = max(entry["transient_gib"], gib(peak - self._start))
        self._stage = stage
        self._start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    def hook(self, module, before: str, after: str) -> None:
        module.register_forward_pre_hook(lambda *a, **k: self.mark(before))
        module.register_forward_hook(lambda *a, **k: self.mark(after))


# ----------------------------------------------------------------------------------------------
# training step


def run_train(args, mcfg, hw, lora, processor, samples, result) -> None:
    from hwocr.model import load_model, prepare_for_training
    from hwocr.model.adapt import count_parameters, vision_tower
    from hwocr.model.expert_lora import adapted_expert_parameters
    from hwocr.train.loss import causal_lm_loss_on_targets

    cuda = torch.cuda.is_available() and args.device == "cuda"
    dtype = torch_dtype(hw)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = load_model(mcfg, hw, device_map={"": 0} if cuda else None, backend=args.backend)
    result["attn_implementation"] = model.config._attn_implementation
    text_config = getattr(model.config, "text_config", model.config)
    result["experts_implementation"] = getattr(text_config, "_experts_implementation", None)
    model = prepare_for_training(model, lora, hw, args.backend)
    model.train()
    result["trainable_parameters"] = count_parameters(model)[0]
    result["expert_lora_tensors"] = len(adapted_expert_parameters(model))
    result["weights_gib_by_component"] = weight_bytes_by_component(model)
    result["weights_gib_total"] = round(sum(result["weights_gib_by_component"].values()), 3)
    if cuda:
        result["allocated_after_load_gib"] = gib(torch.cuda.memory_allocated())

    collator = make_collator(args, processor, dtype, mcfg.prompt)
    device = torch.device("cuda" if cuda else "cpu")
    n_batches = max(1, min(args.steps, len(samples) // args.batch))
    batches = []
    for i in range(n_batches):
        batch = collator(samples[i * args.batch : (i + 1) * args.batch])
        if "images" in batch:  # v1's per-sample (tiles, global view) pairs
            batch["images"] = [(t.to(device, dtype), g.to(device, dtype)) for t, g in batch["images"]]
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    result["sequence_length"] = int(batches[0]["input_ids"].shape[1])
    result["target_tokens_per_sample"] = round(
        float((batches[0]["labels"] != -100).sum()) / batches[0]["labels"].shape[0], 1
    )

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    scaler = torch.amp.GradScaler("cuda") if (cuda and args.dtype == "fp16") else None
    probe = MemoryProbe(cuda and args.memory_profile)
    if probe.enabled:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        probe.hook(vision_tower(model), "vision forward", "LM forward")
        probe.hook(base.lm_head, "lm_head + logits", "loss")

    def step(batch) -> tuple[float, float]:
        probe.mark("embed + projector")
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if args.recipe == "optimized" and mcfg.family == "ocr2":  # v1 computes its own loss
                loss, _ = causal_lm_loss_on_targets(model, batch)
            else:
                loss = model(**batch).loss
        probe.mark("backward")
        (scaler.scale(loss) if scaler else loss).backward()
        probe.mark("optimizer")
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe.mark(None)
        return float(loss), float(norm)

    losses, norms = [], []
    # A first pass meets every batch's shape once (kernel planning and tuning per new sequence
    # length); the timed steps after it are the steady state.
    first_pass_started = time.perf_counter()
    for batch in batches:
        loss, norm = step(batch)
        losses.append(loss)
        norms.append(norm)
    if cuda:
        torch.cuda.synchronize()
    first_pass_step_s = (time.perf_counter() - first_pass_started) / len(batches)
    warmup = len(batches)
    started = time.perf_counter()
    for i in range(args.steps):
        loss, norm = step(batches[i % len(batches)])
        losses.append(loss)
        norms.append(norm)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    timed = args.steps
    result["train"] = {
        "steps": warmup + args.steps,
        "distinct_batches": len(batches),
        "first_pass_step_s": round(first_pass_step_s, 4),
        "timed_steps": timed,
        "step_s": round(seconds / timed, 4),
        "samples_per_s": round(timed * args.batch / seconds, 2),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": [round(x, 5) for x in losses],
        "nonfinite_losses": sum(1 for x in losses if not math.isfinite(x)),
        "nonfinite_grad_norms": sum(1 for x in norms if not math.isfinite(x)),
        "grad_scale": float(scaler.get_scale()) if scaler else None,
    }
    if cuda:
        peak = max([torch.cuda.max_memory_allocated()] + [0])
        stage_peak = max([s["peak_gib"] for s in probe.stages.values()] + [0.0])
        result["train"]["peak_gib"] = max(gib(peak), stage_peak)
        if probe.enabled:
            result["train"]["memory_by_stage"] = probe.stages
    if args.profile and cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(batches[0])
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(table)
        result["profile_top"] = table
    model = optimizer = None  # free GPU memory before the next phase
    if cuda:
        torch.cuda.empty_cache()


def make_collator(args, processor, dtype, prompt: str = DEFAULT_PROMPT):
    from hwocr.inputs import OcrCollator

    if args.pad_multiple is None:
        return OcrCollator(processor, prompt, pixel_dtype=dtype)
    return OcrCollator(processor, prompt, pixel_dtype=dtype, pad_to_multiple_of=args.pad_multiple)


class StepTimer:
    """Trainer callback: time inside each optimizer step, and the gap before it (data, Trainer)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.mark("begin")

            def on_step_end(self, args, state, control, **kwargs):
                timer.mark("end")

        self.callback = _Callback()
        self.events: list[tuple[str, float]] = []

    def mark(self, kind: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.events.append((kind, time.perf_counter()))

    def summary(self, warmup: int, batch: int) -> dict:
        begins = [t for k, t in self.events if k == "begin"]
        ends = [t for k, t in self.events if k == "end"]
        steps = [e - b for b, e in zip(begins, ends, strict=False)][warmup:]
        gaps = [b - e for e, b in zip(ends, begins[1:], strict=False)][warmup:]
        wall = (ends[-1] - ends[warmup - 1]) if warmup and len(ends) > warmup else ends[-1] - begins[0]
        timed = len(ends) - warmup
        all_steps = [e - b for b, e in zip(begins, ends, strict=False)]
        return {
            "timed_steps": timed,
            "all_steps_mean_s": round(sum(all_steps) / len(all_steps), 4),
            "step_s": round(sum(steps) / len(steps), 4),
            "gap_s": round(sum(gaps) / max(1, len(gaps)), 4),
            "samples_per_s": round(timed * batch / wall, 2),
        }


def run_product_trainer(args, mcfg, hw, lora, processor, samples, result) -> None:
    """The product's training path: hwocr.train.train (HF Trainer, OcrCollator in dataloader workers),
    eval and saving pushed past the run, timed per optimizer step after the same warm-up as the bare
    step. Its samples/s over the bare step's says what the Trainer path costs."""
    import tempfile
    from dataclasses import replace

    from hwocr.config import Config, TrainConfig
    from hwocr.model import load_model, prepare_for_training
    from hwocr.train import train

    cuda = torch.cuda.is_available() and args.device == "cuda"
    product_hw = replace(hw, dataloader_workers=args.workers)
    cfg = Config(
        model=mcfg,
        lora=lora,
        hardware=product_hw,
        train=TrainConfig(
            max_steps=args.steps,
            lr=args.lr,
            save_steps=10**6,
            eval_steps=10**6,
            logging_steps=10**6,
            warmup_ratio=0.0,
            resume="never",
        ),
    )
    model = load_model(mcfg, product_hw, device_map={"": 0} if cuda else None, backend=args.backend)
    model = prepare_for_training(model, lora, product_hw, args.backend)
    if args.pad_multiple is not None:
        import functools

        import hwocr.train.trainer as trainer_module

        trainer_module.OcrCollator = functools.partial(
            trainer_module.OcrCollator, pad_to_multiple_of=args.pad_multiple
        )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as run_dir:
        trained = train(
            model,
            processor,
            samples,
            [],
            cfg,
            Path(run_dir),
            callbacks=[timer.callback],
            pixel_dtype=torch_dtype(hw),
        )
    warmup = min(args.warmup, args.steps - 1)
    result["run"] = {
        "workers": args.workers,
        **timer.summary(warmup, args.batch),
        "trainer_samples_per_s": round(trained.samples_per_s, 2),
        "peak_gib": round(trained.peak_memory_gib, 3),
        "final_loss": trained.train_loss,
    }
    if "train" in result:
        result["run"]["ratio_to_bare_step"] = round(
            result["run"]["samples_per_s"] / result["train"]["samples_per_s"], 3
        )
    result["collate_s_per_batch"] = time_collator(
        args, processor, samples[: args.batch], torch_dtype(hw), mcfg.prompt
    )
    model = None
    if cuda:
        torch.cuda.empty_cache()


def time_collator(args, processor, samples, dtype, prompt: str = DEFAULT_PROMPT) -> float:
    """One batch through the benchmark's collator in this process (one core's share of the workers' work)."""
    collator = make_collator(args, processor, dtype, prompt)
    collator(samples[:1])
    started = time.perf_counter()
    collator(samples)
    return round(time.perf_counter() - started, 3)


def loss_match(args, mcfg, hw, lora, processor, samples, result) -> None:
    """Baseline loss (full logits, model.loss) vs optimized loss on the same batch and weights."""
    from hwocr.inputs import OcrCollator
    from hwocr.model import load_model, prepare_for_training
    from hwocr.train.loss import causal_lm_loss_on_targets

    cuda = torch.cuda.is_available() and args.device == "cuda"
    dtype = torch_dtype(hw)
    device = torch.device("cuda" if cuda else "cpu")
    batch = OcrCollator(processor, mcfg.prompt, pixel_dtype=dtype)(samples[: args.batch])
    batch = {k: v.to(device) for k, v in batch.items()}
    out = {}
    for recipe in ("baseline", "optimized"):
        mcfg_r = replace(mcfg, memory_optimizations=recipe == "optimized")
        torch.manual_seed(0)
        model = load_model(mcfg_r, hw, device_map={"": 0} if cuda else None)
        model = prepare_for_training(model, lora, hw)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            full = model(**batch).loss.float().item()
            targets = causal_lm_loss_on_targets(model, batch)[0].float().item()
        out[recipe] = {"full_logits_loss": full, "target_logits_loss": targets}
        del model
        if cuda:
            torch.cuda.empty_cache()
    out["same_weights_rel_diff"] = abs(
        out["optimized"]["target_logits_loss"] - out["optimized"]["full_logits_loss"]
    ) / abs(out["optimized"]["full_logits_loss"])
    out["baseline_vs_optimized_rel_diff"] = abs(
        out["optimized"]["target_logits_loss"] - out["baseline"]["full_logits_loss"]
    ) / abs(out["baseline"]["full_logits_loss"])
    result["loss_match"] = out


# ----------------------------------------------------------------------------------------------
# generation


def run_generate(args, mcfg, hw, processor, samples, result, lora) -> None:
    from hwocr.evaluate.generate import GenerationSettings, transcribe
    from hwocr.model import load_model, prepare_for_training

    cuda = torch.cuda.is_available() and args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = load_model(mcfg, hw, device_map={"": 0} if cuda else None, backend=args.backend)
    # --gen-lora: a LoRA applied at every step; --compare's `merged` folds it in, as tuned evaluation does
    if args.gen_lora:
        model = prepare_for_training(model, lora, hw, args.backend)
    model.eval()
    settings = GenerationSettings(
        prompt=mcfg.prompt,
        max_new_tokens=args.new_tokens,
        batch_size=args.gen_batch,
        cache=args.gen_cache,
        no_repeat_ngram=args.no_repeat_ngram,
        no_repeat_window=args.no_repeat_window,
        compile_vision=not args.eager_vision,
        graph_decoding=not args.eager_decoding,
    )
    if not FAMILIES[mcfg.family].deepseek_speedups:
        settings = settings.reference()  # the fast path is DeepSeek-OCR-2's, as in the product
    # warm-up: CUDA context, kernels, autotuning
    warm = GenerationSettings(
        prompt=mcfg.prompt, max_new_tokens=4, batch_size=min(4, len(samples)), compile_vision=False
    )
    with ids_as_text(processor.tokenizer):
        transcribe(model, processor, samples[:4], warm, desc="warm-up")
        if cuda:
            torch.cuda.synchronize()
        if args.profile and cuda:
            result["generate_profile"] = profile_generate(model, processor, samples, settings, args)
        if args.gen_compile_backend:
            from transformers import CompileConfig

            mode = "reduce-overhead" if args.gen_compile_backend == "inductor" else None
            model.generation_config.compile_config = CompileConfig(
                backend=args.gen_compile_backend, mode=mode
            )
        if args.compare:
            result["generate_passes"] = compare_passes(
                model, processor, samples, settings, args.compare, cuda, args.timeline
            )
        else:
            predictions, stats = transcribe(model, processor, samples, settings, desc="bench")
            result["generate"] = {
                "images": len(samples),
                "new_tokens": args.new_tokens,
                **_generation_record(stats, predictions, cuda),
            }
            if args.gen_cache == "static":  # the first pass compiles; a second shows the warm rate
                again, warm_stats = transcribe(model, processor, samples, settings, desc="bench again")
                result["generate_second_pass"] = {
                    "images_per_s": round(warm_stats.images_per_s, 2),
                    "seconds": round(warm_stats.seconds, 2),
                    "identical_transcriptions": _identical_texts(predictions, again),
                }
        if args.check_unbatched:
            result.setdefault("generate", {}).update(
                unbatched_check(model, processor, samples[: args.check_unbatched], settings)
            )
    del model
    if cuda:
        torch.cuda.empty_cache()


@contextlib.contextmanager
def ids_as_text(tokenizer):
    """Transcriptions as space-separated token ids: a random model's ids mostly lie beyond the
    bench tokenizer's 1,024 tokens and would all decode to "" (and compare equal)."""
    cls = type(tokenizer)  # the class: every copy of the processor decodes the same way
    decode = cls.batch_decode
    cls.batch_decode = lambda self, ids, **kw: [" ".join(map(str, row.tolist())) for row in ids]
    try:
        yield
    finally:
        cls.batch_decode = decode


def unbatched_check(model, processor, check: list, settings) -> dict:
    """The same lines in one batch and one at a time: how many token ids agree."""
    from hwocr.evaluate.generate import transcribe

    batched, _ = transcribe(model, processor, check, replace(settings, batch_size=len(check)), desc="batched")
    alone, _ = transcribe(model, processor, check, replace(settings, batch_size=1), desc="unbatched")
    same = [a.prediction == b.prediction for a, b in zip(alone, batched, strict=True)]
    agree = [
        _common_prefix(a.prediction.split(), b.prediction.split())
        for a, b in zip(alone, batched, strict=True)
    ]
    return {"unbatched_identical": f"{sum(same)}/{len(same)}", "unbatched_common_prefix_tokens": agree}


def _generation_record(stats, predictions: list, cuda: bool) -> dict:
    """One transcription pass's figures: rate, time, batch, failures, guard changes, peak memory."""
    record = {
        "images_per_s": round(stats.images_per_s, 2),
        "seconds": round(stats.seconds, 2),
        "batch_size": stats.batch_size,
        "failed": stats.n_failed,
        "repetition_guarded": sum(p.guarded for p in predictions),
    }
    if cuda:
        record["peak_gib"] = gib(torch.cuda.max_memory_allocated())
    return record


# Named generation passes for --compare, each a change of GenerationSettings. "plain" is evaluation
# without any of hwocr's speed-ups (the tower eager, transformers' generate, one encoding thread, the
# processor's float32 views); "start" is the same with 8-bit views. The first pass with the tower
# compiled includes its one-off compile.
PASSES = {
    "plain": {
        "compile_vision": False,
        "graph_decoding": False,
        "encode_threads": 1,
        "float_views": True,
    },
    "start": {"compile_vision": False, "graph_decoding": False, "encode_threads": 1},
    "compiled_tower": {"compile_vision": True, "graph_decoding": False, "encode_threads": 1},
    "graphed": {"compile_vision": True, "graph_decoding": True, "encode_threads": 1},
    # slices of each batch encoded by threads: 4 (the product's default) or 8
    "threads4": {"compile_vision": True, "graph_decoding": True, "encode_threads": 4},
    "threads8": {"compile_vision": True, "graph_decoding": True, "encode_threads": 8},
    # --gen-lora: the LoRA merged into the weights for the pass (merge_for_evaluation), then unmerged
    "merged": {"compile_vision": True, "graph_decoding": True, "encode_threads": 4, "merge_adapter": True},
}


def compare_passes(
    model, processor, samples, settings, names: list[str], cuda: bool, timeline: bool = False
) -> dict:
    """The same images through each named pass, in order; images/s, peak memory and how many
    transcriptions (token ids) equal the first pass's. A name given twice is timed twice.
    timeline: each pass also records where each batch's time went (batch_timeline)."""
    from hwocr.evaluate.generate import transcribe

    out, first = {}, None
    for i, name in enumerate(names):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        batches: list[dict] = []
        fields = dict(PASSES[name])
        views = float_views() if fields.pop("float_views", False) else contextlib.nullcontext()
        merge = merged_adapter(model) if fields.pop("merge_adapter", False) else contextlib.nullcontext()
        with views, merge, batch_timeline(batches) if timeline else contextlib.nullcontext():
            predictions, stats = transcribe(model, processor, samples, replace(settings, **fields), desc=name)
        record = _generation_record(stats, predictions, cuda)
        if timeline:
            record["timeline"] = batches
        if first is None:
            first = predictions
        else:
            record[f"identical_to_{names[0]}"] = _identical_texts(first, predictions)
        out[name if name not in out else f"{name}_{i}"] = record
        print(f"pass {name}: {json.dumps(record)}")
    base = out[names[0]]["images_per_s"]
    out["speedup_over_first"] = {
        k: round(v["images_per_s"] / base, 3) for k, v in out.items() if k != names[0]
    }
    out["images"] = len(samples)
    return out


@contextlib.contextmanager
def merged_adapter(model):
    """The pass through the LoRA merged into the weights, as tuned evaluation runs; unmerged after
    (in 16-bit, subtracting it back rounds the weights a little) for the passes that follow."""
    from hwocr.model import merge_for_evaluation

    if not merge_for_evaluation(model):
        raise SystemExit("the merged pass needs a LoRA on 16-bit weights (--gen-lora, no --load-in-4bit)")
    try:
        yield
    finally:
        with torch.no_grad():
            model.unmerge_adapter()


@contextlib.contextmanager
def float_views():
    """Transcription's batches encoded as before 8-bit views: the processor rescales and normalises
    on the CPU and float32 views go to the GPU. Only the views change: encode_samples stays the
    product's, its call to encode loses raw_pixels."""
    from hwocr.inputs import processor as product

    eight_bit = product.encode

    def encode_floats(processor, images, texts, raw_pixels=False, **kwargs):
        return eight_bit(processor, images, texts, **kwargs)

    product.encode = encode_floats
    try:
        yield
    finally:
        product.encode = eight_bit


@contextlib.contextmanager
def batch_timeline(batches: list[dict]):
    """Where each batch of transcribe goes, read from a torch.profiler trace of the product's own
    ranges (hwocr/trace_markers.py), in seconds from the batch's start: the wait before it (the main
    thread between batches: waiting for the encoding, bookkeeping), the copy to the device, the
    prefill, the first decoding step (with its capture, when graphed), the whole batch; and how long
    the batch's encoding took, and how (one processor call in the thread, or slices in threads, joined;
    the join's own time, into pageable or page-locked memory). On CUDA a range ends when the last
    kernel it launched does. The profiler's own cost is part of the pass it records."""
    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    # the encoding threads' ranges too: by default the profiler records the thread that started it
    every_thread = _ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=every_thread) as trace:
        yield
    batches.extend(timeline_rows(trace.events()))


def marker_spans(events, name: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of each range `name` in the trace, in order of start. A range whose
    GPU side the trace holds (one per host range) ends when its last kernel does."""
    host = sorted(
        (e.time_range.start / 1e6, e.time_range.end / 1e6)
        for e in events
        if e.name == name and e.device_type == torch.autograd.DeviceType.CPU
    )
    device = sorted(
        e.time_range.end / 1e6
        for e in events
        if e.name == name and e.device_type == torch.autograd.DeviceType.CUDA
    )
    if len(device) == len(host):
        return [(start, max(end, gpu_end)) for (start, end), gpu_end in zip(host, device, strict=True)]
    return host


def timeline_rows(events) -> list[dict]:
    """One row per generated batch (batch_timeline's fields), from the trace's ranges."""
    from hwocr import trace_markers as markers

    spans = {
        name: marker_spans(events, name)
        for name in (markers.GENERATE_BATCH, markers.TO_DEVICE, markers.PREFILL, markers.DECODE_STEP)
    }
    rows, last_end = [], None
    for start, end in spans[markers.GENERATE_BATCH]:
        row = {}
        if last_end is not None:
            row["waited_before_s"] = start - last_end
        for key, name in (
            ("to_device_s", markers.TO_DEVICE),
            ("prefill_done_s", markers.PREFILL),
            ("first_step_done_s", markers.DECODE_STEP),
        ):
            inside = [span_end for span_start, span_end in spans[name] if start <= span_start <= end]
            if inside:
                row[key] = inside[0] - start
        row["generate_s"] = end - start
        rows.append(row)
        last_end = end
    encodes = sorted(
        (span, where)
        for name, where in ((markers.ENCODE_BATCH, "thread"), (markers.ENCODE_SLICES, "threads"))
        for span in marker_spans(events, name)
    )
    joins = sorted(
        (span, key)
        for name, key in ((markers.JOIN_PAGEABLE, "join_pageable_s"), (markers.JOIN_PINNED, "join_pinned_s"))
        for span in marker_spans(events, name)
    )
    for row, ((start, end), where) in zip(rows, encodes, strict=False):
        row[f"encode_s_{where}"] = end - start
    for row, ((start, end), key) in zip(rows, joins, strict=False):
        row[key] = end - start
    return [{key: round(value, 3) for key, value in row.items()} for row in rows]


def profile_generate(model, processor, samples, settings, args) -> dict:
    """Where one batch's time goes: image loading, the processor, prefill (vision + prompt) and each
    decoding step; and how busy the GPU is while decoding (kernel time / wall time). The tower is
    compiled as settings say; decoding is timed through generate and, where it can be, graphed."""
    import logging

    from hwocr.evaluate.fast.vision import compiled_vision
    from hwocr.model.adapt import vision_tower

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("hwocr.evaluate.fast.decoding").addHandler(handler)
    tower = compiled_vision(vision_tower(model)) if settings.compile_vision else contextlib.nullcontext()
    try:
        with tower:
            out = _profile_batch(model, processor, samples, settings, args)
    finally:
        logging.getLogger("hwocr.evaluate.fast.decoding").removeHandler(handler)
    out["compiled_tower"] = settings.compile_vision
    out["decode_warnings"] = warnings
    print("generate profile:", json.dumps({k: v for k, v in out.items() if "top_kernels" not in k}))
    return out


def _profile_batch(model, processor, samples, settings, args) -> dict:
    from hwocr.data import load_image
    from hwocr.evaluate.fast.decoding import can_graph, greedy_generate, grouped_experts_while_decoding
    from hwocr.evaluate.generate import _floating_dtype
    from hwocr.inputs import encode, pixels_to_device

    batch = samples[: settings.batch_size or 128]
    dtype = _floating_dtype(model)

    def timed(fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - start

    images, t_load = timed(lambda: [load_image(s.image) for s in batch])
    prompts = [settings.prompt] * len(batch)
    inputs, t_encode = timed(
        lambda: encode(processor, images, prompts, raw_pixels=True, padding=True, return_tensors="pt")
    )
    inputs, t_to_device = timed(lambda: pixels_to_device(inputs, processor, "cuda", dtype))
    kwargs = dict(
        do_sample=False,
        num_beams=1,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=None,
        **settings.generate_kwargs(),
    )

    def generate(n):
        with torch.inference_mode(), grouped_experts_while_decoding(model):
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **kwargs)

    generate(2)  # warm this batch shape
    seconds_by_tokens = {}
    for n in (1, 2, 8, 24, args.new_tokens):
        _, seconds_by_tokens[n] = timed(lambda n=n: generate(n))
    t_prefill, t_full = seconds_by_tokens[1], seconds_by_tokens[args.new_tokens]
    per_step = (t_full - t_prefill) / max(1, args.new_tokens - 1)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, t_prof = timed(lambda: generate(args.new_tokens))
    events = prof.key_averages()
    kernel_us = sum(
        e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA
    )
    print(events.table(sort_by="self_device_time_total", row_limit=25))
    with profile(activities=[ProfilerActivity.CUDA]) as prefill_prof:
        timed(lambda: generate(1))
    prefill_events = prefill_prof.key_averages()
    prefill_table = prefill_events.table(sort_by="self_device_time_total", row_limit=30)
    # the decoding steps' kernels: a whole generate's kernel time less one prefill's, by kernel
    decode_us: dict[str, float] = {}
    for sign, table in ((1, events), (-1, prefill_events)):
        for e in table:
            if e.device_type == torch.autograd.DeviceType.CUDA:
                decode_us[e.key[:100]] = decode_us.get(e.key[:100], 0.0) + sign * e.self_device_time_total
    steps = max(1, args.new_tokens - 1)
    decode_top = {
        name: round(us / steps / 1000, 3)
        for name, us in sorted(decode_us.items(), key=lambda kv: -kv[1])[:25]
    }
    out = {
        "batch": len(batch),
        "load_images_s": round(t_load, 3),
        "processor_s": round(t_encode, 3),
        "to_device_s": round(t_to_device, 3),
        "prefill_s": round(t_prefill, 3),
        "decode_step_ms": round(per_step * 1000, 2),
        "generate_s": round(t_full, 3),
        "seconds_by_new_tokens": {n: round(t, 3) for n, t in seconds_by_tokens.items()},
        "gpu_kernel_share": round(kernel_us / 1e6 / t_prof, 3),
        "prefill_ms_by_module": prefill_by_module(model, lambda: generate(1)),
        "prefill_top_kernels": prefill_table,
        "decode_ms_per_step_by_kernel": decode_top,
        "decode_kernel_ms_per_step": round(sum(decode_us.values()) / steps / 1000, 2),
    }
    if can_graph(model):  # the same batch with each step replayed as a CUDA graph (eos -1: never stops)

        def graphed(n):
            return greedy_generate(model, inputs, n, eos_token_id=-1, pad_token_id=kwargs["pad_token_id"])

        graphed(2)
        t_one, t_all = (timed(lambda n=n: graphed(n))[1] for n in (1, args.new_tokens))
        out["graphed_prefill_s"] = round(t_one, 3)
        out["graphed_decode_step_ms"] = round((t_all - t_one) / steps * 1000, 2)  # capture included
        kernel_ms = {}
        for n in (1, args.new_tokens):
            with profile(activities=[ProfilerActivity.CUDA]) as graphed_prof:
                timed(lambda n=n: graphed(n))
            kernel_ms[n] = sum(
                e.self_device_time_total
                for e in graphed_prof.key_averages()
                if e.device_type == torch.autograd.DeviceType.CUDA
            )
        out["graphed_decode_kernel_ms_per_step"] = round(
            (kernel_ms[args.new_tokens] - kernel_ms[1]) / steps / 1000, 2
        )
    return out


def prefill_by_module(model, run) -> dict:
    """GPU milliseconds of one prefill in each part of the model (CUDA events around each call)."""
    from hwocr.model.adapt import unwrap

    core = unwrap(model).model
    tower = core.vision_tower
    parts = {
        "sam_encoder": tower.sam_encoder,
        "vision_encoder": tower.vision_encoder,
        "projector": core.multi_modal_projector,
        "language_model": core.language_model,
        "lm_head": unwrap(model).lm_head,
    }
    parts.update({f"sam_layer_{i}": layer for i, layer in enumerate(tower.sam_encoder.layers[:3])})
    parts["sam_neck"] = tower.sam_encoder.neck
    events: dict[str, list] = {name: [] for name in parts}
    handles = []
    for name, module in parts.items():

        def before(_m, _a, name=name):
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            events[name].append([start, None])

        def after(_m, _a, _o, name=name):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            events[name][-1][1] = end

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    torch.cuda.synchronize()
    out = {
        name: round(sum(a.elapsed_time(b) for a, b in pairs), 1) for name, pairs in events.items() if pairs
    }
    out["calls"] = {name: len(pairs) for name, pairs in events.items() if pairs}
    out["wall_ms"] = round((time.perf_counter() - start) * 1000, 1)
    print("prefill by module (ms):", json.dumps(out))
    return out


def _identical_texts(first: list, second: list) -> int:
    """How many of two transcriptions of the same samples are the same text."""
    return sum(a.prediction == b.prediction for a, b in zip(first, second, strict=True))


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ----------------------------------------------------------------------------------------------


def environment(args) -> dict:
    """The product's environment record (hwocr/report/record.py), plus CUDA, bitsandbytes and the command."""
    try:
        bnb = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        bnb = None
    return environment_info() | {
        "cuda": torch.version.cuda,
        "bitsandbytes": bnb,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        choices=["full", "tiny", "v1", "paddleocr_vl", "tiny_paddleocr_vl", "glm_ocr", "tiny_glm_ocr"],
        default="full",
    )
    p.add_argument("--v1-checkpoint", default=os.environ.get("HWOCR_V1_CHECKPOINT"), help="--model v1's dir")
    p.add_argument("--backend", choices=["hf", "unsloth"], default="hf")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument(
        "--image-mode", choices=["tiny", "small", "base", "large", "gundam", "dynamic"], default="base"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--task",
        choices=["train", "run", "generate", "both", "loss-match"],
        default="train",
        help="run = the product's Trainer path (hwocr.train.train) beside the bare train step",
    )
    p.add_argument("--workers", type=int, default=8, help="--task run: dataloader workers")
    p.add_argument("--pad-multiple", type=int, default=None, help="collator padding (default: the product's)")
    p.add_argument("--eager-vision", action="store_true", help="generate with the vision tower uncompiled")
    p.add_argument(
        "--eager-decoding",
        action="store_true",
        help="generate with transformers' generate, not graphed steps",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        choices=list(PASSES),
        help="--task generate: the same images through these passes, in order (a name twice: timed twice)",
    )
    p.add_argument("--timeline", action="store_true", help="--compare: per batch, where its time went")
    p.add_argument("--recipe", choices=["baseline", "optimized"], default="optimized")
    p.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing")
    p.add_argument(
        "--lora-experts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LoRA on DeepSeek-OCR-2's routed experts too (lora.experts; --no-lora-experts: not)",
    )
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (the lines_glm_ocr preset: 8)")
    p.add_argument(
        "--full-finetune", action="store_true", help="no LoRA: every weight past the tower trains (lora=none)"
    )
    p.add_argument("--lora-alpha", type=int, default=0, help="LoRA alpha (0 = the rank)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--memory-profile", action="store_true", help="peak memory per stage of the step")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one step")
    p.add_argument("--gen-images", type=int, default=128)
    p.add_argument("--gen-batch", type=int, default=0, help="0 = transcribe's automatic batch size")
    p.add_argument("--gen-cache", choices=["dynamic", "static"], default="dynamic", help="KV cache kind")
    p.add_argument(
        "--gen-compile-backend",
        choices=["inductor", "cudagraphs"],
        help="with --gen-cache static: the torch.compile backend of transformers' compiled decoding",
    )
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--gen-lora", action="store_true", help="generate through a fresh LoRA (tuned eval)")
    p.add_argument("--no-repeat-ngram", type=int, default=0, help="repetition guard n (0 = off)")
    p.add_argument("--no-repeat-window", type=int, default=0, help="repetition guard window")
    p.add_argument("--check-unbatched", type=int, default=0, help="compare N texts with batch-1 generation")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--checkpoint-dir", default=os.environ.get("HWOCR_BENCH_DIR", "/tmp/hwocr-bench"))
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--json", help="write the result here (default benchmarks/results/<name>.json)")
    p.add_argument("--name", help="result name")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu" and args.dtype != "fp32":
        print("note: CPU runs use fp32 autocast off; fp16/bf16 weights are slow or unsupported on CPU")
    torch.manual_seed(0)
    mcfg = model_config(args)
    speedups = FAMILIES[mcfg.family].deepseek_speedups  # the other families run transformers' stock model
    mcfg = replace(mcfg, memory_optimizations=args.recipe == "optimized" and speedups)
    hw = HardwareConfig(
        name="bench",
        device=args.device,
        dtype=args.dtype,
        load_in_4bit=args.load_in_4bit,
        per_device_batch=args.batch,
        gradient_checkpointing=not args.no_grad_ckpt,
    )
    if args.backend == "unsloth" and args.lora_experts and args.model != "v1":
        raise SystemExit(
            "--backend unsloth adapts no routed experts (config.validate): add --no-lora-experts"
        )
    lora = (
        LoraConfig(enabled=False, r=0, alpha=0, experts=False)
        if args.full_finetune
        else LoraConfig(r=args.lora_r, alpha=args.lora_alpha or args.lora_r, experts=args.lora_experts)
    )
    from hwocr.model import load_processor

    processor = load_processor(mcfg)
    folder = Path(args.checkpoint_dir) / "lines"
    n = max(
        args.batch * (args.steps if args.task == "run" else max(1, min(args.steps, 4))),
        args.gen_images if args.task in ("generate", "both") else 0,
    )
    samples = line_samples(n, folder, args.width, args.height)
    backend = "_unsloth" if args.backend == "unsloth" else ""
    name = args.name or (
        f"{args.model}_{args.task}_{args.recipe}{backend}_{args.dtype}{'_4bit' if args.load_in_4bit else ''}"
        f"_{args.image_mode}_b{args.batch}{'' if args.lora_experts else '_noexperts'}"
    )
    result = {
        "name": name,
        **environment(args),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if args.task in ("train", "both", "run"):
        run_train(args, mcfg, hw, lora, processor, samples, result)
    if args.task == "run":
        run_product_trainer(args, mcfg, hw, lora, processor, samples, result)
    if args.task == "loss-match":
        loss_match(args, mcfg, hw, lora, processor, samples, result)
    if args.task in ("generate", "both"):
        run_generate(args, mcfg, hw, processor, samples[: args.gen_images], result, lora)
    out = Path(args.json) if args.json else Path(__file__).parent / "results" / f"{name}.json"
    write_atomic(out, json.dumps(result, indent=2, default=str))
    print(summary(result))
    print(f"wrote {out}")
    return result


def summary(result: dict) -> str:
    rows = [f"== {result['name']} on {result['device']}"]
    if "weights_gib_by_component" in result:
        rows.append(
            "weights GiB: " + ", ".join(f"{k} {v}" for k, v in result["weights_gib_by_component"].items())
        )
    train = result.get("train")
    if train:
        rows.append(
            f"train: peak {train.get('peak_gib')} GiB, {train['samples_per_s']} samples/s, "
            f"loss {train['first_loss']:.4f} -> {train['last_loss']:.4f}, "
            f"nonfinite {train['nonfinite_losses']}/{train['steps']}"
        )
        for stage, m in train.get("memory_by_stage", {}).items():
            rows.append(
                f"  {stage:18s} start {m['start_gib']:7.3f}  peak {m['peak_gib']:7.3f}  +{m['transient_gib']:.3f}"
            )
    run = result.get("run")
    if run:
        rows.append(
            f"run (hwocr.train.train, {run['workers']} workers): {run['samples_per_s']} samples/s "
            f"(step {run['step_s']} s + gap {run['gap_s']} s), ratio to bare step "
            f"{run.get('ratio_to_bare_step')}, collator {result.get('collate_s_per_batch')} s/batch"
        )
    if "loss_match" in result:
        rows.append("loss match: " + json.dumps(result["loss_match"]))
    gen = result.get("generate", {})
    if "images_per_s" in gen:
        rows.append(
            f"generate: {gen['images_per_s']} images/s, batch {gen['batch_size']}, peak {gen.get('peak_gib')} GiB"
        )
    if "unbatched_identical" in gen:
        rows.append(f"batch-1 token ids identical to batched: {gen['unbatched_identical']}")
    if passes := result.get("generate_passes"):
        rows.append(
            "generate passes, speed-up over the first: "
            + json.dumps(passes["speedup_over_first"] | {"images": passes["images"]})
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""One set of random weights in DeepSeek's own model class and in transformers' native one (loaded by
hwocr's loader through the conversion mapping): logits on the same inputs.

    HWOCR_OCR2_HUB=/work/upstream/DeepSeek-OCR-2-hub HWOCR_OCR2_OFFICIAL=/work/upstream/DeepSeek-OCR-2 \\
    HWOCR_OCR2_PYTHONPATH=/work/upstream/tf446:/work/upstream/tv \\
        python tests/official/ocr2_logits.py --size reduced --work /tmp/ocr2-logits

The official side runs in a subprocess whose PYTHONPATH starts with HWOCR_OCR2_PYTHONPATH
(transformers 4.46.3, which DeepSeek's requirements.txt pins); this process runs hwocr under
transformers 5.17. `--size full` builds the released shapes (3.39 B parameters: ~14 GB in fp32,
for a GPU host); `--size reduced` keeps the architecture with 2-layer towers (~1.5 GB, a CPU).
Inputs: infer()'s own preparation (gundam: 1024 global view, 768 crops) of a line and a word,
left-padded into one batch. Prints one JSON line: max/mean |Δ| of the logits and argmax agreement.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
OFFICIAL = HERE / "ocr2_official.py"
PROMPT = "<image>\nFree OCR."
PAD_ID = 2  # <｜▁pad▁｜>
# A line that crops into 6 tiles and a word that fits one global view
IMAGE_SIZES = {"line": (1603, 120), "word": (300, 110)}


def official(args: argparse.Namespace, *argv: str) -> None:
    """Run ocr2_official.py in DeepSeek's environment (transformers 4.46.3 first on the path)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([args.official_pythonpath, os.environ.get("PYTHONPATH", "")])
    )
    subprocess.run([sys.executable, str(OFFICIAL), *argv], check=True, env=env)


def write_images(work: Path) -> list[Path]:
    paths = []
    for i, (name, size) in enumerate(IMAGE_SIZES.items()):
        generator = torch.Generator().manual_seed(i)
        noise = torch.randint(150, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
        image = Image.fromarray(noise.numpy(), "RGB")
        ImageDraw.Draw(image).text((8, size[1] // 2 - 6), "Tôi yêu tiếng Việt", fill="black")
        paths.append(work / f"{name}.png")
        image.save(paths[-1])
    return paths


def left_padded_batch(inputs: list[dict]) -> dict:
    """infer()'s per-image inputs as one left-padded batch, in the official and the native names."""
    length = max(len(x["input_ids"]) for x in inputs)
    batch = {
        "input_ids": torch.full((len(inputs), length), PAD_ID, dtype=torch.long),
        "attention_mask": torch.zeros((len(inputs), length), dtype=torch.long),
        "images_seq_mask": torch.zeros((len(inputs), length), dtype=torch.bool),
    }
    for row, x in enumerate(inputs):
        n = len(x["input_ids"])
        batch["input_ids"][row, length - n :] = x["input_ids"]
        batch["attention_mask"][row, length - n :] = 1
        batch["images_seq_mask"][row, length - n :] = x["images_seq_mask"]
    # as generate() derives them for a left-padded batch
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch["images_spatial_crop"] = torch.cat([x["images_spatial_crop"] for x in inputs])
    batch["globals"] = [x["global"] for x in inputs]  # float32, before infer()'s bf16 cast
    batch["crops"] = [x["crops"] for x in inputs]
    return batch


def native_logits(
    checkpoint: Path, batch: dict, device: str, dtype: torch.dtype, optimize: bool
) -> torch.Tensor:
    """hwocr's loader (native classes, no remote code) on the same tensors; `optimize` is the
    product's default (folded SAM attention, vision tower in chunks)."""
    from hwocr.config import HardwareConfig, ModelConfig
    from hwocr.model.load import load_model

    cfg = ModelConfig(
        name="deepseek_ocr2",
        family="ocr2",
        source=str(checkpoint),
        revision=None,
        memory_optimizations=optimize,
    )
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    hardware = HardwareConfig(device=device, dtype=dtype_name, load_in_4bit=False)
    model = load_model(cfg, hardware, device_map={"": device} if device != "cpu" else None).eval()
    crops = [c for c in batch["crops"] if c is not None]
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            pixel_values=torch.cat(batch["globals"]).to(device, dtype),
            pixel_values_local=torch.cat(crops).to(device, dtype) if crops else None,
            num_local_patches=[0 if c is None else len(c) for c in batch["crops"]],
            use_cache=False,
        )
    return out.logits.float().cpu()


def compare(official_logits: torch.Tensor, native: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    keep = attention_mask.bool()
    a, b = official_logits[keep], native[keep]
    delta = (a - b).abs()
    return {
        "positions": int(keep.sum()),
        "max_abs_logits": float(a.abs().max()),
        "max_abs_delta": float(delta.max()),
        "mean_abs_delta": float(delta.mean()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"official-{args.size}"
    if (
        not (checkpoint / "model.safetensors").exists()
        and not (checkpoint / "model.safetensors.index.json").exists()
    ):
        official(
            args, "build", "--hub", args.hub, "--out", str(checkpoint), "--size", args.size,
            "--save-dtype", args.save_dtype,
        )  # fmt: skip
    images = write_images(work)
    official(
        args, "preprocess", "--hub", args.hub, "--github", args.github, "--prompt", PROMPT,
        "--scratch", str(work / "infer-out"), "--out", str(work / "inputs.pt"), *map(str, images),
    )  # fmt: skip
    prepared = torch.load(work / "inputs.pt")
    batch = left_padded_batch([prepared[("infer", "gundam", str(path))] for path in images])
    torch.save(batch, work / "batch.pt")
    official(
        args, "forward", "--checkpoint", str(checkpoint), "--batch", str(work / "batch.pt"),
        "--out", str(work / "official_logits.pt"), "--device", args.device, "--dtype", args.dtype,
    )  # fmt: skip
    official_logits = torch.load(work / "official_logits.pt")["logits"]
    native = native_logits(checkpoint, batch, args.device, getattr(torch, args.dtype), not args.plain)
    result = {"size": args.size, "device": args.device, "dtype": args.dtype, "optimize": not args.plain}
    result.update(compare(official_logits, native, batch["attention_mask"]))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["reduced", "full"], default="reduced")
    parser.add_argument("--work", required=True, help="scratch folder (the checkpoint is reused from there)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--save-dtype", default="float32", help="the random checkpoint's dtype on disk")
    parser.add_argument(
        "--plain", action="store_true", help="model.memory_optimizations=false on hwocr's side"
    )
    parser.add_argument("--hub", default=os.environ.get("HWOCR_OCR2_HUB"))
    parser.add_argument("--github", default=os.environ.get("HWOCR_OCR2_OFFICIAL"))
    parser.add_argument("--official-pythonpath", default=os.environ.get("HWOCR_OCR2_PYTHONPATH"))
    args = parser.parse_args(argv)
    missing = [name for name in ("hub", "github", "official_pythonpath") if not getattr(args, name)]
    if missing:
        parser.error(f"missing {missing}: set HWOCR_OCR2_HUB, HWOCR_OCR2_OFFICIAL, HWOCR_OCR2_PYTHONPATH")
    return args


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))

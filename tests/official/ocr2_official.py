"""DeepSeek's own DeepSeek-OCR-2 code, run in its own environment (transformers 4.46.3, as its
requirements.txt pins), for tests/test_official_ocr2.py and tests/official/ocr2_logits.py.

Nothing here reimplements DeepSeek's code: it imports it from the paths given and intercepts only
what a CPU run needs (`.cuda()`, `generate`, the point where `infer()` has built its inputs).

    PYTHONPATH=$HWOCR_OCR2_PYTHONPATH python tests/official/ocr2_official.py preprocess ...

Subcommands (each writes one torch.save file or one checkpoint folder):
  preprocess  infer()'s inputs (hub code) and the vLLM processor's (GitHub code) for image files
  build       a random checkpoint in the official key layout, written by the official model class
  forward     logits of the official model class on a saved batch
"""

import argparse
import functools
import importlib
import json
import shutil
import sys
import types
from pathlib import Path

import torch

# What a random checkpoint's config.json states beyond the hub's, so a reduced vision tower can be
# described: the hub's own config.json names no encoder depth (its builders hard-code 24 layers).
ENCODER_KEYS = ("layers", "heads", "kv_heads", "intermediate_size")
HUB_FILES = (
    "configuration_deepseek_v2.py",
    "conversation.py",
    "deepencoderv2.py",
    "modeling_deepseekocr2.py",
    "modeling_deepseekv2.py",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
# (base_size, image_size, crop_mode) of infer() for each hwocr image mode
INFER_MODES = {"base": (1024, 1024, False), "small": (768, 768, False), "gundam": (1024, 768, True)}


def import_hub(hub: Path):
    """The hub's remote code as package `ocr2hub` (its files import each other relatively)."""
    package = types.ModuleType("ocr2hub")
    package.__path__ = [str(hub)]
    sys.modules["ocr2hub"] = package
    return importlib.import_module("ocr2hub.modeling_deepseekocr2")


def sized(module, config: dict):
    """Point the official vision builders at the sizes config.json states (full size: unchanged)."""
    width = config["vision_config"]["width"]
    sam, qwen = width["sam_vit_b"], width["qwen2-0-5b"]
    encoder = importlib.import_module("ocr2hub.deepencoderv2")
    if (sam["width"], sam["layers"]) != (768, 12):
        module.build_sam_vit_b = functools.partial(
            encoder._build_sam,
            encoder_embed_dim=sam["width"],
            encoder_depth=sam["layers"],
            encoder_num_heads=sam["heads"],
            encoder_global_attn_indexes=sam["global_attn_indexes"],
        )
    if any(key in qwen for key in ENCODER_KEYS):
        module.build_qwen2_decoder_as_encoder = functools.partial(
            encoder.build_qwen2_decoder_as_encoder,
            decoder_layer=qwen["layers"],
            num_attention_heads=qwen["heads"],
            num_key_value_heads=qwen["kv_heads"],
            intermediate_size=qwen["intermediate_size"],
        )


def reduced_config(hub_config: dict) -> dict:
    """The hub's config.json with a small vision tower and text model of the same architecture.

    The text hidden size stays 1280 and the encoder width 896: the official model class hard-codes
    both (its projector is Linear(896, 1280)). The vocabulary stays 129280, so the real token ids fit.
    """
    config = json.loads(json.dumps(hub_config))
    text = dict(
        num_hidden_layers=2,
        intermediate_size=512,
        moe_intermediate_size=128,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=2,
    )
    config.update(text)  # the hub's config repeats the text fields at the top level
    config["language_config"].update(text)
    config["vision_config"]["width"]["sam_vit_b"].update(
        width=128, layers=2, heads=2, global_attn_indexes=[1]
    )
    config["vision_config"]["width"]["qwen2-0-5b"].update(
        layers=2, heads=14, kv_heads=2, intermediate_size=512
    )
    return config


def cmd_build(args) -> None:
    hub = Path(args.hub)
    hub_config = json.loads((hub / "config.json").read_text())
    config_dict = reduced_config(hub_config) if args.size == "reduced" else hub_config
    module = import_hub(hub)
    sized(module, config_dict)
    torch.manual_seed(args.seed)
    config = module.DeepseekOCR2Config(**config_dict)
    model = module.DeepseekOCR2ForCausalLM(config).eval().to(getattr(torch, args.save_dtype))
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    # The hub's own config.json format (save_pretrained wrote the remote class's flattened dict).
    (out / "config.json").write_text(json.dumps(config_dict, indent=2))
    for name in HUB_FILES:
        shutil.copy(hub / name, out / name)
    print(
        f"official {args.size} checkpoint: {sum(p.numel() for p in model.parameters())} parameters -> {out}"
    )


def no_cuda():
    """infer() and forward() call .cuda() on tensors; on a CPU they stay where they are."""
    torch.Tensor.cuda = lambda self, *a, **k: self


def tokenizer_from(hub: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hub))


def infer_inputs(module, tokenizer, image_file: str, prompt: str, mode: str, out_dir: str) -> dict:
    """What infer() passes to generate() for one image, and its views before the bf16 cast."""
    captured, views = {}, []
    transform_class = module.BasicImageTransform

    class Recording(transform_class):
        def __call__(self, x):
            y = super().__call__(x)
            views.append(y.clone())
            return y

    def generate(input_ids, **kwargs):
        captured.update(input_ids=input_ids, **kwargs)
        return torch.cat([input_ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)

    stub = types.SimpleNamespace(
        disable_torch_init=lambda: None, generate=generate, parameters=lambda: iter([torch.zeros(1)])
    )
    base_size, image_size, crop_mode = INFER_MODES[mode]
    module.BasicImageTransform = Recording
    try:
        module.DeepseekOCR2ForCausalLM.infer(
            stub,
            tokenizer,
            prompt=prompt,
            image_file=image_file,
            output_path=out_dir,
            base_size=base_size,
            image_size=image_size,
            crop_mode=crop_mode,
            eval_mode=True,
        )
    finally:
        module.BasicImageTransform = transform_class
    crops, global_view = captured["images"][0]
    has_crops = bool(crops.abs().sum() != 0)
    return {
        "input_ids": captured["input_ids"][0],
        "images_seq_mask": captured["images_seq_mask"][0],
        "images_spatial_crop": captured["images_spatial_crop"],
        "global_bf16": global_view,
        "crops_bf16": crops if has_crops else None,
        # infer() transforms the global view first, then each crop
        "global": views[0].unsqueeze(0),
        "crops": torch.stack(views[1:]) if has_crops else None,
    }


def vllm_inputs(github: Path, tokenizer, image_file: str, prompt: str, cropping: bool) -> dict:
    """The vLLM path's `tokenize_with_images` (DeepSeek-OCR2-vllm/process/image_process.py)."""
    vllm = github / "DeepSeek-OCR2-master" / "DeepSeek-OCR2-vllm"
    config = types.ModuleType("config")  # its config.py loads the tokenizer from the hub at import
    config.__dict__.update(
        IMAGE_SIZE=768,
        BASE_SIZE=1024,
        CROP_MODE=cropping,
        MIN_CROPS=2,
        MAX_CROPS=6,
        PROMPT=prompt,
        TOKENIZER=tokenizer,
    )
    sys.modules["config"] = config
    sys.path.insert(0, str(vllm))
    sys.modules.pop("process.image_process", None)
    image_process = importlib.import_module("process.image_process")
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(image_file)).convert("RGB")  # as its run_*.py scripts
    processor = image_process.DeepseekOCR2Processor(tokenizer=tokenizer)
    input_ids, pixel_values, crops, seq_mask, spatial_crop, num_tokens, _ = processor.tokenize_with_images(
        images=[image], bos=True, eos=True, cropping=cropping
    )[0]
    has_crops = bool(crops.abs().sum() != 0)
    return {
        "input_ids": input_ids[0],
        "images_seq_mask": seq_mask,
        "images_spatial_crop": spatial_crop,
        "global": pixel_values,
        "crops": crops[0] if has_crops else None,
        "num_image_tokens": num_tokens,
    }


def cmd_preprocess(args) -> None:
    no_cuda()
    hub, github = Path(args.hub), Path(args.github)
    module = import_hub(hub)
    tokenizer = tokenizer_from(hub)
    results = {}
    for image_file in args.images:
        for mode in INFER_MODES:
            results[("infer", mode, image_file)] = infer_inputs(
                module, tokenizer, image_file, args.prompt, mode, args.scratch
            )
        for cropping in (True, False):
            results[("vllm", cropping, image_file)] = vllm_inputs(
                github, tokenizer, image_file, args.prompt, cropping
            )
    torch.save(results, args.out)


def cmd_forward(args) -> None:
    no_cuda()
    checkpoint = Path(args.checkpoint)
    config_dict = json.loads((checkpoint / "config.json").read_text())
    module = import_hub(checkpoint)
    sized(module, config_dict)
    dtype = getattr(torch, args.dtype)
    config = module.DeepseekOCR2Config(**config_dict)
    model = module.DeepseekOCR2ForCausalLM.from_pretrained(str(checkpoint), config=config, torch_dtype=dtype)
    model = model.to(args.device).eval()
    batch = torch.load(args.batch)
    device = args.device
    images = [
        (
            (crops if crops is not None else torch.zeros(1, 3, 1024, 1024)).to(device, dtype),
            global_view.to(device, dtype),
        )
        for crops, global_view in zip(batch["crops"], batch["globals"], strict=True)
    ]
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            images=images,
            images_seq_mask=batch["images_seq_mask"].to(device),
            images_spatial_crop=batch["images_spatial_crop"],
            use_cache=False,
            return_dict=True,
        ).logits
    torch.save({"logits": logits.float().cpu()}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("--hub", required=True, help="the hub repo's files (remote code, tokenizer, config)")
    build.add_argument("--out", required=True)
    build.add_argument("--size", choices=["reduced", "full"], default="reduced")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--save-dtype", default="float32", help="bfloat16 halves a full-size checkpoint (6.8 GB)"
    )
    pre = sub.add_parser("preprocess")
    pre.add_argument("--hub", required=True)
    pre.add_argument("--github", required=True, help="the GitHub repo deepseek-ai/DeepSeek-OCR-2")
    pre.add_argument("--prompt", required=True)
    pre.add_argument("--scratch", required=True, help="infer()'s output_path (it creates folders there)")
    pre.add_argument("--out", required=True)
    pre.add_argument("images", nargs="+")
    fwd = sub.add_parser("forward")
    fwd.add_argument("--checkpoint", required=True)
    fwd.add_argument("--batch", required=True)
    fwd.add_argument("--out", required=True)
    fwd.add_argument("--device", default="cpu")
    fwd.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    {"build": cmd_build, "preprocess": cmd_preprocess, "forward": cmd_forward}[args.command](args)


if __name__ == "__main__":
    main()

"""DeepSeek-OCR-2: hwocr's inputs and weights checked against DeepSeek's own code (opt-in).

DeepSeek's code lives outside the repo and is never committed. Three variables point at it:

    HWOCR_OCR2_OFFICIAL    github deepseek-ai/DeepSeek-OCR-2 (its vLLM preprocessing)
    HWOCR_OCR2_HUB         the hub repo deepseek-ai/DeepSeek-OCR-2's files: remote code (infer(), the
                           model class), config.json, tokenizer files
    HWOCR_OCR2_PYTHONPATH  put first on PYTHONPATH for DeepSeek's side: where transformers 4.46.3
                           (its requirements.txt pin) and torchvision import

    HWOCR_OCR2_OFFICIAL=/work/upstream/DeepSeek-OCR-2 HWOCR_OCR2_HUB=/work/upstream/DeepSeek-OCR-2-hub \\
    HWOCR_OCR2_PYTHONPATH=/work/upstream/tf446:/work/upstream/tv python -m pytest -q tests/test_official_ocr2.py

With torchvision importable in this process too (PYTHONPATH=...:/work/upstream/tv) the torchvision
backend of the image processor is measured beside the PIL one. HWOCR_OCR2_REPORT=FILE writes the
measured pixel differences as JSON. The real VNOnDB lines are used where /work/shared has them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from hwocr.config import ModelConfig
from hwocr.data import load_image
from hwocr.inputs import encode, setup_of
from hwocr.model.load import load_processor

OFFICIAL = os.environ.get("HWOCR_OCR2_OFFICIAL", "")
HUB = os.environ.get("HWOCR_OCR2_HUB", "")
OFFICIAL_PYTHONPATH = os.environ.get("HWOCR_OCR2_PYTHONPATH", "")
REPORT = os.environ.get("HWOCR_OCR2_REPORT", "")
VNONDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnondb_line" / "test_data"
VNONDB = VNONDB if VNONDB.is_dir() else Path("/work/shared/data/vnondb_line/test_data")
RUNNER = Path(__file__).resolve().parent / "official" / "ocr2_official.py"
PROMPT = "<image>\nFree OCR."
MODES = ("base", "small", "gundam")
IMAGE_TOKEN = 128815

pytestmark = pytest.mark.skipif(
    not (os.path.isdir(OFFICIAL) and os.path.isdir(HUB) and OFFICIAL_PYTHONPATH),
    reason="set HWOCR_OCR2_OFFICIAL, HWOCR_OCR2_HUB and HWOCR_OCR2_PYTHONPATH (DeepSeek's own code)",
)

# Bounds on max |Δ| in normalised units ((x/255 - 0.5)/0.5: one grey level is 2/255), from the
# measurement in benchmarks/results/official_ocr2_inputs.json: the PIL backend is exact; the
# torchvision backend (antialiased bicubic) is off by up to 6 grey levels on downscaled global
# views (a 500x1400 page) and 2 on crops, with mean |Δ| below 1e-3.
LEVEL = 2 / 255
TOLERANCE = {"pil": 1e-6, "torchvision": 6 * LEVEL + 1e-6}
MEAN_TOLERANCE = {"pil": 1e-7, "torchvision": 1e-3}


def _torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


BACKENDS = [
    "pil",
    pytest.param("torchvision", marks=pytest.mark.skipif(not _torchvision(), reason="no torchvision")),
]


def noisy(size: tuple[int, int], seed: int, text: str = "Tôi yêu tiếng Việt") -> Image.Image:
    """Text on noise: every pixel counts when views are compared."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(150, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(noise.numpy(), "RGB")
    ImageDraw.Draw(image).text((8, size[1] // 2 - 6), text, fill="black")
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Lines, a word, a paragraph and a page; real VNOnDB lines where present; an EXIF-rotated line."""
    folder = tmp_path_factory.mktemp("official-images")
    sizes = {
        "line": (1600, 120),
        "line_1603": (1603, 120),  # the one-pixel global-view placement case
        "word": (300, 110),
        "word_small": (90, 40),
        "paragraph": (1650, 560),
        "page": (500, 1400),
        "square_768": (768, 768),  # exactly the no-crop bound
    }
    paths = {}
    for seed, (name, size) in enumerate(sizes.items()):
        paths[name] = folder / f"{name}.png"
        noisy(size, seed).save(paths[name])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 120x1600, shown as a 1600x120 line
    paths["exif_line"] = folder / "exif_line.jpg"
    noisy((120, 1600), 99).save(paths["exif_line"], exif=exif, quality=95)
    for real in sorted(VNONDB.glob("*/*.jpg"))[:4] if VNONDB.is_dir() else []:
        paths[f"vnondb_{real.parent.name}_{real.stem}"] = real
    return paths


@pytest.fixture(scope="module")
def official(images, tmp_path_factory) -> dict:
    """DeepSeek's code on every image: infer() in each mode, and the vLLM processor."""
    work = tmp_path_factory.mktemp("official-run")
    out = work / "inputs.pt"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([OFFICIAL_PYTHONPATH, os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, str(RUNNER), "preprocess", "--hub", HUB, "--github", OFFICIAL]
    command += ["--prompt", PROMPT, "--scratch", str(work / "infer"), "--out", str(out)]
    subprocess.run([*command, *map(str, images.values())], check=True, env=env, capture_output=True)
    return torch.load(out)


@pytest.fixture(scope="module")
def processors(monkeypatch_module):
    """hwocr's processor for the hub repo's files (deepseek-ai's own layout), per mode and backend."""
    import hwocr.model.official as official_module

    built = {}
    for backend in ("pil", "torchvision") if _torchvision() else ("pil",):
        monkeypatch_module.setattr(
            official_module, "is_torchvision_available", lambda b=backend: b == "torchvision"
        )
        for mode in MODES:
            built[mode, backend] = load_processor(
                ModelConfig(name="deepseek_ocr2", source=HUB, image_mode=mode)
            )
    return built


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


MEASURED: dict = {}


def _record(key: tuple, delta: torch.Tensor) -> tuple[float, float]:
    worst, mean = float(delta.max()), float(delta.mean())
    MEASURED[" ".join(map(str, key))] = {"max_abs": worst, "mean_abs": mean}
    return worst, mean


def _check_views(key: tuple, backend: str, ours: dict, theirs: dict, problems: list) -> None:
    """Global view and crops (in DeepSeek's row-by-row order) within the backend's tolerance."""
    pairs = [("global", ours["pixel_values"], theirs["global"])]
    if theirs["crops"] is not None:
        pairs.append(("crops", ours.get("pixel_values_local"), theirs["crops"]))
    for part, mine, reference in pairs:
        if mine is None or mine.shape != reference.shape:
            problems.append(
                f"{key} {part}: shape {None if mine is None else tuple(mine.shape)} vs {tuple(reference.shape)}"
            )
            continue
        worst, mean = _record((*key, part), (mine - reference).abs())
        if worst > TOLERANCE[backend] or mean > MEAN_TOLERANCE[backend]:
            problems.append(f"{key} {part}: max |Δ| {worst:.3g}, mean {mean:.3g}")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if REPORT and MEASURED:
        Path(REPORT).write_text(json.dumps(MEASURED, indent=1, sort_keys=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_inputs_equal_infer(mode, backend, images, official, processors):
    """infer(tokenizer, prompt, image, base_size, image_size, crop_mode) for each hwocr mode: the
    same ids after BOS (test_bos_first checks BOS), image tokens at the same positions, the same
    number of crops, views within the measured tolerance."""
    processor, problems = processors[mode, backend], []
    for name, path in images.items():
        theirs = official[("infer", mode, str(path))]
        ours = encode(processor, [load_image(path)], [PROMPT], return_tensors="pt")
        ids, reference = ours["input_ids"][0].tolist(), theirs["input_ids"].tolist()
        assert reference[0] == 0  # infer() hard-codes BOS id 0
        if ids[ids[:1] == [0] :] != reference[1:]:
            problems.append(f"{name}: ids {ids[:8]}... vs {reference[:8]}...")
        if [i == IMAGE_TOKEN for i in ids[ids[:1] == [0] :]] != theirs["images_seq_mask"].tolist()[1:]:
            problems.append(f"{name}: image token positions")
        n_crops = int(ours["num_local_patches"][0])
        if n_crops != (0 if theirs["crops"] is None else len(theirs["crops"])):
            problems.append(f"{name}: {n_crops} crops")
        _check_views(("infer", mode, backend, name), backend, ours, theirs, problems)
    assert not problems, problems


@pytest.mark.parametrize("mode", MODES)
def test_bos_first(mode, images, processors):
    """infer() and the vLLM processor start every prompt with BOS (id 0); so does hwocr, though the
    real tokenizer under transformers 5.17 (TokenizersBackend, ByteLevel post-processor) adds none."""
    firsts = {
        name: encode(processors[mode, "pil"], [load_image(path)], [PROMPT], return_tensors="pt")["input_ids"][
            0, :2
        ].tolist()
        for name, path in images.items()
    }
    assert all(first == [0, IMAGE_TOKEN] for first in firsts.values()), firsts


@pytest.mark.parametrize("backend", BACKENDS)
def test_gundam_equals_the_vllm_processor(backend, images, official, processors):
    """The vLLM path's tokenize_with_images (crop mode, GitHub code) against hwocr's gundam."""
    processor, problems = processors["gundam", backend], []
    for name, path in images.items():
        theirs = official[("vllm", True, str(path))]
        ours = encode(processor, [load_image(path)], [PROMPT], return_tensors="pt")
        ids, reference = ours["input_ids"][0].tolist(), theirs["input_ids"].tolist()
        if ids[ids[:1] == [0] :] != reference[1:] or reference[0] != 0:
            problems.append(f"{name}: ids")
        if int((ours["input_ids"][0] == IMAGE_TOKEN).sum()) != sum(theirs["num_image_tokens"]):
            problems.append(f"{name}: image token count")
        _check_views(("vllm", "gundam", backend, name), backend, ours, theirs, problems)
    assert not problems, problems


def test_vllm_no_crop_mode_has_no_hwocr_counterpart(images, official, processors):
    """The vLLM scripts' CROP_MODE=False squashes every image to 768x768 and scales that up to a
    1024 view; hwocr's base pads to 1024 as infer(1024, 1024, False) does. Same ids (257 image
    tokens); the views differ wherever the aspect ratio is not 1 (the difference is recorded)."""
    processor = processors["base", "pil"]
    for name, path in images.items():
        theirs = official[("vllm", False, str(path))]
        ours = encode(processor, [load_image(path)], [PROMPT], return_tensors="pt")
        ids = ours["input_ids"][0].tolist()
        assert ids[ids[:1] == [0] :] == theirs["input_ids"].tolist()[1:], name
        assert int((ours["input_ids"][0] == IMAGE_TOKEN).sum()) == 257 == sum(theirs["num_image_tokens"])
        _record(
            ("vllm-nocrop-vs-base", "pil", name, "global"), (ours["pixel_values"] - theirs["global"]).abs()
        )


def test_the_port_alone_differs_where_hwocr_adapts_it(images, official, processors):
    """Without hwocr/inputs/views.py the port's views differ from infer()'s: one pixel of global-view
    placement (1600x120, 1603x120 lines), EXIF orientation, and the small mode's squash. When this
    fails, transformers has converged on DeepSeek's behaviour and the adapter can go."""
    differs = {}
    for mode, names in {"gundam": ["line", "line_1603", "exif_line"], "small": ["line", "word"]}.items():
        processor = processors[mode, "pil"]
        for name in names:
            theirs = official[("infer", mode, str(images[name]))]
            raw = processor(
                images=[load_image(images[name])],
                text=[PROMPT],
                return_tensors="pt",
                **setup_of(processor).call_kwargs,
            )
            delta = (raw["pixel_values"] - theirs["global"]).abs()
            differs[mode, name] = (
                _record(("port-without-adapters", mode, "pil", name, "global"), delta)[0] > 0.5
            )
    assert all(differs.values()), differs


@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_rows_equal_infer(mode, images, official, processors):
    """hwocr's batched generation input: each row is infer()'s ids, left-padded, views in row order."""
    processor = processors[mode, "pil"]
    names = ["line", "word", "paragraph", "word_small"]
    batch = encode(
        processor,
        [load_image(images[n]) for n in names],
        [PROMPT] * len(names),
        padding=True,
        return_tensors="pt",
    )
    length = batch["input_ids"].shape[1]
    local_start = 0
    for row, name in enumerate(names):
        theirs = official[("infer", mode, str(images[name]))]
        n = int(batch["attention_mask"][row].sum())
        # infer()'s ids, without their BOS while hwocr adds none (test_bos_first)
        reference = theirs["input_ids"].tolist()[-n:]
        assert n in (len(theirs["input_ids"]), len(theirs["input_ids"]) - 1), name
        assert batch["input_ids"][row, length - n :].tolist() == reference, name
        assert batch["attention_mask"][row].tolist() == [0] * (length - n) + [1] * n, name
        assert (batch["input_ids"][row, : length - n] == processor.tokenizer.pad_token_id).all()
        assert (batch["pixel_values"][row] - theirs["global"][0]).abs().max() <= TOLERANCE["pil"], name
        n_crops = int(batch["num_local_patches"][row])
        if n_crops:
            tiles = batch["pixel_values_local"][local_start : local_start + n_crops]
            assert (tiles - theirs["crops"]).abs().max() <= TOLERANCE["pil"], name
        local_start += n_crops


def test_grid_choice_equals_dynamic_preprocess_for_every_aspect():
    """The port's tile grid against DeepSeek's count_tiles over 1..3000 px (its own function)."""
    source = (Path(OFFICIAL) / "DeepSeek-OCR2-master/DeepSeek-OCR2-vllm/process/image_process.py").read_text()
    # only its two pure functions: the module's imports need torchvision and a hub tokenizer
    scope = {"MIN_CROPS": 2, "MAX_CROPS": 6}
    exec(
        source[source.index("def find_closest_aspect_ratio") : source.index("def dynamic_preprocess")], scope
    )
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

    mismatches = []
    for width in range(769, 3001, 7):
        for height in range(20, 3001, 13):
            theirs = scope["count_tiles"](width, height, image_size=768)
            ours = get_optimal_tiled_canvas((height, width), (768, 768), 2, 6)
            if tuple(theirs) != tuple(ours):
                mismatches.append((width, height, theirs, ours))
    assert not mismatches, mismatches[:5]


@pytest.fixture(scope="module")
def logits_run(tmp_path_factory) -> tuple[dict, Path]:
    """tests/official/ocr2_logits.py at reduced size: one random official checkpoint, both models."""
    sys.path.insert(0, str(RUNNER.parent))
    try:
        import ocr2_logits
    finally:
        sys.path.pop(0)
    work = tmp_path_factory.mktemp("logits")
    result = ocr2_logits.run(ocr2_logits.parse_args(["--size", "reduced", "--work", str(work)]))
    return result, work / "official-reduced"


@pytest.mark.slow
def test_logits_equal_the_official_model(logits_run):
    """The official model class and hwocr's native load of the same random weights: logits on
    infer()'s inputs (a 6-crop line and a word, left-padded into one batch) agree in fp32."""
    result, _ = logits_run
    print(json.dumps(result))
    assert result["positions"] > 1300  # 1121 + 257 image tokens and the prompt
    assert result["max_abs_delta"] < 1e-4, result
    assert result["argmax_agreement"] == 1.0, result


@pytest.mark.slow
def test_official_checkpoint_loads_offline_with_native_classes(logits_run, monkeypatch):
    """A checkpoint in deepseek-ai's layout, written by the official model class: hwocr's loader
    reads its config, maps every weight key (no missing, unexpected or mismatched) and builds a
    DeepseekOcr2Processor from its tokenizer files, offline and without remote code."""
    from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor

    from hwocr.model.official import native_config, read_config

    _, checkpoint = logits_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = native_config(read_config(str(checkpoint), None))
    model, info = DeepseekOcr2ForConditionalGeneration.from_pretrained(
        checkpoint, config=config, output_loading_info=True, use_safetensors=True
    )
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = load_processor(ModelConfig(name="deepseek_ocr2", source=str(checkpoint), image_mode="gundam"))
    assert isinstance(processor, DeepseekOcr2Processor)
    assert type(processor.tokenizer).__name__ == "TokenizersBackend"
    assert processor.image_token_id == model.config.image_token_id == IMAGE_TOKEN


def test_real_checkpoint_keys_map_onto_the_full_size_model():
    """Every key of the released checkpoint (its model.safetensors.index.json) renames, through
    transformers' conversion mapping, onto the full-size native model built from the hub's
    config.json by hwocr: nothing missing, nothing left over."""
    from transformers import DeepseekOcr2ForConditionalGeneration
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    from hwocr.model.official import native_config, read_config

    keys = json.loads((Path(HUB) / "model.safetensors.index.json").read_text())["weight_map"]
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(native_config(read_config(HUB, None)))
    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    expected = model.state_dict()
    renamed = {
        rename_source_key(key, renamings, converters, model.base_model_prefix, expected)[0] for key in keys
    }
    assert len(keys) == 2707
    assert renamed == set(expected), (
        sorted(renamed - set(expected))[:5],
        sorted(set(expected) - renamed)[:5],
    )

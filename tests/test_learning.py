"""Training teaches the model to tell images apart.

A handful of distinct word images serve as train and test set; after tuning through
`python -m hwocr.run`, every image must get its own text exactly. The same run with the images cut
from the model's input must not: only the image tells the model which word to write.
"""

import pytest
from conftest import run_hwocr
from learning import WORDS, images_cut, stage_spreads, word_image, write_word_dataset

from hwocr.config import HardwareConfig, register_schema
from hwocr.inputs import encode
from hwocr.model.load import load_model, load_processor

register_schema()

# The demo preset on the word images, every image in every step: only the adaptation varies.
OVERFIT = (
    "+experiment=demo",
    "dataset=uit_hwdb_line",
    "dataset.val_fraction=0",
    "hardware.per_device_batch=8",
    "train.max_steps=100",
    "train.lr=6e-3",
    "stages=[train,tuned_eval]",
    "train.save_steps=1000",
    "train.logging_steps=10",
    "eval.bootstrap_samples=50",
)


def test_image_features_differ_across_images(tiny_model_config):
    """What the language model receives differs from image to image at every stage of the tower."""
    processor = load_processor(tiny_model_config)
    model = load_model(tiny_model_config, HardwareConfig()).eval()
    images = [word_image(word, (128, 128)) for word in WORDS]
    pixels = encode(processor, images, ["<image>\nFree OCR."] * len(images), return_tensors="pt")
    spreads = stage_spreads(model, pixels["pixel_values"])
    assert spreads["sam"] >= 0.10, spreads
    assert spreads["encoder"] >= 0.10, spreads
    assert spreads["projector"] >= 0.10, spreads


def _overfit(tmp_path, tiny_model_config, *overrides) -> dict:
    data = write_word_dataset(tmp_path / "words")
    run = run_hwocr(
        tmp_path / "run",
        *OVERFIT,
        f"model.source={tiny_model_config.source}",
        f"dataset.root={data}",
        *overrides,
    ).check()
    metrics = run.json("eval/tuned/metrics.json")
    metrics["predictions"] = [row["prediction"] for row in run.rows("eval/tuned/predictions.csv")]
    return metrics


@pytest.mark.parametrize(
    "adaptation",
    [
        pytest.param((), id="presets-default-lora"),
        pytest.param(("lora=r16_vision",), id="vision-lora"),
        # every weight of the language model moves: smaller steps, more of them
        pytest.param(("lora=none", "train.lr=5e-3", "train.max_steps=150"), id="full-fine-tuning"),
    ],
)
@pytest.mark.long
def test_training_teaches_the_model_to_tell_images_apart(tmp_path, tiny_model_config, adaptation):
    metrics = _overfit(tmp_path, tiny_model_config, *adaptation)
    assert metrics["perfect_match_rate"] == 1.0, metrics["predictions"]


# The other families run in make test-all: the fast tier's minutes go to DeepSeek-OCR-2's three.
FULL_TIER = pytest.mark.slow


@pytest.mark.parametrize(
    "model, adaptation",
    [
        pytest.param("tiny_paddleocr_vl", ("train.max_steps=150",), id="paddleocr_vl-lora", marks=FULL_TIER),
        pytest.param(
            "tiny_paddleocr_vl", ("lora=r16_vision",), id="paddleocr_vl-vision-lora", marks=FULL_TIER
        ),
        pytest.param(
            "tiny_paddleocr_vl",
            ("lora=none", "train.lr=2e-3", "train.max_steps=150"),
            id="paddleocr_vl-full-fine-tuning",
            marks=FULL_TIER,
        ),
        pytest.param("tiny_glm_ocr", (), id="glm_ocr-lora", marks=FULL_TIER),
        pytest.param("tiny_glm_ocr", ("lora=r16_vision",), id="glm_ocr-vision-lora", marks=FULL_TIER),
        # every weight of the decoder moves: smaller steps, more of them
        pytest.param(
            "tiny_glm_ocr",
            ("lora=none", "train.lr=2e-3", "train.max_steps=250"),
            id="glm_ocr-full-fine-tuning",
            marks=FULL_TIER,
        ),
    ],
)
@pytest.mark.long
def test_other_families_learn_to_tell_images_apart(request, tmp_path, model, adaptation):
    config = request.getfixturevalue(f"{model}_config")
    metrics = _overfit(tmp_path, config, f"model={model}", *adaptation)
    assert metrics["perfect_match_rate"] == 1.0, metrics["predictions"]


@pytest.mark.slow  # the control: run by make test-all (CI), shown failing in experiments/demo.md
def test_without_the_images_training_cannot_tell_them_apart(tmp_path, tiny_model_config):
    """The control: the same run with every pixel zeroed before the vision tower."""
    with images_cut():
        metrics = _overfit(tmp_path, tiny_model_config)
    assert metrics["perfect_match_rate"] <= 0.5, metrics["predictions"]

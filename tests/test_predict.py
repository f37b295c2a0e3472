"""`python -m hwocr.predict`: the run's checks before any model work, and an input guard on every image."""

import logging
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import hwocr.predict as predict_module
from hwocr.config import (
    CONF_DIR,
    InferenceConfig,
    PredictConfig,
    RepetitionGuardConfig,
    compose_config,
    to_config,
    to_predict_config,
)
from hwocr.errors import ConfigError
from tests.test_hostile_data import png_header_only

UNPINNED_REMOTE_CODE = ("model=deepseek_ocr", "model.revision=null")


def _no_model(monkeypatch):
    """Fail the test if predict gets as far as loading a model."""

    def forbidden(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(predict_module, "load_processor", forbidden)
    monkeypatch.setattr(predict_module, "load_model", forbidden)


def test_predict_refuses_unpinned_remote_code_with_the_runs_error(tmp_path):
    with pytest.raises(ConfigError) as run_error:
        to_config(compose_config(*UNPINNED_REMOTE_CODE))
    with pytest.raises(ConfigError) as predict_error:
        to_predict_config(compose_config(*UNPINNED_REMOTE_CODE, f"images={tmp_path}", config_name="predict"))
    assert "model.revision" in str(run_error.value)
    assert str(predict_error.value) == str(run_error.value)


def test_predict_cli_stops_before_any_download(tmp_path, monkeypatch, capfd):
    """`python -m hwocr.predict model=deepseek_ocr images=…`: exit 2 with the error, no model loaded."""
    Image.new("RGB", (40, 12), "white").save(tmp_path / "1.png")
    _no_model(monkeypatch)
    monkeypatch.setattr(
        sys, "argv", ["hwocr.predict", "-cp", str(CONF_DIR), *UNPINNED_REMOTE_CODE, f"images={tmp_path}"]
    )
    with pytest.raises(SystemExit) as stop:
        predict_module.main()
    assert stop.value.code == 2
    output = "".join(capfd.readouterr())  # predict logs to stdout (conf/predict.yaml)
    assert "model.trust_remote_code=true needs a pinned model.revision" in output
    assert "Traceback" not in output


def test_the_predict_api_validates_too(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    with pytest.raises(ConfigError, match=r"eval\.encode_threads"):
        predict_module.predict(PredictConfig(images=str(tmp_path), eval=InferenceConfig(encode_threads=0)))


def test_predict_skips_bombs_and_oversized_files_with_a_counted_reason(tmp_path, monkeypatch, caplog):
    Image.new("RGB", (40, 12), "white").save(tmp_path / "1.png")
    png_header_only(tmp_path / "2.png", 100_000, 100_000)  # a header claiming 10^10 pixels
    (tmp_path / "3.png").write_bytes(b"\x89PNG" + b"\0" * 64)  # not an image
    monkeypatch.setattr(predict_module, "MAX_IMAGE_BYTES", 1000)
    Image.effect_noise((200, 200), 64).convert("RGB").save(tmp_path / "4.png")  # over 1000 bytes

    seen, batch_sizes = [], []

    def fake_transcribe(model, processor, samples, settings, desc=""):
        from hwocr.evaluate.generate import EvalStats
        from hwocr.metrics import Prediction

        seen.extend(Path(s.image).name for s in samples)
        batch_sizes.append(settings.batch_size)
        preds = [Prediction(s.id, "", str(s.image), "", "chữ") for s in samples]
        return preds, EvalStats(1.0, 1.0, 1, 0)

    monkeypatch.setattr(predict_module, "check_hardware", lambda hw: None)
    monkeypatch.setattr(predict_module, "load_processor", lambda cfg: SimpleNamespace(tokenizer=None))
    monkeypatch.setattr(predict_module, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(predict_module, "transcribe", fake_transcribe)
    # the stub processor has no tokenizer to look the repetition guard's whitelist up in
    inference = InferenceConfig(batch_size=3, repetition_guard=RepetitionGuardConfig(ngram=0))
    cfg = replace(PredictConfig(images=str(tmp_path)), eval=inference)
    with caplog.at_level(logging.WARNING, logger="hwocr.predict"):
        predictions = predict_module.predict(cfg)
    assert seen == ["1.png"]  # the model never sees the others
    assert batch_sizes == [3]  # eval.batch_size, as in the run's evaluation
    assert [Path(p.id).name for p in predictions] == ["1.png", "2.png", "3.png", "4.png"]  # none dropped
    errors = {Path(p.id).name: p.error for p in predictions}
    assert errors["1.png"] == "" and predictions[0].prediction == "chữ"
    assert errors["2.png"].startswith("skipped: image_too_large")
    assert errors["3.png"].startswith("skipped: corrupt_image")
    assert errors["4.png"].startswith("skipped: file_too_large")
    assert "3 of 4 images skipped" in caplog.text

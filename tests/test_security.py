"""Security defaults: remote code only when asked for and pinned, no secrets in MLflow, no pickles."""

import inspect

import pytest
from transformers import Trainer

import hwocr.model.load as load_module
import hwocr.run as run_module
from hwocr.config import HardwareConfig, ModelConfig, TrackingConfig
from hwocr.tracking.client import Tracker, flatten, ui_command
from hwocr.tracking.redact import REDACTED, redact_yaml

SECRET = "secret-value-1234"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.family=ocr1"], "set model.trust_remote_code=true"),
        # hub ids: a local directory needs no revision (tests/test_backends.py)
        (["model.trust_remote_code=true", "model.source=org/model"], "needs a pinned model.revision"),
        (
            ["model.family=ocr1", "model.trust_remote_code=true", "model.source=org/model"],
            "needs a pinned model.revision",
        ),
    ],
)
def test_remote_code_needs_an_explicit_flag_and_a_pinned_revision(
    tmp_path, monkeypatch, overrides, message, run_cli
):
    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert run_cli(*overrides, f"hydra.run.dir={tmp_path}") == 2
    assert message in (tmp_path / "run.log").read_text()


def test_secrets_never_reach_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MY_SERVICE_API_KEY", "other-secret-5678")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(TrackingConfig(uri=store), tmp_path, run_dir=tmp_path / "job")
    tracker.check_reachable()
    with tracker:
        tracker.start("job", {"note": f"pulled with {SECRET}"})
        config = {
            "hub": {"token": "literal-token-in-config", "name": "x"},
            "model": {"source": f"https://u:{SECRET}@h/m"},
        }
        tracker.log_params(flatten(config))
        tracker.set_tags({"db_password": "hunter2-hunter2", "ok": "other-secret-5678 leaked?"})
        yaml = redact_yaml(f"hub:\n  token: literal-token-in-config\n  name: x\nmodel:\n  source: {SECRET}\n")
        (tmp_path / "resolved_config.yaml").write_text(yaml)
        tracker.log_artifact(tmp_path / "resolved_config.yaml")
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.params["hub.token"] == REDACTED and run.data.params["hub.name"] == "x"
    assert run.data.tags["db_password"] == REDACTED
    stored = [(tmp_path / "mlflow.db").read_bytes()]
    stored += [p.read_bytes() for p in (tmp_path / "mlruns").rglob("*") if p.is_file()]
    for secret in (SECRET, "other-secret-5678", "literal-token-in-config", "hunter2-hunter2"):
        assert not any(secret.encode() in blob for blob in stored), secret


def test_printed_mlflow_ui_command_binds_localhost():
    assert "--host 127.0.0.1" in ui_command("sqlite:////abs/outputs/mlflow.db")


def test_models_load_from_safetensors_only(monkeypatch, tmp_path):
    seen = {}

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setattr(load_module, "_model_class", lambda cfg: Recorder)
    with pytest.raises(Exception, match="stop here"):
        load_module.load_model(ModelConfig(source=str(tmp_path)), HardwareConfig())
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_trainer_resume_reads_optimizer_and_rng_state_with_weights_only():
    """transformers 5 reads optimizer.pt / scheduler.pt / rng_state.pth with torch.load(weights_only=True),
    which refuses arbitrary pickles; guard against an upgrade that drops it."""
    for method in (Trainer._load_optimizer_and_scheduler, Trainer._load_rng_state):
        source = inspect.getsource(method)
        calls = source.count("torch.load(")
        assert calls and source.count("weights_only=True") >= calls, method.__name__

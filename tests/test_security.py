"""Security defaults: remote code only when asked for and pinned, no secrets in MLflow, no pickles."""

import ipaddress
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

import hwocr.model.load as load_module
import hwocr.run as run_module
from hwocr.config import HardwareConfig, ModelConfig, TrackingConfig, flatten
from hwocr.model.families import family
from hwocr.tracking.client import Tracker, ui_command
from hwocr.tracking.redact import REDACTED, redact_yaml
from tests.conftest import run_hwocr

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
def test_remote_code_needs_an_explicit_flag_and_a_pinned_revision(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    run = run_hwocr(tmp_path / "run", *overrides)
    assert run.code == 2
    assert message in run.log()


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


def test_printed_mlflow_ui_command_binds_localhost(tmp_path):
    """The printed command, as mlflow's own CLI parses it: loopback only, the run's store intact."""
    import click
    from mlflow.cli import cli

    uri = f"sqlite:///{tmp_path / 'my runs' / 'mlflow.db'}"  # a space: the command must quote it
    program, subcommand, *args = shlex.split(ui_command(uri))
    assert (program, subcommand) == ("mlflow", "ui")
    ui = cli.get_command(click.Context(cli), "ui")
    params = ui.make_context("ui", args).params
    assert ipaddress.ip_address(params["host"]).is_loopback
    assert params["backend_store_uri"] == uri


def test_models_load_from_safetensors_only(monkeypatch, tmp_path):
    seen = {}

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setattr(family("ocr2"), "model_class", lambda cfg: Recorder)
    with pytest.raises(Exception, match="stop here"):
        load_module.load_model(ModelConfig(source=str(tmp_path)), HardwareConfig())
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


class _Payload:
    """A pickle that creates a directory when it is unpickled: arbitrary code, as in a hostile file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_trainer_resume_refuses_pickled_code_in_optimizer_and_rng_state(tmp_path):
    """Resuming reads optimizer.pt / scheduler.pt / rng_state.pth; a checkpoint that carries code in
    them must fail to load without running it (transformers 5: torch.load(weights_only=True))."""
    trainer = Trainer(
        model=torch.nn.Linear(2, 2),
        args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": _Payload(tmp_path / f"ran-{name}")}, checkpoint / name)
    for load in (trainer._load_optimizer_and_scheduler, trainer._load_rng_state):
        with pytest.raises(pickle.UnpicklingError):
            load(str(checkpoint))
    assert not list(tmp_path.glob("ran-*")), "a pickled payload ran"
    with open(checkpoint / "rng_state.pth", "rb") as handle:  # the payload is live: plain pickle runs it
        torch.load(handle, weights_only=False)
    assert (tmp_path / "ran-rng_state.pth").is_dir()

"""The export's config schema (conf/export.yaml composes onto it) and its checks."""

from dataclasses import dataclass

from hwocr.config import DTYPES, ModelConfig
from hwocr.errors import ConfigError


@dataclass
class ExportConfig:
    # A run directory: its adapter/, resolved_config.yaml, data_report.json, train_summary.json and
    # eval/*/metrics.json (the card's recipe, data and metrics).
    run: str | None = None
    # A PEFT adapter directory: instead of the run's adapter/ (a Trainer checkpoint-N of it), or
    # without a run, with model=<conf/model option> naming its base.
    adapter: str | None = None
    # The base model (conf/model/). Without it, the run's; with a run, it replaces the run's (a
    # checkpoint downloaded elsewhere since).
    model: ModelConfig | None = None
    output: str = "???"  # a new or empty directory
    # The merged weights' dtype: fp32, fp16 or bf16. None = the run's hardware.dtype (bf16 without a
    # run). A run trained in 4-bit is merged into its base loaded unquantised in this dtype.
    dtype: str | None = None
    # The base model's hub id for the card's `base_model`, where model.source is a local directory.
    base_model: str | None = None
    # The hub repo this folder will be uploaded to: the card's code loads from it (None = this folder).
    repo_id: str | None = None
    license: str | None = None  # the card's license; None = the base model card's, where it has one
    max_new_tokens: int = 160  # the card's code's length cap (hwocr.predict's default)
    # Log the card and export.json to the run's MLflow run (mlflow_run.json); a store that cannot be
    # reached is a warning, the export stands.
    tracking: bool = True


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="hwocr_export_schema", node=ExportConfig)


def check_export_config(cfg: ExportConfig) -> None:
    """What types cannot say; raises ConfigError naming the key."""
    if not cfg.run and not cfg.adapter:
        raise ConfigError(
            "export needs run=<run directory> or adapter=<PEFT adapter directory> (with model=)"
        )
    if not cfg.run and cfg.model is None:
        raise ConfigError(
            f"adapter={cfg.adapter} without run=: name its base model with model=<option> (conf/model/), "
            "e.g. model=deepseek_ocr2"
        )
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1")

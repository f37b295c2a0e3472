"""What an export starts from: a run directory or an adapter, resolved and checked before any weights load."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hwocr.config import FAMILIES, Config, ModelConfig, is_local_dir, validate
from hwocr.errors import ConfigError
from hwocr.export.config import ExportConfig
from hwocr.saved_config import read_saved_config

DEFAULT_DTYPE = "bf16"  # DeepSeek-OCR-2's own weights


@dataclass
class ExportSource:
    model: ModelConfig
    adapter_dir: Path
    dtype: str
    run_dir: Path | None = None
    run_config: Config | None = None  # the run's resolved_config.yaml, validated

    @property
    def trained_in_4bit(self) -> bool:
        return bool(self.run_config and self.run_config.hardware.load_in_4bit)

    @property
    def hub_id(self) -> str | None:
        """The base model's hub id: model.source unless it is a local checkpoint."""
        if self.model.build_tiny or is_local_dir(self.model.source):
            return None
        return self.model.source


def resolve(cfg: ExportConfig) -> ExportSource:
    """The run's config, adapter and base model, with every problem a ConfigError naming its key."""
    run_dir = run_config = None
    if cfg.run:
        run_dir = Path(cfg.run).expanduser().resolve()
        if not run_dir.is_dir():
            raise ConfigError(f"run={cfg.run}: no such directory")
        run_config = read_run_config(run_dir)
    adapter_dir = Path(cfg.adapter).expanduser().resolve() if cfg.adapter else run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        where = f"adapter={cfg.adapter}" if cfg.adapter else f"run={cfg.run}"
        raise ConfigError(
            f"{where}: {adapter_dir} holds no PEFT adapter (adapter_config.json). Export merges a LoRA "
            "adapter: point run= at a run that trained one, or adapter= at a run's adapter/ or checkpoint-N"
        )
    model = cfg.model or run_config.model
    # the shared checks of the model keys (family, image mode, remote code and its pinned revision)
    validate(dataclasses.replace(run_config, model=model) if run_config else Config(model=model))
    if not FAMILIES[model.family].export:
        raise ConfigError(
            f"model.family={model.family}: export writes DeepSeek-OCR-2 in transformers' native classes; "
            "other families keep their adapter (eval.adapter and hwocr.predict load it)"
        )
    dtype = cfg.dtype or (run_config.hardware.dtype if run_config else DEFAULT_DTYPE)
    return ExportSource(model, adapter_dir, dtype, run_dir, run_config)


def read_run_config(run_dir: Path) -> Config:
    path = run_dir / "resolved_config.yaml"
    if not path.is_file():
        raise ConfigError(f"run={run_dir}: no resolved_config.yaml, so not a hwocr run directory")
    return read_saved_config(path)


def check_output(output: str) -> Path:
    """The output directory: new, or existing and empty."""
    path = Path(output).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"output={output} exists and is not an empty directory; name a new one")
    return path

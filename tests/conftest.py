"""Fixtures shared by several test files."""

import sys
from pathlib import Path

import pytest

from hwocr.config import ModelConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory) -> ModelConfig:
    """The tiny DeepSeek-OCR-2, built once per test session."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    return ModelConfig(name="tiny", source=str(path), build_tiny=True, image_size=128, tile_size=96)


@pytest.fixture
def run_cli():
    """`python -m hwocr.run OVERRIDES` in this process (no second torch import); returns the exit code."""
    import hwocr.run as run_module

    def run(*overrides: str) -> int:
        argv = sys.argv
        sys.argv = ["hwocr.run", "-cp", str(CONF), *overrides]
        try:
            run_module.main()
        except SystemExit as stop:
            return stop.code
        finally:
            sys.argv = argv
        return 0

    return run

"""Fixtures shared by several test files."""

import csv
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from hwocr.config import CONF_DIR, ModelConfig, model_option
from hwocr.data import Sample

LINE_TEXTS = ["Tôi yêu tiếng Việt", "học sinh đi học", "mưa rơi ướt át", "Đường về quê hương", "xin chào"]


def pytest_collection_modifyitems(items):
    # The longest tests first: with one worker per core (make test), a long test that starts last
    # leaves the other core idle at the end.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs one worker per core) a worker, and every process it
    # starts, gets one thread: torch's threads on cores the other workers use run several times slower.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# The demo cut to a couple of steps on a few samples: the end-to-end tests start from it and change
# what they exercise (more steps, checkpoints, samples).
SMALL_DEMO = {
    "train.max_steps": 2,
    "train.save_steps": 100,
    "train.eval_steps": 100,
    "train.logging_steps": 1,
    "dataset.max_train_samples": 8,
    "dataset.max_eval_samples": 4,
    "dataset.synth.lines_per_writer": 4,
    "eval.bootstrap_samples": 100,
}


def small_demo(changes: dict | None = None) -> list[str]:
    """`+experiment=demo` plus SMALL_DEMO updated with `changes` ({"train.max_steps": 6}), as overrides."""
    return ["+experiment=demo", *(f"{key}={value}" for key, value in (SMALL_DEMO | (changes or {})).items())]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that `build(folder)` filled once in this test session, for tests that only read it.
    Under pytest-xdist the workers share it (pytest-xdist's recipe for session fixtures): the first
    worker that asks builds it under a file lock and the others wait for it, so a costly module
    fixture is not built again by every worker that steals some of the module's tests. A failed
    build leaves no folder behind: the next worker that asks tries again and reports its own error."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's own
    folder, built = shared / name, shared / f"{name}.built"
    with FileLock(shared / f"{name}.lock"):
        if not built.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory) -> ModelConfig:
    """The tiny DeepSeek-OCR-2 (conf/model/tiny.yaml), built once per test session."""
    return model_option("tiny", tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_paddleocr_vl_config(tmp_path_factory) -> ModelConfig:
    """The tiny PaddleOCR-VL (conf/model/tiny_paddleocr_vl.yaml), built once per test session."""
    return model_option("tiny_paddleocr_vl", tmp_path_factory.mktemp("models") / "tiny-paddleocr-vl")


@pytest.fixture(scope="session")
def tiny_glm_ocr_config(tmp_path_factory) -> ModelConfig:
    """The tiny GLM-OCR (conf/model/tiny_glm_ocr.yaml), built once per test session."""
    return model_option("tiny_glm_ocr", tmp_path_factory.mktemp("models") / "tiny-glm-ocr")


@pytest.fixture(scope="session")
def render_lines(tmp_path_factory):
    """render_lines(sizes) -> one test Sample per size, a short Vietnamese line drawn on white."""
    from PIL import Image, ImageDraw

    def render(sizes: list[tuple[int, int]]) -> list[Sample]:
        folder = tmp_path_factory.mktemp("lines")
        samples = []
        for i, (text, size) in enumerate(zip(LINE_TEXTS, sizes, strict=False)):
            image = Image.new("RGB", size, "white")
            ImageDraw.Draw(image).text((5, size[1] // 2 - 10), text, fill="black")
            path = folder / f"{i}.png"
            image.save(path)
            samples.append(
                Sample(id=f"test/w{i % 2}/{i}.png", writer=f"w{i % 2}", split="test", image=path, text=text)
            )
        return samples

    return render


def hwocr_run_main(*overrides: str) -> int:
    """`python -m hwocr.run OVERRIDES` in this process (no second torch import); its exit code."""
    import hwocr.run as run_module

    argv = sys.argv
    sys.argv = ["hwocr.run", "-cp", str(CONF_DIR), *overrides]
    try:
        run_module.main()
    except SystemExit as stop:
        return stop.code
    finally:
        sys.argv = argv
    return 0


@pytest.fixture
def run_cli():
    """hwocr_run_main, for tests that compose the run's command line themselves."""
    return hwocr_run_main


@dataclass
class FinishedRun:
    """A `python -m hwocr.run` that has ended: its exit code, its directory and what it wrote there."""

    code: int
    dir: Path

    def check(self) -> "FinishedRun":
        """This run, asserted to have succeeded (else the tail of its log)."""
        assert self.code == 0, self.log()[-3000:]
        return self

    def log(self) -> str:
        """run.log, or "" when the run stopped before writing one."""
        path = self.dir / "run.log"
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def text(self, relative: str) -> str:
        return (self.dir / relative).read_text(encoding="utf-8")

    def json(self, relative: str) -> dict:
        return json.loads(self.text(relative))

    def rows(self, relative: str) -> list[dict]:
        """A CSV's rows (eval/<stage>/predictions.csv)."""
        with open(self.dir / relative, encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def run_hwocr(run_dir: Path, *overrides: str, tracking: Path | None = None) -> FinishedRun:
    """`python -m hwocr.run OVERRIDES` in this process, writing to run_dir and tracking into the sqlite
    file `tracking` (default: mlflow.db beside run_dir) unless the overrides name a tracking.uri."""
    where = [f"hydra.run.dir={run_dir}"]
    if not any(override.startswith("tracking.uri=") for override in overrides):
        where.append(f"tracking.uri=sqlite:///{tracking or Path(run_dir).parent / 'mlflow.db'}")
    return FinishedRun(hwocr_run_main(*overrides, *where), Path(run_dir))

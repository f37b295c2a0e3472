"""Batched transcription of image files, through evaluation's own generation code.

python -m hwocr.predict model=deepseek_ocr2 eval.adapter=outputs/runs/lines/<ts>/adapter images=scans/

The config is the run's: the same model, hardware and `eval.*` keys (PredictConfig in
hwocr/config.py), checked by the same validation, so a model the run refuses to load (remote code
without a pinned revision) is refused here too.

Every image is screened before the model sees it (the dataset loaders' checks, hwocr/data/screen.py):
a file over MAX_IMAGE_BYTES, a header claiming more than MAX_IMAGE_PIXELS pixels or a side over
MAX_IMAGE_SIDE (a decompression bomb), an empty, truncated or non-image file. Such an image is not
opened by the model; it gets a row with an empty prediction and `skipped: <reason>` as its error, and
the log counts them.
"""

import csv
import io
import logging
import sys
from pathlib import Path

import hydra

from hwocr.config import PredictConfig, register_schema, to_predict_config, validate_predict
from hwocr.data import Sample
from hwocr.data.screen import IMAGE_SUFFIXES, image_problem
from hwocr.errors import USER_ERRORS, ConfigError
from hwocr.evaluate.generate import configured_settings, transcribe
from hwocr.io import write_atomic
from hwocr.metrics import Prediction
from hwocr.model import attach_adapter, load_model, load_processor, merge_for_evaluation
from hwocr.preflight import check_hardware
from hwocr.text import natural_key

log = logging.getLogger("hwocr.predict")

MAX_IMAGE_BYTES = 100 * 2**20  # a compressed scan of a page is a few MB
FILE_TOO_LARGE = "file_too_large"

register_schema()


def find_images(spec: str) -> list[Path]:
    """A directory (its image files, naturally sorted), a file, or comma-separated files."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part).expanduser()
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            paths.extend(sorted(found, key=lambda p: natural_key(p.name)))
        elif path.is_file():
            paths.append(path)
        else:
            raise ConfigError(f"images={part!r}: no such file or directory")
    if not paths:
        raise ConfigError(f"images={spec!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def screen(path: Path) -> str | None:
    """Why `path` must not reach the model (a reason with detail), or None."""
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"unreadable: {error}"
    if size > MAX_IMAGE_BYTES:
        return f"{FILE_TOO_LARGE}: {size} bytes, more than {MAX_IMAGE_BYTES}"
    return image_problem(path)


def predict(cfg: PredictConfig) -> list:
    validate_predict(cfg)
    images = find_images(cfg.images)
    problems = {path: screen(path) for path in images}
    skipped = {path: why for path, why in problems.items() if why}
    if skipped:
        log.warning(
            "%d of %d images skipped, not shown to the model: %s",
            len(skipped),
            len(images),
            "; ".join(f"{path.name} ({why})" for path, why in skipped.items()),
        )
    check_hardware(cfg.hardware)
    processor = load_processor(cfg.model)
    model = load_model(cfg.model, cfg.hardware)
    if cfg.eval.adapter:
        model = attach_adapter(model, Path(cfg.eval.adapter))
        if cfg.eval.merge_adapter:
            merge_for_evaluation(model)
    samples = {p: Sample(id=str(p), writer="", split="predict", image=p.resolve(), text="") for p in images}
    settings = configured_settings(cfg.model, cfg.eval, processor.tokenizer, cfg.max_new_tokens)
    usable = [samples[p] for p in images if p not in skipped]
    predictions, stats = (
        transcribe(model, processor, usable, settings, desc="predict") if usable else ([], None)
    )
    if stats is not None:
        log.info(
            "%d images at %.1f images/s, %d failed, %d changed by the repetition guard",
            len(predictions),
            stats.images_per_s,
            stats.n_failed,
            sum(p.guarded for p in predictions),
        )
    by_id = {p.id: p for p in predictions}
    return [
        by_id.get(str(path))
        or Prediction(str(path), "", str(path.resolve()), "", "", f"skipped: {skipped[path]}")
        for path in images
    ]


def write_output(predictions: list, output: str | None) -> None:
    if output is None:
        for p in predictions:
            print(f"{p.id}\t{p.prediction}" + (f"\t[error: {p.error}]" if p.error else ""))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "prediction", "error"])
    writer.writerows([p.id, p.prediction, p.error] for p in predictions)
    path = write_atomic(Path(output), buffer.getvalue())
    print(f"wrote {len(predictions)} transcriptions to {path.resolve()}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(composed) -> None:
    try:
        cfg = to_predict_config(composed)
        write_output(predict(cfg), cfg.output)
    except (*USER_ERRORS, FileNotFoundError) as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()

import csv
import json
import random

import pytest
from PIL import Image
from spec import PREDICTION_COLUMNS

from hwocr.metrics import Prediction, corpus_metrics
from hwocr.report import plot_single_eval, read_predictions, write_comparison, write_eval

SENTENCES = [
    "Hôm nay trời mưa rất to ở Hà Nội",
    "Người Việt Nam yêu quê hương đất nước",
    "Tôi đang học tiếng Anh ở trường đại học",
    "Chúng tôi đi du lịch Đà Lạt vào tháng trước",
    "Ướt áo vì cơn mưa chiều qua",
]
UNTONED = str.maketrans("ôờâọớưườêạàáảãộđ", "ooaoouuoeaaaaaod")


def crafted() -> list[Prediction]:
    return [
        Prediction("test/0001/1.jpg", "0001", "img/1.jpg", "abc", "abd"),
        Prediction("test/0001/2.jpg", "0001", "img/2.jpg", 'học, "đi"\nxa', 'học, "đi"\nxa'),
        Prediction("test/0002/1.jpg", "0002", "img/3.jpg", "abcd", "", error="timeout"),
    ]


def fake_runs(n: int = 120, seed: int = 0) -> tuple[list[Prediction], list[Prediction]]:
    """Base drops most marks and mangles letters; tuned makes a few mistakes."""
    rng = random.Random(seed)
    base, tuned = [], []
    for i in range(n):
        ref = rng.choice(SENTENCES)
        writer = f"{rng.randrange(1, 6):04d}"
        sample = f"test/{writer}/{i}.jpg"
        noisy = "".join(c if rng.random() > 0.1 else rng.choice("xyz") for c in ref.translate(UNTONED))
        good = ref if rng.random() < 0.6 else ref.translate(UNTONED)[: len(ref) // 2] + ref[len(ref) // 2 :]
        base.append(Prediction(sample, writer, sample, ref, noisy))
        tuned.append(Prediction(sample, writer, sample, ref, good))
    return base, tuned


def test_write_eval_files(tmp_path):
    preds = crafted()
    metrics = write_eval(tmp_path, preds, extra={"images_per_s": 3.5})
    on_disk = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == metrics
    assert on_disk["images_per_s"] == 3.5
    assert set(on_disk) - {"images_per_s"} == set(corpus_metrics(preds))
    assert on_disk["n_failed"] == 1 and on_disk["n_samples"] == 3
    # 1 substitution + 4 deletions over 3 + 12 + 4 reference characters.
    assert on_disk["cer"] == pytest.approx(5 / 19)
    with open(tmp_path / "predictions.csv", encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
    assert [float(r["cer"]) for r in rows] == pytest.approx([1 / 3, 0.0, 1.0])
    assert (rows[2]["deletions"], rows[2]["error"], rows[0]["substitutions"]) == ("4", "timeout", "1")
    assert not list(tmp_path.glob("*.tmp"))


def test_read_predictions_round_trip(tmp_path):
    preds = crafted()
    write_eval(tmp_path, preds)
    assert read_predictions(tmp_path / "predictions.csv") == preds


def _assert_png(path, min_width=600):
    assert path.exists() and path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= 400


def test_write_comparison(tmp_path):
    base, tuned = fake_runs()
    result = write_comparison(tmp_path / "eval", tmp_path / "plots", base, tuned, n_boot=200, seed=0)
    on_disk = json.loads((tmp_path / "eval" / "comparison.json").read_text(encoding="utf-8"))
    assert on_disk == result
    assert result["paired"]["cer_delta"] < 0 and result["paired"]["share_improved"] > 0.5
    assert result["metrics"]["tuned"]["cer"] < result["metrics"]["base"]["cer"]
    assert {row["group"] for row in result["cer_by_writer"]["base"]} == {b.writer for b in base}
    assert result["top_confusions"]["base"][0]["count"] > 0
    names = sorted(path.rsplit("/", 1)[-1] for path in result["figures"])
    assert names == ["cer_by_writer.png", "cer_distribution.png", "cer_scatter.png", "error_types.png"]
    for name in names:
        _assert_png(tmp_path / "plots" / name)
    with Image.open(tmp_path / "plots" / "cer_scatter.png") as scatter:
        assert abs(scatter.width - scatter.height) < 0.2 * scatter.width  # square-ish, y=x readable


def test_write_comparison_rejects_mismatched_ids(tmp_path):
    base, tuned = fake_runs(10)
    with pytest.raises(ValueError, match="only in base"):
        write_comparison(tmp_path, tmp_path / "plots", base, tuned[:-1], n_boot=10, seed=0)
    assert not (tmp_path / "plots").exists()


def test_plot_single_eval(tmp_path):
    base, _ = fake_runs(60)
    paths = plot_single_eval(tmp_path, base, "base")
    assert [p.name for p in paths] == ["base_cer_distribution.png", "base_error_types.png"]
    for path in paths:
        _assert_png(path)

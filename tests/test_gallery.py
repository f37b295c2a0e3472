"""eval/gallery.html: the character diff, the sections and their caps, escaping, the image budget, and
the page itself in headless Chromium, opened from the run directory and from MLflow's artifact view."""

import html.parser
import json
import re

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, start_mlflow, stop

from hwocr.metrics import Prediction, score
from hwocr.report.diff import align, error_kinds
from hwocr.report.gallery import IMAGES_DIR, write_gallery

HOSTILE = '</td><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def test_diff_marks_tones_and_vowel_marks_apart_from_substitutions():
    ops = [(s.op, s.reference, s.prediction, s.kinds) for s in align("người ta", "nguoi tá")]
    assert ops == [
        ("equal", "ng", "ng", ()),
        ("replace", "ư", "u", ("diacritic",)),
        ("replace", "ờ", "o", ("tone", "diacritic")),
        ("equal", "i t", "i t", ()),
        ("replace", "a", "á", ("tone",)),
    ]
    assert error_kinds(align("đi học", "di hoc")) == {"diacritic", "tone"}
    assert [(s.op, s.kinds) for s in align("abcd", "axd") if s.kinds] == [
        ("replace", ("substitution",)),
        ("delete", ("deletion",)),
    ]
    assert [(s.prediction, s.kinds) for s in align("ab", "abyy") if s.kinds] == [("yy", ("insertion",))]


@pytest.mark.parametrize(
    ("reference", "prediction"),
    [
        ("Đường về quê hương", "Duong ve que huong!"),
        ("xin chào", ""),
        ("", "abc"),
        ("mưa rơi", "mưa  rơi ướt"),
    ],
)
def test_diff_marks_add_up_to_the_sample_s_d_i(reference, prediction):
    edits = sum(max(len(s.reference), len(s.prediction)) for s in align(reference, prediction) if s.kinds)
    assert edits == score(reference, prediction).errors


def predictions(n: int, cer_of, image=lambda i: f"/nonexistent/{i}.jpg") -> list[Prediction]:
    """n samples whose prediction drops cer_of(i) characters (x10%) of a 10-character reference."""
    return [
        Prediction(
            id=f"test/w{i % 3}/{i}.jpg",
            writer=f"w{i % 3}",
            image=str(image(i)),
            reference="abcdefghij",
            prediction="abcdefghij"[: 10 - cer_of(i)],
        )
        for i in range(n)
    ]


class Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_sections_are_capped_and_say_how_many_qualify(tmp_path):
    # 30 samples: tuned worse on 6 (i % 5 == 0), better on 18, unchanged on 6.
    base = predictions(30, lambda i: 2 if i % 5 == 0 else 5 if i % 5 < 4 else 3)
    tuned = predictions(30, lambda i: 6 if i % 5 == 0 else 1 if i % 5 < 4 else 3)
    page = (tmp_path / "gallery.html").resolve()
    assert write_gallery(page, {"base": base, "tuned": tuned[::-1]}, rows_per_section=4, seed=1) == [page]
    text = page.read_text(encoding="utf-8")
    assert "30 samples in all" in text
    titles = re.findall(r"<h2>(.*?)</h2><p>(\d+) of (\d+)", text)
    assert titles == [
        ("Got worse", "4", "6"),
        ("Most improved", "4", "18"),
        ("Worst after tuned", "4", "30"),
        ("Random sample", "4", "30"),
    ]
    rows = [attrs for tag, attrs in parse(text) if tag == "tr" and "data-writer" in attrs]
    assert len(rows) == 16
    # base and tuned are matched by id (tuned came reversed): "got worse" rows are tuned CER 60%
    assert all(attrs["data-kinds-1"] == "deletion" for attrs in rows[:4])
    assert text.count('class="e del"') >= 16


def test_a_single_evaluation_gets_one_prediction_column(tmp_path):
    page = tmp_path / "gallery.html"
    write_gallery(page, {"tuned": predictions(5, lambda i: i)}, rows_per_section=3)
    text = page.read_text(encoding="utf-8")
    assert re.findall(r"<h2>(.*?)</h2>", text) == ["Worst", "Random sample"]
    assert text.count("<th>tuned prediction</th>") == 2 and "base prediction" not in text
    assert "CER change" not in text


def test_untrusted_text_is_escaped_everywhere(tmp_path):
    [pred] = predictions(1, lambda i: 0)
    pred.id = pred.writer = pred.reference = pred.prediction = pred.error = pred.image = HOSTILE
    page = tmp_path / "gallery.html"
    write_gallery(page, {"base": [pred], "tuned": [pred]})
    text = page.read_text(encoding="utf-8")
    tags = parse(text)
    assert [tag for tag, _ in tags].count("script") == 1  # the page's own
    assert not [attrs for tag, attrs in tags if tag == "img"]  # the "image" was no file: no <img> at all
    assert not any("onerror" in attrs for _, attrs in tags)
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    # the page runs only its own script, by hash, and loads nothing from elsewhere
    [csp] = [attrs["content"] for tag, attrs in tags if attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp and re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'$", csp)


def line_images(tmp_path, n: int):
    from PIL import Image, ImageDraw

    paths = []
    for i in range(n):
        image = Image.new("RGB", (800, 60), (250, 248, 240))
        ImageDraw.Draw(image).text((10, 20), f"dòng số {i} " * 6, fill=(20, 20, 90))
        paths.append(tmp_path / f"line{i}.jpg")
        image.save(paths[-1])
    return paths


def test_images_past_the_budget_are_linked_files_beside_the_page(tmp_path):
    paths = line_images(tmp_path, 6)
    preds = predictions(6, lambda i: i, image=lambda i: paths[i])
    page = tmp_path / "eval" / "gallery.html"
    logged = write_gallery(page, {"base": preds}, image_budget=4_000)
    text = page.read_text(encoding="utf-8")
    sources = [attrs["src"] for tag, attrs in parse(text) if tag == "img"]
    embedded = [s for s in sources if s.startswith("data:image/jpeg;base64,")]
    linked = [s for s in sources if s.startswith(f"{IMAGES_DIR}/")]
    assert embedded and linked and len(embedded) + len(linked) == len(sources)
    assert sum(map(len, embedded)) <= 4_000  # repeats of an embedded image count against the budget too
    assert all((page.parent / s).is_file() for s in linked)
    assert logged == [page, page.parent / IMAGES_DIR]
    assert f"{len(set(linked))} images are files in {IMAGES_DIR}/" in text
    # a later page of the run that embeds everything leaves no stale folder behind
    assert write_gallery(page, {"base": preds}) == [page]
    assert not (page.parent / IMAGES_DIR).exists()


# --- in Chromium ---------------------------------------------------------------------------------


@pytest.fixture
def gallery_page(tmp_path):
    """A two-column gallery over 12 real images, with one hostile row and one failed sample."""
    paths = line_images(tmp_path, 12)
    refs = ["người ta nói", "đi học về", "mưa rơi ướt át", "xin chào bạn"] * 3
    hyps = ["nguoi ta nói", "di học vê", "mưa rơi ướt", "xin chàoo bạn"] * 3
    base = [
        Prediction(f"test/w{i % 2}/{i}.jpg", f"w{i % 2}", str(paths[i]), refs[i], "xyz") for i in range(12)
    ]
    tuned = [Prediction(p.id, p.writer, p.image, p.reference, hyps[i]) for i, p in enumerate(base)]
    tuned[5].prediction, tuned[5].error = "", "RuntimeError: <boom>"
    tuned[6].prediction = HOSTILE
    page = tmp_path / "run" / "eval" / "gallery.html"
    write_gallery(page, {"base": base, "tuned": tuned}, rows_per_section=5)
    return page


def open_browser(sync_api):
    playwright = sync_api.sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS[1:])
    return playwright, browser


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")


@pytest.mark.ui
@needs_chromium
def test_the_page_in_chromium_from_the_run_directory(gallery_page, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    playwright, browser = open_browser(sync_api)
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(gallery_page.as_uri())
        sections = page.locator("section.rows")
        assert sections.count() == 4
        assert [sections.nth(i).locator("tbody tr").count() for i in range(4)] == [
            1,
            5,
            5,
            5,
        ]  # the hostile row got worse
        # every mark kind is on the page, as a styled span over the prediction's characters
        for css in ("tone", "dia", "sub", "del", "ins"):
            assert page.locator(f"td.pred span.e.{css}").count() > 0, css
        tone = page.locator("td.pred span.e.tone").first
        assert "tone" in tone.get_attribute("title") and tone.evaluate(
            "e => getComputedStyle(e).backgroundColor"
        ) not in ("rgba(0, 0, 0, 0)", "transparent")
        first_images = page.locator("section.rows").nth(1).locator("img")
        page.wait_for_function(
            "imgs => imgs.every(i => i.complete && i.naturalWidth > 100)", arg=first_images.element_handles()
        )
        assert page.evaluate("window.__pwned") is None and not errors
        assert page.get_by_text("failed: RuntimeError: <boom>").count() >= 1
        screenshot = tmp_path / "gallery.png"
        page.screenshot(path=screenshot, full_page=True)

        visible = page.locator("section.rows").nth(3).locator("tbody tr:visible")
        page.select_option("#f-writer", "w1")
        writers = visible.evaluate_all("rows => rows.map(r => r.dataset.writer)")
        assert writers and set(writers) == {"w1"}
        page.select_option("#f-writer", "")
        page.select_option("#f-kind", "tone")  # in the tuned column (the default)
        tuned_kinds = visible.evaluate_all("rows => rows.map(r => r.getAttribute('data-kinds-1'))")
        assert tuned_kinds and all("tone" in k.split() for k in tuned_kinds)
        shown = page.locator("section.rows").nth(3).locator(".shown").text_content()
        assert int(shown) == len(tuned_kinds) < 5
        page.select_option("#f-kind", "failed")
        assert visible.count() == page.locator("section.rows").nth(3).get_by_text("failed: Runtime").count()
        print(f"gallery screenshot: {screenshot}")
    finally:
        browser.close()
        playwright.stop()


@pytest.mark.slow
@pytest.mark.ui
@needs_chromium
def test_the_page_in_mlflow_s_artifact_view(gallery_page, tmp_path):
    """MLflow renders an HTML artifact from a blob URL in a sandboxed iframe: the embedded images and
    the filter script must work there too."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("gallery", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    client.log_artifact(run, str(gallery_page), "eval")
    proc, url, _ = start_mlflow(["ui", "--backend-store-uri", uri], tmp_path / "ui.log")
    playwright, browser = open_browser(sync_api)
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/#/experiments/{experiment}/runs/{run}/artifacts/eval/gallery.html")
        frame = page.frame_locator("iframe.mlflow-html-iframe")
        frame.locator("section.rows").nth(1).locator("tbody tr").nth(4).wait_for()
        images = frame.locator("section.rows").nth(1).locator("img")
        images.first.evaluate("i => i.scrollIntoView()")
        images.first.evaluate(
            "i => new Promise(ok => i.complete ? ok() : i.addEventListener('load', ok, {once: true}))"
        )
        assert images.first.evaluate("i => i.naturalWidth") > 100
        frame.locator("#f-writer").select_option("w0")
        writers = frame.locator("section.rows").nth(3).locator("tbody tr:visible")
        assert set(writers.evaluate_all("rows => rows.map(r => r.dataset.writer)")) == {"w0"}
        page.screenshot(path=tmp_path / "mlflow_gallery.png")
        print(f"MLflow artifact view screenshot: {tmp_path / 'mlflow_gallery.png'}")
    finally:
        browser.close()
        playwright.stop()
        stop(proc)
        proc.log_file.close()


def test_the_predictions_table_is_in_mlflow_s_layout(tmp_path):
    import pandas as pd

    from hwocr.report import PREDICTIONS_TABLE, write_eval

    preds = [Prediction("a", "w", "a.jpg", "người ta", "nguoi ta"), Prediction("b", "w", "b.jpg", "đi", "")]
    write_eval(tmp_path, preds)
    table = json.loads((tmp_path / PREDICTIONS_TABLE).read_text(encoding="utf-8"))
    frame = pd.DataFrame(table["data"], columns=table["columns"])  # what mlflow's load_table reads
    assert list(frame["prediction"]) == ["nguoi ta", ""]
    assert list(frame["tone_errors"]) == [1, 0] and list(frame["diacritic_errors"]) == [2, 0]
    assert list(frame["deletions"]) == [0, 2]

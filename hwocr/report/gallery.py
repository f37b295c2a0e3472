"""eval/gallery.html: the samples behind the averages, one row per sample, diffed character by character.

One page per run: the base and the tuned predictions side by side (or one column for a single
evaluation), in sections (got worse, most improved, worst after tuning, a random sample), each capped,
with writer and error-type filters in plain JS. Line images are JPEG thumbnails embedded as data URIs
up to a byte budget, the rest written beside the page and linked relatively: MLflow's artifact view
renders the page from a blob URL in a sandboxed iframe, where relative links resolve to nothing, so
embedding is what makes the page whole there.

Labels and predictions are untrusted text: everything is escaped, and a Content-Security-Policy lets
the page run only its own script (by hash) and load images only from data URIs and its own folder.
"""

import base64
import hashlib
import html
import io
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from hwocr.data import load_image
from hwocr.io import atomic_directory, write_atomic
from hwocr.metrics import Prediction, SampleScore, match_by_id, score, summarize
from hwocr.report.diff import EQUAL, ERROR_KINDS, Segment, align, error_kinds

ROWS_PER_SECTION = 50
IMAGE_BUDGET_BYTES = 3_000_000  # data-URI bytes embedded in the page; past this, images are linked files
THUMB_MAX = (640, 160)  # a 1600x120 line becomes 640x48, a 1000x800 paragraph 200x160
JPEG_QUALITY = 70
IMAGES_DIR = "gallery_images"
FAILED = "failed"  # a generation that raised: an empty prediction with an error text
FILTER_KINDS = (*ERROR_KINDS, FAILED, "perfect")
_CLASS = {"substitution": "sub", "deletion": "del", "insertion": "ins", "tone": "tone", "diacritic": "dia"}


@dataclass
class Cell:
    prediction: Prediction
    score: SampleScore
    segments: list[Segment]
    kinds: set[str]


@dataclass
class Row:
    sample: Prediction
    cells: list[Cell]


@dataclass
class Section:
    title: str
    explains: str
    rows: list[Row]
    total: int  # samples that qualify for the section; `rows` holds at most the cap of them


def _cell(pred: Prediction) -> Cell:
    segments = align(pred.reference, pred.prediction)
    kinds = error_kinds(segments) | ({FAILED} if pred.error else set())
    return Cell(pred, score(pred.reference, pred.prediction), segments, kinds or {"perfect"})


def build_rows(columns: dict[str, list[Prediction]]) -> list[Row]:
    """One row per sample, in the first column's order; two columns are matched by sample id."""
    names = list(columns)
    if not 1 <= len(names) <= 2:
        raise ValueError(f"a gallery has one or two prediction columns, got {names}")
    preds = [columns[names[0]]]
    if len(names) == 2:
        preds = list(match_by_id(columns[names[0]], columns[names[1]]))
    return [Row(group[0], [_cell(p) for p in group]) for group in zip(*preds, strict=True)]


def sections(rows: list[Row], names: list[str], cap: int, seed: int) -> list[Section]:
    def top(selected: list[Row], key) -> list[Row]:
        return sorted(selected, key=lambda r: (key(r), r.sample.id))[:cap]

    first, last = names[0], names[-1]
    out = []
    if len(names) == 2:

        def delta(row: Row) -> float:
            return row.cells[1].score.cer - row.cells[0].score.cer

        worse = [r for r in rows if delta(r) > 0]
        better = [r for r in rows if delta(r) < 0]
        out += [
            Section("Got worse", f"{last} CER above {first} CER, largest increase first", [], len(worse)),
            Section("Most improved", f"{last} CER below {first} CER, largest drop first", [], len(better)),
        ]
        out[0].rows = top(worse, lambda r: -delta(r))
        out[1].rows = top(better, delta)
    worst = top(rows, lambda r: -r.cells[-1].score.cer)
    title = f"Worst after {last}" if len(names) == 2 else "Worst"
    out.append(Section(title, f"highest {last} CER first", worst, len(rows)))
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(cap, len(rows))))
    out.append(
        Section("Random sample", f"seed {seed}, in test-set order", [rows[i] for i in picked], len(rows))
    )
    return out


class Thumbnails:
    """JPEG thumbnails: data URIs while the budget lasts (every use counts, a repeated image is another
    copy in the page), then files in IMAGES_DIR beside the page."""

    def __init__(self, budget: int):
        self.budget = budget
        self.embedded_bytes = 0
        self.files: dict[str, bytes] = {}  # relative name -> JPEG
        self._jpeg: dict[str, bytes] = {}
        self._errors: dict[str, str] = {}
        self._linked: dict[str, str] = {}

    def _load(self, image: str) -> None:
        try:
            picture = load_image(image)
            picture.thumbnail(THUMB_MAX)
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
            self._jpeg[image] = buffer.getvalue()
        except Exception as error:  # a missing or corrupt file costs its thumbnail, not the page
            self._errors[image] = f"{type(error).__name__}: {error}"

    def src(self, image: str) -> tuple[str | None, str]:
        """(src for <img>, or None; the error when the image could not be read)."""
        if image not in self._jpeg and image not in self._errors:
            self._load(image)
        if image in self._errors:
            return None, self._errors[image]
        uri = "data:image/jpeg;base64," + base64.b64encode(self._jpeg[image]).decode("ascii")
        if self.embedded_bytes + len(uri) <= self.budget:
            self.embedded_bytes += len(uri)
            return uri, ""
        name = self._linked.setdefault(image, f"{IMAGES_DIR}/{len(self._linked)}.jpg")
        self.files[name] = self._jpeg[image]
        return name, ""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _visible(text: str) -> str:
    """A space that is the whole edit would be invisible: show it as ␣."""
    return text.replace(" ", "\u2423") if text.strip() == "" else text


def render_segments(segments: list[Segment]) -> str:
    parts = []
    for seg in segments:
        if seg.op == EQUAL:
            parts.append(_e(seg.prediction))
            continue
        classes = " ".join(_CLASS[k] for k in seg.kinds)
        if seg.op == "delete":
            title, text = f"missing: {seg.reference}", seg.reference
        elif seg.op == "insert":
            title, text = f"inserted: {seg.prediction}", seg.prediction
        else:
            title, text = f"{'/'.join(seg.kinds)}: {seg.reference} \u2192 {seg.prediction}", seg.prediction
        parts.append(f'<span class="e {classes}" title="{_e(title)}">{_e(_visible(text))}</span>')
    return "".join(parts)


def _row_html(row: Row, thumbs: Thumbnails, two: bool) -> str:
    src, problem = thumbs.src(row.sample.image)
    image = (
        f'<img src="{_e(src)}" alt="{_e(row.sample.id)}" loading="lazy">'
        if src
        else f'<span class="noimg">image not readable: {_e(problem)}</span>'
    )
    kinds = "".join(f' data-kinds-{i}="{_e(" ".join(sorted(c.kinds)))}"' for i, c in enumerate(row.cells))
    cells = []
    for cell in row.cells:
        failed = (
            f'<div class="failed">failed: {_e(cell.prediction.error)}</div>' if cell.prediction.error else ""
        )
        cells.append(
            f'<td class="pred"><span class="cer">{cell.score.cer:.0%}</span> '
            f'<span class="text">{render_segments(cell.segments)}</span>{failed}</td>'
        )
    delta = ""
    if two:
        change = row.cells[1].score.cer - row.cells[0].score.cer
        delta = f'<td class="delta">{change:+.0%}</td>'
    return (
        f'<tr data-writer="{_e(row.sample.writer)}"{kinds}>'
        f'<td class="img">{image}<div class="id">{_e(row.sample.id)} · writer {_e(row.sample.writer)}</div></td>'
        f'<td class="ref">{_e(row.sample.reference)}</td>{"".join(cells)}{delta}</tr>'
    )


SCRIPT = """
const writer = document.getElementById('f-writer');
const kind = document.getElementById('f-kind');
const column = document.getElementById('f-column');
function apply() {
  for (const section of document.querySelectorAll('section.rows')) {
    let shown = 0;
    for (const row of section.querySelectorAll('tbody tr')) {
      const kinds = (row.getAttribute('data-kinds-' + column.value) || '').split(' ');
      const ok = (writer.value === '' || row.dataset.writer === writer.value)
        && (kind.value === '' || kinds.includes(kind.value));
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    section.querySelector('.shown').textContent = shown;
  }
}
for (const control of [writer, kind, column]) control.addEventListener('change', apply);
apply();
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 2em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.img img { display: block; max-width: 640px; }
td.ref, td.pred .text { white-space: pre-wrap; font-size: 15px; }
.id { color: #777; font-size: 11px; }
.cer { display: inline-block; min-width: 3.2em; color: #555; font-size: 12px; }
.delta { white-space: nowrap; }
.e { border-radius: 2px; }
.sub { background: #ffd6d6; }
.del { background: #ececec; color: #b00; text-decoration: line-through; }
.ins { background: #d6e4ff; }
.tone { background: #ffe8a8; box-shadow: inset 0 -2px #e09b00; }
.dia { background: #e6d6ff; box-shadow: inset 0 -2px #7a3fd1; }
.failed, .noimg { color: #b00; font-size: 12px; }
.legend span { margin-right: 1em; padding: 0 4px; }
.filters { margin: 1em 0; padding: .5em; background: #f8f8f8; }
.filters label { margin-right: 1.5em; }
"""


def render(columns: dict[str, list[Prediction]], cap: int, seed: int, budget: int) -> tuple[str, Thumbnails]:
    names = list(columns)
    rows = build_rows(columns)
    if not rows:
        raise ValueError("no predictions to show in the gallery")
    two = len(names) == 2
    thumbs = Thumbnails(budget)
    parts = []
    for section in sections(rows, names, cap, seed):
        head = "".join(f"<th>{_e(n)} prediction</th>" for n in names) + ("<th>CER change</th>" if two else "")
        body = "".join(_row_html(r, thumbs, two) for r in section.rows)
        header = f"<thead><tr><th>image</th><th>reference</th>{head}</tr></thead>" if section.rows else ""
        parts.append(
            f'<section class="rows"><h2>{_e(section.title)}</h2><p>{len(section.rows)} of '
            f'{section.total} ({_e(section.explains)}); <span class="shown">{len(section.rows)}</span> '
            f"shown by the filters</p><table>{header}<tbody>{body}</tbody></table></section>"
        )
    summary = []
    for i, name in enumerate(names):
        stats = summarize([r.cells[i].score for r in rows])
        n_failed = sum(bool(r.cells[i].prediction.error) for r in rows)
        summary.append(
            f"<li><b>{_e(name)}</b>: corpus CER {stats['cer']:.2%}, perfect lines "
            f"{stats['perfect_match_rate']:.1%}, failed {n_failed}</li>"
        )
    writers = sorted({r.sample.writer for r in rows})
    writer_options = "".join(f'<option value="{_e(w)}">{_e(w)}</option>' for w in writers)
    kind_options = "".join(f'<option value="{k}">{k}</option>' for k in FILTER_KINDS)
    column_options = "".join(
        f'<option value="{i}"{" selected" if i == len(names) - 1 else ""}>{_e(n)}</option>'
        for i, n in enumerate(names)
    )
    linked = (
        f"<p>{len(thumbs.files)} images are files in {IMAGES_DIR}/ beside this page (past the "
        f"{budget:,}-byte embedding budget): they show when the page is opened from the run directory, "
        "not in MLflow's artifact viewer.</p>"
        if thumbs.files
        else ""
    )
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    page = f"""<!DOCTYPE html>
<html lang="vi"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>hwocr error gallery</title><style>{STYLE}</style></head><body>
<h1>Error gallery: {_e(" vs ".join(names))}</h1>
<p>{len(rows)} samples in all; each section below shows at most {cap}.</p><ul>{"".join(summary)}</ul>
<p class="legend">Marks on each prediction, against the reference:
<span class="sub">substitution</span><span class="del">deletion (missing reference text)</span>
<span class="ins">insertion</span><span class="tone">tone mark only</span>
<span class="dia">vowel mark or đ only</span> (tone and vowel-mark errors are substitutions in the
S/D/I counts; hover a mark for the characters). The CER before each prediction is that line's.</p>
{linked}
<div class="filters"><label>writer <select id="f-writer"><option value="">all</option>{writer_options}</select></label>
<label>error type <select id="f-kind"><option value="">any</option>{kind_options}</select></label>
<label>in <select id="f-column">{column_options}</select></label></div>
{"".join(parts)}
<script>{SCRIPT}</script></body></html>
"""
    return page, thumbs


def write_gallery(
    path: Path,
    columns: dict[str, list[Prediction]],
    rows_per_section: int = ROWS_PER_SECTION,
    seed: int = 0,
    image_budget: int = IMAGE_BUDGET_BYTES,
) -> list[Path]:
    """Write the page (atomically) and, when the budget ran out, its image folder; return what to log."""
    path = Path(path)
    page, thumbs = render(columns, rows_per_section, seed, image_budget)
    images_dir = path.parent / IMAGES_DIR
    if thumbs.files:
        with atomic_directory(images_dir) as tmp:  # the folder the page links to, never half-written
            for name, data in thumbs.files.items():
                (tmp / Path(name).name).write_bytes(data)
    elif images_dir.exists():  # left by an earlier page of this run; this one links nothing
        shutil.rmtree(images_dir)
    write_atomic(path, page)
    return [path, images_dir] if thumbs.files else [path]

"""A study's index.html: one static page that browses report.json, written beside it.

Rendered from the report.json dict alone (no file is read): no script, no external resource,
every string through ``html.escape``, every path percent-quoted. Missing sections, keys and null
values show as "–". Every table value sits in an element with ``data-key="<section>.<index>.<field>"``
(``cells.0.test_accuracy``: the row's index in report.json's list) and ``data-value`` = the exact
JSON value's ``repr``, so a test compares what the page shows with report.json number for number
while the text itself may be rounded. A number field that no column names gets a column of its own:
the page never drops a number.
"""

import html
from pathlib import Path
from urllib.parse import quote

from ..io import atomic_write_text
from . import columns as cols
from .columns import is_number, show

INDEX_FILE = "index.html"
TABLES = ("pretraining", "cells", "checkpoints", "data_maps", "agreement", "stability")

CELL = cols.columns(["cell"])
CELLS = cols.columns(["status", "reason", *cols.CELL_FIT, "analysis", "analysis_reason"])
RESOURCES = cols.columns(cols.RESOURCES)
PRETRAINING = cols.columns(cols.PRETRAINING)
EXPLANATIONS = cols.columns(cols.EXPLANATIONS)
DATASET_TABLES = [  # (title, section, columns, columns of another table of the same rows)
    ("Checkpoints: fit and memorisation", "checkpoints", CELL + cols.columns(cols.FIT), EXPLANATIONS),
    ("Checkpoints: explanations", "checkpoints", CELL + EXPLANATIONS, None),
    ("Agreement of the models' attributions", "agreement", cols.columns(cols.AGREEMENT), []),
    ("Stability", "stability", cols.columns(cols.STABILITY), []),
    ("Data maps", "data_maps", cols.columns(cols.DATA_MAPS), []),
]
FIGURES = {"curves": "train and validation curves", "drift": "attribution drift"}
FIGURES |= {"membership": "membership inference"}

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.wide { overflow-x: auto; } code { background: #f5f5f5; padding: 0 3px; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } img { max-width: 100%; }
figcaption { font-size: 12px; color: #555; } .failed { color: #b00; } .none { color: #777; }
"""


def write_index(study_dir: Path, report: dict) -> None:
    """study_dir/index.html from the report.json dict (atomic)."""
    atomic_write_text(Path(study_dir) / INDEX_FILE, index_html(report))


def index_html(report: dict) -> str:
    """The whole page: header, contents, pretraining, cells, then a section per dataset."""
    plan = report.get("plan") or {}
    name = plan.get("study") or "?"
    datasets = _datasets(report)
    body = [_header(plan), _contents(report, datasets), _pretraining(report.get("pretraining") or [])]
    body += [_cells(report.get("cells") or [])] + [_dataset(report, i, d) for i, d in enumerate(datasets)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>study {_e(name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _header(plan: dict) -> str:
    name = plan.get("study") or "?"
    files = ", ".join(_link(f, f) for f in ("report.md", "report.json", "comparison.png"))
    return "\n".join(
        [
            f"<h1>Study <code>{_e(name)}</code></h1>",
            f"<p>Command: <code>{_e(f'python train.py --study {name}')}</code></p>",
            "<ul>",
            f"<li>models: {_names(plan.get('models'))}</li>",
            f"<li>datasets: {_names(plan.get('datasets'))}</li>",
            f"<li>profile: {_e(plan.get('profile') or 'none')}</li>",
            f"<li>files: {files}</li>",
            "</ul>",
        ]
    )


def _contents(report: dict, datasets: list) -> str:
    targets = [("pretraining", "pretraining")] if report.get("pretraining") else []
    targets += [("cells", "cells")] + [(f"dataset-{n}", show(d, None)) for n, d in enumerate(datasets)]
    links = " · ".join(f'<a href="#{target}">{_e(text)}</a>' for target, text in targets)
    return f"<nav>Contents: {links}</nav>"


def _pretraining(rows: list[dict]) -> str:
    if not rows:
        return ""
    indexed = list(enumerate(rows))
    parts = ['<h2 id="pretraining">Pretraining</h2>', _table("pretraining", indexed, PRETRAINING, _run_link)]
    for i, row in indexed:
        what = f"{row.get('model') or '?'} on {row.get('dataset') or '?'}"
        description = _text_value("pretraining", i, row, "description")
        parts.append(f"<p><strong>{_e(what)}</strong>: {description}</p>")
    return "\n".join(parts)


def _cells(rows: list[dict]) -> str:
    indexed = list(enumerate(rows))
    cell = cols.columns(["cell", "dataset"])
    return "\n".join(
        [
            '<h2 id="cells">Cells</h2>',
            "<p><em>gap</em> = validation loss − train loss at the same evaluation (accuracy: train − "
            "validation); <em>best</em> = the evaluation with the lowest validation loss.</p>",
            _table("cells", indexed, cell + CELLS, _cell_links, elsewhere=RESOURCES),
            "<h3>Resources</h3>",
            _table("cells", indexed, cell + RESOURCES, elsewhere=None),
            _figure("comparison.png", "train and validation curves of every cell, per dataset"),
        ]
    )


def _dataset(report: dict, n: int, dataset) -> str:
    figures = (report.get("figures") or {}).get(dataset) or {}
    maps = [(i, r) for i, r in enumerate(report.get("data_maps") or []) if r.get("dataset") == dataset]
    parts = [f'<h2 id="dataset-{n}">Dataset <code>{_e(show(dataset, None))}</code></h2>']
    for key in dict.fromkeys([*FIGURES, *figures]):
        parts.append(_figure(figures.get(key), f"{dataset}: {FIGURES.get(key, key)}"))
    for title, section, shown, elsewhere in DATASET_TABLES:
        rows = [(i, r) for i, r in enumerate(report.get(section) or []) if r.get("dataset") == dataset]
        parts += [f"<h3>{_e(title)}</h3>", _table(section, rows, shown, elsewhere=elsewhere)]
    parts += [_figure(r.get("figure"), f"data map of {r.get('cell')}") for _, r in maps]
    return "\n".join(parts)


def _datasets(report: dict) -> list:
    """The plan's datasets, then any other that a section names (no row goes unshown)."""
    names = list((report.get("plan") or {}).get("datasets") or [])
    for section in ("checkpoints", "data_maps", "agreement", "stability"):
        names += [row.get("dataset") for row in report.get(section) or []]
    names += list(report.get("figures") or {})
    return list(dict.fromkeys(names))


def _table(section: str, rows: list[tuple[int, dict]], columns: list, links=None, elsewhere=()) -> str:
    """rows as (index in report.json's list, row); columns (key, header, format), then a column for
    each number field that neither they nor ``elsewhere`` (the columns of another table of the same
    rows) show; ``elsewhere=None``: no such columns. ``links(row)`` fills a last column."""
    if not rows:
        return '<p class="none">– (none in report.json)</p>'
    if elsewhere is not None:
        columns = columns + _extra_columns([r for _, r in rows], [*columns, *elsewhere])
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in columns) + ("<th>links</th>" if links else "")
    lines = [f'<div class="wide"><table>\n<tr>{head}</tr>']
    for i, row in rows:
        cells = "".join(_td(section, i, row, key, fmt) for key, _, fmt in columns)
        lines.append(f"<tr>{cells}" + (f"<td>{links(row)}</td>" if links else "") + "</tr>")
    return "\n".join(lines) + "\n</table></div>"


def _extra_columns(rows: list[dict], columns: list) -> list:
    known = {key for key, _, _ in columns}
    extra = [k for row in rows for k, v in row.items() if k not in known and is_number(v)]
    return [(k, k, "{}") for k in dict.fromkeys(extra)]


def _td(section: str, i: int, row: dict, key: str, fmt: str | None) -> str:
    value = row.get(key)
    css = ' class="num"' if is_number(value) else (' class="failed"' if value == "failed" else "")
    return f"<td{css}{_data(section, i, row, key)}>{_e(show(value, fmt))}</td>"


def _text_value(section: str, i: int, row: dict, key: str) -> str:
    return f"<span{_data(section, i, row, key)}>{_e(show(row.get(key), None))}</span>"


def _data(section: str, i: int, row: dict, key: str) -> str:
    """The traceable value's attributes; none for a key the row lacks (shown as "–" all the same)."""
    if key not in row:
        return ""
    return f' data-key="{_e(f"{section}.{i}.{key}")}" data-value="{_e(repr(row[key]))}"'


def _cell_links(row: dict) -> str:
    run, curves, page = row.get("run"), row.get("curves"), row.get("page")
    if row.get("status") == "not run":  # report.py's word for a cell with no run directory
        run = curves = None
    links = [_link(f"{run}/", "run") if run else "", _link(curves, "curves") if curves else ""]
    links.append(_link(page, "attributions") if page else "")
    return " ".join(link for link in links if link) or "–"


def _run_link(row: dict) -> str:
    run = row.get("run")
    return _link(f"{run}/", run) if run else "–"


def _figure(path: str | None, caption: str) -> str:
    if not path:
        return f'<p class="none">{_e(caption)}: – (no figure in report.json)</p>'
    img = f'<img src="{_href(path)}" alt="{_e(caption)}">'
    return f"<figure>{_link(path, img, escape=False)}<figcaption>{_e(caption)}</figcaption></figure>"


def _link(path: str, text: str, escape: bool = True) -> str:
    return f'<a href="{_href(path)}">{_e(text) if escape else text}</a>'


def _href(path: str) -> str:
    """A study-relative path as a URL: percent-quoted (a cell id may hold any character), escaped."""
    return _e(quote(str(path), safe="/"))


def _names(values) -> str:
    return ", ".join(f"<code>{_e(v)}</code>" for v in values or []) or "–"


def _e(value) -> str:
    return html.escape(str(value), quote=True)

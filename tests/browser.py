"""A page opened in a real browser: headless Chromium (Debian's `chromium`, which `make setup`
installs) driven by Playwright, which launches that binary and downloads nothing.

``open_page(path)`` loads a static page and returns what a person would run into: console errors and
warnings, uncaught script errors, each image and whether it rendered, each relative link and whether
its target is there (a linked .html page is loaded too), and every element's ``data-key``,
``data-value`` and shown text. ``assert_page_matches(path, report)`` checks a study's index.html
against its report.json with them.
"""

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from playwright.sync_api import sync_playwright

from mlx_models.study.page import TABLES

TIMEOUT_MS = 30_000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# what the page shows: images, links, data-keyed elements, tag counts, text
_SCAN = """() => ({
  images: [...document.images].map(i => [i.getAttribute('src'), i.currentSrc, i.naturalWidth]),
  links: [...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href]),
  values: [...document.querySelectorAll('[data-key]')].map(
    e => [e.dataset.key, e.dataset.value, e.textContent]),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  tags: [...document.querySelectorAll('*')].map(e => e.localName),
  text: document.body ? document.body.innerText : '',
})"""


@dataclass
class Link:
    href: str  # as written in the page
    path: Path | None  # the file it names (None: not a file:// target)
    exists: bool
    errors: list[str] = field(default_factory=list)  # a linked .html page's own problems


@dataclass
class PageCheck:
    url: str
    console: list[tuple[str, str]]  # (type, text): errors and warnings
    page_errors: list[str]  # uncaught exceptions
    images: list[tuple[str, int]]  # (src, naturalWidth); 0 = did not render
    links: list[Link]  # relative links (fragments: checked against the page's ids)
    values: list[tuple[str, str, str]]  # (data-key, data-value, shown text)
    tags: dict[str, int]  # element name -> count
    text: str  # the body's rendered text
    ids: set[str]  # the elements' ids (a fragment link's targets)

    @property
    def problems(self) -> list[str]:
        out = [f"console {kind}: {text}" for kind, text in self.console]
        out += [f"page error: {e}" for e in self.page_errors]
        out += [f"image does not render: {src}" for src, width in self.images if width == 0]
        out += [f"link to nothing: {link.href} ({link.path})" for link in self.links if not link.exists]
        out += [f"linked page {link.href}: {e}" for link in self.links for e in link.errors]
        return out


def chromium() -> str:
    """The browser binary: $CHROMIUM, else the first of BROWSERS on PATH."""
    for name in (os.environ.get("CHROMIUM"), *BROWSERS):
        if name and (found := shutil.which(name)):
            return found
    pytest.fail("no Chromium: run `make setup` (Debian's chromium) or set CHROMIUM to a Chromium binary")


def open_page(path: str | os.PathLike) -> PageCheck:
    """Load the page at ``path`` in headless Chromium and report what it shows (see PageCheck)."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=args, timeout=TIMEOUT_MS)
        try:
            check, hrefs = _load(browser, Path(path).resolve().as_uri())
            check.links = [_link(browser, href, url, check) for href, url in hrefs]
            return check
        finally:
            browser.close()


def _load(browser, url: str) -> tuple[PageCheck, list[tuple[str, str]]]:
    """One page loaded: its PageCheck (links not yet checked) and its links (href, absolute URL)."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console, errors = [], []
    page.on("console", lambda m: console.append((m.type, m.text)) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        response = page.goto(url, wait_until="load")
        if response is not None and not response.ok:
            errors.append(f"{url}: HTTP {response.status}")
        seen = page.evaluate(_SCAN)
    finally:
        page.close()
    tags = {}
    for tag in seen["tags"]:
        tags[tag] = tags.get(tag, 0) + 1
    images = [(src or current, width) for src, current, width in seen["images"]]
    values = [tuple(v) for v in seen["values"]]
    check = PageCheck(url, console, errors, images, [], values, tags, seen["text"], set(seen["ids"]))
    return check, [tuple(link) for link in seen["links"]]


def _link(browser, href: str, url: str, page: PageCheck) -> Link:
    """A relative link: its target exists on disk (a fragment: an element of the page has that id);
    a linked .html page is loaded and its own problems recorded."""
    parsed = urlparse(url)
    if href.startswith("#"):
        return Link(href, None, unquote(parsed.fragment) in page.ids)
    if urlparse(href).scheme or href.startswith("//") or parsed.scheme != "file":
        return Link(href, None, True)  # not a file of the page's: nothing to check
    path = Path(unquote(parsed.path))
    link = Link(href, path, path.exists())
    if link.exists and path.suffix == ".html":
        try:
            link.errors = _load(browser, url)[0].problems
        except Exception as e:  # a page that does not load at all
            link.errors = [f"does not load: {e}"]
    return link


def assert_page_matches(path: str | os.PathLike, report: dict) -> PageCheck:
    """A study's index.html against its report.json dict: no problem in the browser (PageCheck),
    every data-key's data-value is the repr of report.json's value at that key and its text shows
    that value (rounded to the digits shown), and every number of the report's tables has a
    data-key on the page (no column dropped)."""
    check = open_page(path)
    assert not check.problems, "\n".join(check.problems)
    wrong = []
    for key, value_repr, text in check.values:
        value = lookup(report, key)
        if value_repr != repr(value) or not shows(value, text):
            wrong.append(f"{key}: report.json {value!r}, page data-value {value_repr} text {text!r}")
    assert not wrong, "\n".join(wrong)
    keys = {key for key, _, _ in check.values}
    missing = [
        f"{section}.{i}.{k}"
        for section in TABLES
        for i, row in enumerate(report.get(section) or [])
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and f"{section}.{i}.{k}" not in keys
    ]
    assert not missing, f"numbers of report.json the page does not show: {missing}"
    return check


_MISSING = object()


def lookup(report: dict, key: str):
    """report.json's value at a data-key (``cells.0.test_accuracy``); fails on a key it lacks."""
    value = report
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            pytest.fail(f"the page's data-key {key} names nothing in report.json")
    return value


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.(\d+))?(?:[eE]([-+]?\d+))?")


def shows(value, text: str) -> bool:
    """``text`` is ``value`` as a person reads it: "–" for null, the string itself, or the number
    rounded to the decimals shown."""
    text = text.strip()
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return text == "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return text == str(value)
    match = _NUMBER.search(text)
    if match is None:
        return False
    unit = 10.0 ** (int(match.group(2) or 0) - len(match.group(1) or ""))  # the last digit shown
    shown = float(match.group(0).replace(",", ""))
    return abs(shown - value) <= 0.5 * unit * (1 + 1e-9) + 1e-12

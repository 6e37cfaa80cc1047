"""The built book, read in a real browser with no network, as a reader on a train would read it.

The book is built from the committed notebook outputs (no execution, every warning an error) into a temporary
folder, served on localhost, and every page of the table of contents is opened in headless Chromium. On each:
mathematics typeset (no raw TeX left after MathJax ran), every image loaded with a caption and alt text and not
shrunk to illegibility, no request to any other host, no console error, no bookkeeping code shown, no code line or
equation cut by the text column. Separately, every internal link of the built HTML resolves (file and anchor).

Chromium: Debian's ``chromium`` (``make browser`` installs it as root), or the path in ``$CHROMIUM``; the server and
browser settings are those of ``tools/book_browser.py``, which also takes screenshots.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from book_browser import CHROMIUM_ARGS, chromium_path, offline_page, serve  # noqa: E402

JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
HOW_TO_GET_CHROMIUM = (
    "Chromium is needed for the browser test: on Debian/Ubuntu run `make browser` as root "
    "(apt-get install chromium), or point $CHROMIUM at a Chromium or Chrome executable"
)
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\begin\{|\$\$|\\frac|\\mathrm|\\alpha")
BOOKKEEPING = re.compile(r"\bglue(_numbers)?\(|NBVAL_")
MIN_SCALE = 0.8  # an image drawn at less than 80 % of its pixel width has labels too small to read


def _toc_pages() -> list[str]:
    """HTML paths of every page in _toc.yml, in reading order."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(items):
        for item in items:
            if "file" in item:
                pages.append(item["file"])
            walk(item.get("sections", []) + item.get("chapters", []))

    for part in toc.get("parts", []):
        walk(part["chapters"])
    return [f"{page}.html" for page in pages]


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """Build the book from the committed outputs (no execution), warnings as errors; return the HTML folder."""
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    # Jupyter Book resolves paths in the configuration (bibliography, extensions) against the book's folder.
    config_path = REPO / f"_config.browser-test-{os.getpid()}.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        build = subprocess.run(
            [str(JUPYTER_BOOK), "build", str(REPO), "--config", str(config_path), "--path-output", str(out),
             "-W", "--keep-going"],
            capture_output=True, text=True, timeout=900,
        )
    finally:
        config_path.unlink()
    assert build.returncode == 0, f"the book does not build cleanly from its committed outputs:\n{build.stdout[-6000:]}"
    html = out / "_build" / "html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file(), (
        "MathJax is not served from the book: run `python tools/get_mathjax.py` (make does)"
    )
    return html


class _LinksAndIds(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def test_every_internal_link_resolves(book):
    parsed = {}
    for page in book.rglob("*.html"):
        parser = _LinksAndIds()
        parser.feed(page.read_text(encoding="utf-8"))
        parsed[page] = parser
    broken = []
    for page, parser in parsed.items():
        for href in parser.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(book)}: {href} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(book)}: {href} (no such anchor)")
    assert not broken, f"{len(broken)} internal links do not resolve:\n" + "\n".join(sorted(set(broken))[:40])


# Runs in the page once MathJax has finished; returns what a reader would see that is wrong.
PAGE_CHECKS = """
async () => {
  if (document.querySelector('.math')) {  // MathJax loads deferred: wait until it has started, then typeset
    for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
      await new Promise(resolve => setTimeout(resolve, 50));
    if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  }
  const findings = {rawTex: [], images: [], bookkeeping: [], wideCode: [], wideMath: [], mathjax: !document.querySelector('.math') || !!(window.MathJax && MathJax.version)};
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, parent = node.parentElement;
    if (!parent || parent.closest('pre, code, script, style, textarea, mjx-container, .highlight')) continue;
    if (RAW_TEX.test(node.textContent)) findings.rawTex.push(node.textContent.trim().slice(0, 100));
  }
  for (const img of document.querySelectorAll('main img')) {
    const figure = img.closest('figure');
    const caption = figure && figure.querySelector('figcaption');
    const alt = (img.getAttribute('alt') || '').trim();
    const problems = [];
    if (!img.complete || img.naturalWidth === 0) problems.push('not loaded');
    if (!caption || !caption.innerText.trim()) problems.push('no caption');
    if (!alt || /^\\S+\\.(png|svg|jpe?g)$/i.test(alt)) problems.push(`alt text "${alt}" (a file name)`);
    const shown = img.getBoundingClientRect().width;
    if (img.naturalWidth && shown / img.naturalWidth < MIN_SCALE)
      problems.push(`drawn at ${Math.round(100 * shown / img.naturalWidth)} % of its ${img.naturalWidth} px`);
    if (problems.length) findings.images.push(`${img.getAttribute('src')}: ${problems.join(', ')}`);
  }
  for (const cell of document.querySelectorAll('.cell_input')) {
    if (BOOKKEEPING.test(cell.innerText)) findings.bookkeeping.push(cell.innerText.trim().slice(0, 100));
  }
  for (const pre of document.querySelectorAll('.cell_input pre')) {
    if (pre.scrollWidth > pre.clientWidth + 2) findings.wideCode.push(pre.innerText.split('\\n')[0].slice(0, 80));
  }
  const column = document.querySelector('main article') || document.querySelector('main');
  for (const math of document.querySelectorAll('mjx-container[display="true"]')) {
    const box = math.getBoundingClientRect(), inner = math.firstElementChild.getBoundingClientRect();
    if (inner.width > box.width + 2 || box.right > column.getBoundingClientRect().right + 2)
      findings.wideMath.push((math.querySelector('mjx-assistive-mml') || math).textContent.slice(0, 60));
  }
  return findings;
}
""".replace("RAW_TEX", "/" + RAW_TEX.pattern + "/").replace("BOOKKEEPING", "/" + BOOKKEEPING.pattern + "/").replace(
    "MIN_SCALE", str(MIN_SCALE)
)


@pytest.fixture(scope="module")
def pages(book):
    """Open every page of the table of contents in headless Chromium; return {page: findings}."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt: `make test`")
    chromium = chromium_path()
    if chromium is None:
        pytest.skip(HOW_TO_GET_CHROMIUM)
    results = {}
    with serve(book) as origin, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        outside, errors = [], []  # the reader is offline: requests to other hosts fail, and are recorded
        page = offline_page(browser, origin, outside)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for path in _toc_pages():
            outside.clear(), errors.clear()
            response = page.goto(f"{origin}/{path}", wait_until="networkidle")
            findings = page.evaluate(PAGE_CHECKS)
            findings.update(status=response.status, outside=list(outside), errors=list(errors))
            results[path] = findings
        browser.close()
    return results


def _report(pages, key):
    return {path: found[key] for path, found in pages.items() if found[key]}


def test_pages_load_offline_without_console_errors(pages):
    assert all(found["status"] == 200 for found in pages.values())
    assert not _report(pages, "outside"), f"requests to other hosts: {_report(pages, 'outside')}"
    assert not _report(pages, "errors"), f"console errors: {_report(pages, 'errors')}"


def test_mathematics_is_typeset(pages):
    assert all(found["mathjax"] for found in pages.values()), "MathJax did not load on some pages"
    assert not _report(pages, "rawTex"), f"raw TeX left after MathJax: {_report(pages, 'rawTex')}"


def test_every_image_loads_with_caption_alt_text_and_legible_size(pages):
    assert not _report(pages, "images"), f"images: {_report(pages, 'images')}"


def test_no_bookkeeping_code_is_shown(pages):
    assert not _report(pages, "bookkeeping"), f"glue/nbval code shown to the reader: {_report(pages, 'bookkeeping')}"


def test_display_equations_fit_the_text_column(pages):
    assert not _report(pages, "wideMath"), f"equations wider than the text column: {_report(pages, 'wideMath')}"


def test_code_lines_fit_the_text_column(pages):
    assert not _report(pages, "wideCode"), f"code cells that scroll sideways: {_report(pages, 'wideCode')}"


def test_api_reference_documents_each_object_once(book):
    ids = []
    for page in sorted((book / "book" / "api").glob("*.html")):
        ids += re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', page.read_text(encoding="utf-8"))
    assert len(ids) > 300, "the API pages document almost nothing: is autodoc failing to import kdlib?"
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    # a re-export documented under its package as well as under its module: kdlib.losses.kd_loss + ...logit.kd_loss
    by_package = set()
    for name in ids:  # kdlib.losses.kd_loss when kdlib.losses.<module>.kd_loss exists (a method's class is no module)
        package, _, obj = name.rpartition(".")
        by_package |= {name for other in ids if other.endswith("." + obj) and other.rsplit(".", 2)[0] == package
                       and other.count(".") == name.count(".") + 1 and other.rsplit(".", 2)[1].islower()}
    assert not repeated and not by_package, f"documented twice: {repeated or sorted(by_package)[:10]}"

"""Read the built book in headless Chromium, offline: a local server, the browser, and screenshots.

Usage::

    python tools/book_browser.py _build/html shots/ book/intro.html "notebooks/03_vanilla_kd.html#the-objective"

writes one 1280x900 screenshot per page (the part of the page at the anchor, if one is given) into ``shots/``.
Every request that does not go to the local server is refused, as it would fail for a reader without network.
``tests/test_book_browser.py`` uses the same server and browser settings.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}


def chromium_path() -> str | None:
    """``$CHROMIUM``, else Debian's ``chromium`` on the PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per file served would drown the test's output
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on a free localhost port; yield its origin, e.g. ``http://127.0.0.1:41234``."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def offline_page(browser, origin: str, outside: list[str]):
    """A page whose requests to anything but ``origin`` fail (and are appended to ``outside``)."""
    page = browser.new_page(viewport=VIEWPORT)

    def route(request_route):
        url = request_route.request.url
        if url.startswith(origin) or url.startswith("data:"):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    page.route("**/*", route)
    return page


def screenshots(html: Path, out: Path, pages: list[str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with serve(html) as origin, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = offline_page(browser, origin, [])
        for spec in pages:
            page.goto(f"{origin}/{spec}", wait_until="networkidle")
            page.wait_for_timeout(1500)  # MathJax typesets after the load event
            name = spec.replace(".html", "").replace("/", "_").replace("#", "_")
            written.append(out / f"{name}.png")
            page.screenshot(path=str(written[-1]))
        browser.close()
    return written


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    for path in screenshots(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]):
        print(path)

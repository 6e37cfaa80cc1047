"""Install MathJax 3 into book/_static/mathjax, so that the book typesets its mathematics offline.

Usage::

    python tools/get_mathjax.py            # no-op when the pinned version is already there

Sphinx loads MathJax from a CDN by default, and a reader without internet then sees raw TeX. The book points
``mathjax_path`` at this local copy instead (see ``_config.yml``). The copy comes from the npm registry's
tarball of the pinned version, checked against the registry's SHA-512; only the ``es5/`` build is kept,
without the SVG-output bundles the book does not use. It is not committed (about 10 MB): ``make book`` and
``make test`` run this script. MathJax is Apache-2.0 licensed; its licence is copied beside it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
# The npm registry's "integrity" field for this version (dist.integrity of https://registry.npmjs.org/mathjax/3.2.2).
SHA512 = "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
TARGET = Path(__file__).resolve().parents[1] / "book" / "_static" / "mathjax"
ENTRY = "tex-chtml.js"  # the component mathjax_path names: TeX input, HTML-CSS output, menu, assistive MathML
UNUSED = ("output/svg", "tex-svg", "tex-mml-svg", "mml-svg", "tex-chtml-full-speech", "node-main")


def installed() -> bool:
    return (TARGET / ENTRY).is_file() and (TARGET / "VERSION").read_text().strip() == VERSION


def download() -> bytes:
    try:
        with urllib.request.urlopen(URL, timeout=120) as response:
            data = response.read()
    except OSError as err:
        sys.exit(
            f"get_mathjax: could not download {URL} ({err}). Without it the book shows raw TeX offline. "
            f"Download that file elsewhere and run: python tools/get_mathjax.py path/to/mathjax-{VERSION}.tgz"
        )
    return data


def install(data: bytes) -> None:
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != SHA512:
        sys.exit(f"get_mathjax: the tarball's SHA-512 is {digest}, not the registry's {SHA512}; nothing installed")
    staging = TARGET.with_name("mathjax.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            keep = name == "LICENSE" or (name.startswith("es5/") and not name[4:].startswith(UNUSED))
            if member.isfile() and keep:
                out = staging / name.removeprefix("es5/")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
    (staging / "VERSION").write_text(VERSION + "\n")
    shutil.rmtree(TARGET, ignore_errors=True)
    staging.rename(TARGET)  # all or nothing: an interrupted run leaves no half-installed copy


def main(argv: list[str]) -> None:
    if installed():
        print(f"get_mathjax: MathJax {VERSION} already in {TARGET}")
        return
    data = Path(argv[0]).read_bytes() if argv else download()
    install(data)
    print(f"get_mathjax: MathJax {VERSION} installed in {TARGET}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""The dashboard's files, read once and kept in memory with their digests.

Pages reference every asset as `/dashboard/static/<name>?v=<digest>`: a changed file gets a
new URL, so browsers may cache an asset for a year (`immutable`) and still never run a stale
one. plotly.js (4.8 MB) comes from the installed `plotly` wheel and is also kept gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PLOTLY_JS = "plotly.min.js"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
PAGES = ("overview", "user")


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    gzipped: bytes | None
    digest: str  # first 16 hex digits of the SHA-256 of body
    media_type: str

    @property
    def url(self) -> str:
        return f"/dashboard/static/{self.name}?v={self.digest}"


def _asset(name: str, body: bytes, compress: bool) -> Asset:
    return Asset(name, body, gzip.compress(body, 6, mtime=0) if compress else None,
                 hashlib.sha256(body).hexdigest()[:16], MEDIA_TYPES[Path(name).suffix])


@cache
def assets() -> dict[str, Asset]:
    """Every static asset by file name: this package's static/ and plotly.min.js."""
    found = {path.name: _asset(path.name, path.read_bytes(), compress=False)
             for path in sorted(STATIC.iterdir()) if path.suffix in MEDIA_TYPES}
    plotly = resources.files("plotly") / "package_data" / PLOTLY_JS
    found[PLOTLY_JS] = _asset(PLOTLY_JS, plotly.read_bytes(), compress=True)
    return found


@cache
def page(name: str) -> str:
    """A page's HTML with its asset URLs filled in (`$asset_<stem>_<ext>` placeholders, e.g.
    `$asset_plotly_min_js`). The pages carry no data, so they are rendered once."""
    if name not in PAGES:
        raise KeyError(name)
    urls = {"asset_" + n.replace(".", "_").replace("-", "_"): a.url for n, a in assets().items()}
    return string.Template((TEMPLATES / f"{name}.html").read_text()).substitute(urls)

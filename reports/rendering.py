"""A report's PDF: a Django template rendered to HTML, laid out by WeasyPrint.

What goes into the page is the person's own data, so it is treated as an attacker's: the template
escapes every value, and WeasyPrint fetches nothing but the bundled assets (reports/assets: the
stylesheet and fonts) and `data:` URLs. No `http(s)`, no `file:` outside the assets, no
redirects; an attachment (`<link rel="attachment">`, `<a rel="attachment">`), which would embed
whatever it names in the PDF, is dropped before the PDF is written. Whatever the page asks for
beyond that is refused, logged, and left out.
"""

import logging
import mimetypes
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from django.template.loader import render_to_string
from PIL import ImageFile
from weasyprint import HTML
from weasyprint.urls import URLFetcher, URLFetcherResponse

# Importing WeasyPrint sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process, and a worker
# that renders reports also processes uploads: a truncated photo would then be "processed" into
# grey bands instead of failing with its reason. Reports embed no raster image of their own.
ImageFile.LOAD_TRUNCATED_IMAGES = False

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
# The chart's drawing area, in CSS pixels.
CHART_WIDTH, CHART_HEIGHT = 480, 140


class BundledAssetsOnly(URLFetcher):
    """WeasyPrint's fetcher for a report: the files under ASSETS, and `data:` URLs."""

    def __init__(self) -> None:
        # No redirects, no network handler is ever reached: fetch() decides first.
        super().__init__(allowed_protocols={"file", "data"}, allow_redirects=False)
        self.refused: list[str] = []

    def fetch(self, url: str, headers=None) -> URLFetcherResponse:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return super().fetch(url, headers)
        if scheme == "file" and (asset := _asset(url)) is not None:
            content_type = mimetypes.guess_type(asset.name)[0] or "application/octet-stream"
            return URLFetcherResponse(
                url, body=asset.read_bytes(), headers={"Content-Type": content_type}
            )
        self.refused.append(url)
        logger.warning("report rendering refused to fetch %.200r", url)
        raise ValueError("only the report's bundled assets are fetched")


def _asset(url: str) -> Path | None:
    """The bundled file this `file:` URL names, if it names one (no host, no way out of
    ASSETS through `..` or a symbolic link)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    path = Path(url2pathname(parts.path)).resolve()
    if not path.is_relative_to(ASSETS) or not path.is_file():
        return None
    return path


@dataclass(frozen=True)
class Rendered:
    pdf: bytes
    # URLs the page asked for and did not get: none, for a page made from the template alone.
    refused: list[str]


def pdf_render(*, template: str, context: dict) -> Rendered:
    """Render the template with the context to a PDF, fetching only bundled assets."""
    return pdf_from_html(render_to_string(template, context))


def pdf_from_html(html: str) -> Rendered:
    """Lay this HTML out as a PDF, fetching only bundled assets and `data:` URLs, embedding no
    attachment."""
    fetcher = BundledAssetsOnly()
    document = HTML(string=html, base_url=ASSETS.as_uri() + "/", url_fetcher=fetcher).render()
    # Attachments embed whatever they name: `<link rel=attachment>` in the metadata, and
    # `<a rel=attachment>` as a link of its page. A report has none of its own.
    document.metadata.attachments = []
    for page in document.pages:
        page.links = [link for link in page.links if link[0] != "attachment"]
    return Rendered(pdf=document.write_pdf(), refused=fetcher.refused)


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


def bars_per_day(counts: dict[date, int], days: list[date]) -> list[Bar]:
    """The chart's bars, one per day of the period (days without uploads included), scaled to
    the drawing area; the template draws them as SVG rectangles."""
    most = max([counts.get(day, 0) for day in days], default=0) or 1
    slot = CHART_WIDTH / max(len(days), 1)
    bars = []
    for index, day in enumerate(days):
        value = counts.get(day, 0)
        height = CHART_HEIGHT * value / most
        bars.append(
            Bar(
                label=day.strftime("%d"),
                value=value,
                x=round(index * slot + slot * 0.15, 2),
                y=round(CHART_HEIGHT - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
            )
        )
    return bars


# Address space a render may add to its process: a 300-row report lays out in about 60 MB, and
# WeasyPrint's known leaks grow a long-lived process besides (CELERY_WORKER_MAX_MEMORY_PER_CHILD
# replaces it). Past this, allocations fail and the render fails, instead of the machine
# swapping or the kernel's OOM killer picking a process.
RENDER_MEMORY_BYTES = 512 * 1024 * 1024


@contextmanager
def memory_capped(budget: int = RENDER_MEMORY_BYTES) -> Iterator[None]:
    """Cap this process's address space at what it uses now plus `budget` while the block runs
    (RLIMIT_AS; Linux), then lift the cap again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = in_use + budget
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

"""Checks on the built documentation in ``docs/_build/html``.

Build it first (``make -C docs html``). Without a build these tests skip, unless
``SINGD_OPT_REQUIRE_DOCS=1`` is set (as CI does right after building): then a missing
build fails, so the checks never pass on nothing.
"""

from __future__ import annotations

import html as html_text
import importlib
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "docs" / "_build" / "html"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("plot_*.py"))
REQUIRED = os.environ.get("SINGD_OPT_REQUIRE_DOCS") == "1"


@pytest.fixture(scope="module")
def html() -> Path:
    if not (HTML / "index.html").is_file():
        message = f"the documentation is not built ({HTML / 'index.html'} is missing)"
        if REQUIRED:
            pytest.fail(message + "; build it with `make -C docs html`")
        pytest.skip(message + "; build it with `make -C docs html` to run these checks")
    return HTML


def read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} was not built"
    return path.read_text(encoding="utf-8")


def test_seven_examples_exist() -> None:
    assert len(EXAMPLES) >= 7, [path.name for path in EXAMPLES]


def test_every_example_has_an_executed_gallery_page(html: Path) -> None:
    index = read(html / "auto_examples" / "index.html")
    for example in EXAMPLES:
        page = read(html / "auto_examples" / f"{example.stem}.html")
        assert f"{example.stem}.html" in index, f"{example.stem} is missing from the gallery"
        # sphinx-gallery reports the run time of every example it executed
        assert "Total running time of the script" in page, f"{example.stem} was not executed"


def test_structures_page_shows_the_animation(html: Path) -> None:
    page = read(html / "auto_examples" / "plot_02_structures.html")
    gifs = re.findall(r'<img[^>]+src="([^"]+\.gif)"', page)
    assert gifs, "the structures page shows no GIF"
    gif = (html / "auto_examples" / gifs[0]).resolve()
    assert gif.is_file(), f"{gif} is referenced but missing"
    from PIL import Image

    with Image.open(gif) as image:
        assert image.format == "GIF"
        assert image.n_frames == 7  # d = 2, 4, ..., 128


def test_structures_page_has_a_static_figure(html: Path) -> None:
    page = read(html / "auto_examples" / "plot_02_structures.html")
    assert re.search(r'<img[^>]+src="[^"]+\.png"', page), "no static figure"


def test_api_reference_documents_both_packages(html: Path) -> None:
    generated = html / "api" / "generated"
    read(generated / "structmat.html")
    read(generated / "singd_opt.html")
    sing_page = read(generated / "singd_opt.SINGD.html")
    assert "SUPPORTED_STRUCTURES" in sing_page or "structures" in sing_page
    for name in ("StructuredMatrix", "Dense", "Diagonal", "get_structure"):
        read(generated / f"structmat.{name}.html")


def test_choosing_a_structure_page(html: Path) -> None:
    page = read(html / "choosing_a_structure.html")
    assert "<table" in page
    for name in ("dense", "diagonal", "triltoeplitz"):
        assert name in page


def test_benchmark_page_plots_the_results_present(html: Path) -> None:
    page = read(html / "auto_examples" / "plot_07_benchmark_results.html")
    results = ROOT / "benchmarks" / "results"
    figures = re.findall(r'<img[^>]+src="[^"]+plot_07_benchmark_results_\d+\.png"', page)
    expected = 2 * (results / "optimizer_step.json").is_file()
    expected += (results / "structmat_kernels.json").is_file()
    assert len(figures) == expected, f"{len(figures)} figures for {expected} expected"


def test_command_page_shows_the_help(html: Path) -> None:
    page = read(html / "api" / "command.html")
    assert "usage: singd-opt" in page
    assert "--structures" in page


class _Page(HTMLParser):
    """The ids, links and external resources of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []
        self.styles: list[str] = []
        self.table_depth = 0
        self.lists_in_tables = 0
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key])
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag in ("script", "img", "iframe", "audio", "video", "source") and values.get("src"):
            self.resources.append(values["src"])
        if tag == "link" and values.get("href"):
            self.resources.append(values["href"])
        if values.get("style"):
            self.styles.append(values["style"])
        self._in_style = tag == "style"
        if tag == "table":
            self.table_depth += 1
        if tag in ("ul", "ol") and self.table_depth:
            self.lists_in_tables += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table_depth -= 1
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(read(path))
    return page


def is_external(url: str) -> bool:
    """Whether ``url`` names another host (``http:``, ``https:`` or ``//host``)."""
    return urlparse(url.strip()).scheme in ("http", "https") or url.strip().startswith("//")


CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""")


def test_external_url_check_sees_other_hosts() -> None:
    page = _Page()
    page.feed(
        '<script src="https://cdn.example.org/x.js"></script>'
        '<link rel="stylesheet" href="//cdn.example.org/x.css">'
        '<script src="_static/x.js"></script><style>@import "https://e.org/y.css";</style>'
    )
    assert [is_external(url) for url in page.resources] == [True, True, False]
    assert CSS_URL.findall(" ".join(page.styles)) == ["https://e.org/y.css"]


def test_site_loads_no_script_or_style_from_other_hosts(html: Path) -> None:
    """The site works offline: math, search and tables use only files it ships."""
    offenders = []
    for path in sorted(html.rglob("*.html")):
        page = parse(path)
        urls = page.resources + CSS_URL.findall(" ".join(page.styles))
        offenders += [f"{path.relative_to(html)}: {url}" for url in urls if is_external(url)]
    for path in sorted(html.rglob("*.css")):
        urls = CSS_URL.findall(path.read_text(encoding="utf-8", errors="replace"))
        offenders += [f"{path.relative_to(html)}: {url}" for url in urls if is_external(url)]
    assert not offenders, offenders[:20]


def test_math_renders_with_the_bundled_mathjax(html: Path) -> None:
    page = read(html / "time_to_target.html")
    assert "\\(" in page or "\\[" in page, "the page has no math to render"
    resources = parse(html / "time_to_target.html").resources
    scripts = [urlparse(url).path for url in resources if "mathjax" in url.lower()]
    assert scripts == ["_static/mathjax/tex-chtml.js"], scripts
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    fonts = html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("MathJax_Main-Regular.woff")), "MathJax's fonts were not copied"


def test_source_pages_link_back_to_existing_anchors(html: Path) -> None:
    """Every ``[docs]`` link of a highlighted source page lands on an existing anchor."""
    pages: dict[Path, _Page] = {}

    def page_of(path: Path) -> _Page:
        if path not in pages:
            pages[path] = parse(path)
        return pages[path]

    checked, broken = 0, []
    for source in sorted((html / "_modules").rglob("*.html")):
        for href in page_of(source).links:
            url = urlparse(html_text.unescape(href))
            if url.scheme or not url.fragment or not url.path:
                continue  # other hosts, plain pages, anchors within the source page
            target = (source.parent / url.path).resolve()
            checked += 1
            if not target.is_file() or url.fragment not in page_of(target).ids:
                broken.append(f"{source.relative_to(html)} -> {href}")
    assert checked > 100, f"only {checked} back-links found"
    assert not broken, broken


def load_ext(name: str) -> ModuleType:
    """Import the module ``name`` of ``docs/_ext``."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))


@pytest.mark.parametrize(
    "cell", ["- / - / -", "-", "* x", "+ x", "1. x", "(a) x", "#. x", "i. x", "A) x"]
)
def test_table_cells_that_look_like_lists_stay_text(cell: str) -> None:
    docutils_core = pytest.importorskip("docutils.core")
    from docutils import nodes

    tables = load_ext("structure_tables")
    text = tables.list_table(["first", "second"], [[cell, "1.25"]])
    tree = docutils_core.publish_doctree(text)
    assert not list(tree.findall(nodes.bullet_list)), text
    assert not list(tree.findall(nodes.enumerated_list)), text
    entries = [entry.astext() for entry in tree.findall(nodes.entry)]
    assert entries == ["first", "second", cell, "1.25"]


def test_time_to_target_tables_have_no_lists_in_cells(html: Path) -> None:
    page = parse(html / "time_to_target.html")
    assert page.lists_in_tables == 0


def test_time_to_target_example_shows_every_workload_of_the_results(html: Path) -> None:
    """The gallery page reads the results afresh on every build, so it is never stale."""
    data = json.loads((ROOT / "benchmarks" / "results" / "time_to_target.json").read_text())
    page = html_text.unescape(read(html / "auto_examples" / "plot_10_time_to_target.html"))
    for name, workload in data["results"].items():
        assert f"{name}: target " in page, f"{name} is missing from the example's output"
        adamw = workload["optimizers"]["adamw"]["median_steps"]
        assert re.search(rf"AdamW\s+{adamw:g} steps", page), (name, adamw)

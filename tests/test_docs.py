"""Checks on the built documentation in ``docs/_build/html``.

Build it first (``make -C docs html``). Without a build these tests skip, unless
``SINGD_OPT_REQUIRE_DOCS=1`` is set (as CI does right after building): then a missing
build fails, so the checks never pass on nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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

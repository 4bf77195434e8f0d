"""Sphinx configuration for the singd-opt documentation.

Build with ``make -C docs html`` or
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("agg")
# The examples train tiny models, for which one thread is fastest; one thread also keeps
# the build from oversubscribing a shared machine.
torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

import distributed_table  # noqa: E402  (lives in docs/_ext)
import structure_tables  # noqa: E402  (lives in docs/_ext)
import time_to_target_tables  # noqa: E402  (lives in docs/_ext)

project = "singd-opt"
author = "singd-opt contributors"
copyright = "2025, singd-opt contributors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped with the docs extra and copied into _static: math renders offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "viewcode_backlinks",  # docs/_ext: back-links from the source pages to indexed entries
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_generated",
    "examples/GALLERY_HEADER.rst",
    "Thumbs.db",
    ".DS_Store",
]

# -- autodoc / autosummary / napoleon ------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
# Section headings used by the structmat docstrings besides the standard ones.
napoleon_custom_sections = [("Class attributes", "params_style"), "Storage", "Complexity"]
# Types in signatures are rendered as text; cross-references into torch's own
# documentation are not resolved (the build must work offline).
nitpicky = False

# -- sphinx-gallery -----------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    # Figures through matplotlib; GIF animations written by an example are moved
    # next to them and shown inline (see docs/_ext/gif_scraper.py).
    "image_scrapers": ("matplotlib", "gif_scraper.scrape_gifs"),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "show_memory": False,
    # The computation-times pages load jQuery and DataTables from CDNs; the site must
    # work offline, and the run time is shown on every example's own page.
    "write_computation_times": False,
    "plot_gallery": "True",
}

# Pages written by builds that still had the computation times; removed so that they are
# neither rebuilt nor left in the site.
for stale in (DOCS / "sg_execution_times.rst", DOCS / "auto_examples" / "sg_execution_times.rst"):
    stale.unlink(missing_ok=True)


def reads_benchmark_results(example: Path) -> bool:
    """Whether a gallery example plots files of ``benchmarks/results`` (it measures nothing)."""
    return '"benchmarks" / "results"' in example.read_text(encoding="utf-8")


#: Gallery examples that read ``benchmarks/results/*.json``.
RESULT_EXAMPLES = sorted(
    path.stem for path in (DOCS / "examples").glob("plot_*.py") if reads_benchmark_results(path)
)

# sphinx-gallery re-runs an example only when its source changes. The examples that read
# benchmarks/results/*.json run on every build instead (in well under a second each), so
# new measurements always show up.
for example in RESULT_EXAMPLES:
    (DOCS / "auto_examples" / f"{example}.py.md5").unlink(missing_ok=True)

# -- HTML ---------------------------------------------------------------------------
html_theme = "furo"
html_title = "singd-opt"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"


def setup(app: object) -> None:
    """Write the generated tables of the structure pages before reading sources."""
    structure_tables.write_all(DOCS / "_generated", ROOT / "benchmarks" / "results")
    distributed_table.write(DOCS / "_generated", ROOT / "benchmarks" / "results")
    time_to_target_tables.write_all(DOCS / "_generated", ROOT / "benchmarks" / "results")

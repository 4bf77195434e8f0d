"""Tables for the page on choosing a structure, written when the documentation builds.

These fragments go to ``docs/_generated/``:

- ``storage.rst``: numbers stored per structure for several dimensions, counted from
  each structure's :meth:`~structmat.LinearStructure.tensor_shapes`;
- ``modules.rst``: the docstrings of the modules that define the structures, which
  hold the math of each structure (for the API reference);
- ``kernels.rst``: structured kernel time relative to the dense computation, read
  from ``benchmarks/results/structmat_kernels.json``;
- ``optimizer.rst``: SINGD step time and optimizer state relative to AdamW, read from
  ``benchmarks/results/optimizer_step.json``;
- ``command_help.txt``: the ``--help`` text of the ``singd-opt`` command.

A missing results file yields a short note that says how to produce it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structmat

STORAGE_DIMS = (64, 256, 1024, 4096)
KERNEL_OPS = ("A@X", "A.T@X", "A@A", "from_inner", "from_mat_inner", "inv")


def singd_structures() -> list[str]:
    """Return SINGD's standard structure names, then the other concrete structmat names.

    Parametric families are represented by the members SINGD uses by default
    (``block30diagonal``, ``hierarchical15_15``) and ``transposedhierarchical15_15``.
    """
    from singd_opt import SINGD

    standard = list(SINGD.SUPPORTED_STRUCTURES)
    more = [n for n in structmat.available_structures() if "{" not in n and n not in standard]
    return [*standard, *more, "transposedhierarchical15_15"]


def stored_numbers(name: str, dim: int) -> int:
    """Return how many numbers a ``dim x dim`` member of structure ``name`` stores."""
    shapes = structmat.get_structure(name).tensor_shapes(dim)
    return sum(math.prod(shape) for shape in shapes.values())


#: A cell text that reST would read as the start of a bullet or enumerated list
#: (``- / - / -``, ``* x``, ``1. x``, ``(a) x``, ``#. x``).
_LIST_MARKER = re.compile(
    r"([-*+\u2022\u2023\u2043]|\(?(\d+|[a-zA-Z]|[ivxlcdmIVXLCDM]+|#)[.)])(\s|$)"
)


def table_cell(text: str) -> str:
    """Escape ``text`` so that it stays plain text in a ``list-table`` cell.

    A leading list marker gets a backslash, which reST drops when it renders the cell;
    any other text is returned unchanged.
    """
    return "\\" + text if _LIST_MARKER.match(text) else text


def list_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a reST ``list-table`` with one header row, in the compact table style.

    Args:
        header: Column titles.
        rows: Cell texts, one sequence per row (escaped by :func:`table_cell`).

    Returns:
        The directive as reST text.
    """
    lines = [".. list-table::", "   :header-rows: 1", "   :class: compact-table"]
    lines.append("")
    for row in [header, *rows]:
        cells = [table_cell(str(cell)) for cell in row]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" for cell in cells[1:])
    return "\n".join(lines) + "\n"


def compact(count: int) -> str:
    """Format a count with at most three significant digits above 10,000 (``31.5 k``)."""
    if count < 10_000:
        return f"{count:,}"
    if count < 1_000_000:
        return f"{count / 1e3:.3g} k"
    return f"{count / 1e6:.3g} M"


def storage_table(names: Sequence[str]) -> str:
    """Stored numbers per structure and dimension, and the share of ``d * d`` at the largest."""
    largest = STORAGE_DIMS[-1]
    header = ["structure", *(f"d = {d}" for d in STORAGE_DIMS), f"share of d² at d = {largest}"]
    rows = []
    for name in names:
        counts = [stored_numbers(name, dim) for dim in STORAGE_DIMS]
        percent = 100 * counts[-1] / largest**2
        share = f"{percent:.0f} %" if percent >= 10 else f"{percent:.2g} %"
        rows.append([f"``{name}``", *(compact(c) for c in counts), share])
    return list_table(header, rows)


def load_results(path: Path) -> dict[str, Any] | None:
    """Return the parsed JSON file at ``path``, or ``None`` if it does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def missing_note(path: Path, script: str) -> str:
    """Return a reST note saying that ``path`` is missing and which script writes it."""
    return (
        ".. note::\n\n"
        f"   No measurements yet: ``{path.name}`` does not exist. Run\n"
        f"   ``python benchmarks/{script}`` and rebuild the documentation.\n"
    )


def _number(value: float) -> str:
    """Three significant digits, without an exponent for values up to a million."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _meta_line(meta: dict[str, Any]) -> str:
    parts = [f"{key} {value}" for key, value in meta.items()]
    return "Measured with " + ", ".join(parts) + "." if parts else ""


def kernel_tables(path: Path) -> str:
    """Structured/dense time ratios per structure and operation, one table per ``d``."""
    data = load_results(path)
    if data is None:
        return missing_note(path, "structmat_kernels.py")
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = data.get("results", {})
    dims = sorted({int(d) for by_dim in results.values() for d in by_dim})
    out = [_meta_line(data.get("meta", {})), ""]
    for dim in dims:
        rows = []
        for name, by_dim in results.items():
            entry = by_dim.get(str(dim))
            if entry is None:
                continue
            cells = [f"{entry[op]['ratio']:.2g}" if op in entry else "" for op in KERNEL_OPS]
            rows.append([f"``{name}``", *cells])
        out.append(f"**d = {dim}** (time structured / time dense; below 1 is faster)")
        out.append("")
        out.append(list_table(["structure", *(f"``{op}``" for op in KERNEL_OPS)], rows))
    return "\n".join(out)


def optimizer_tables(path: Path) -> str:
    """SINGD step time and state relative to AdamW, one table per benchmark model."""
    data = load_results(path)
    if data is None:
        return missing_note(path, "optimizer_step.py")
    out = [_meta_line(data.get("meta", {})), ""]
    for model, rows in data.get("results", {}).items():
        adamw = rows.get("adamw", {})
        table_rows = []
        for key, row in rows.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[0] != "singd_opt":
                continue
            _, structure, T = parts
            table_rows.append(
                [
                    f"``{structure}``",
                    T.removeprefix("T="),
                    _number(row["time"] * 1e3),
                    f"{row['time_vs_adamw']:.2f}",
                    f"{row['bytes'] / 2**20:.3g}",
                    f"{row['bytes_vs_adamw']:.2f}",
                ]
            )
        if not table_rows:
            continue
        summary = ""
        if "time" in adamw and "bytes" in adamw:
            summary = (
                f" (AdamW: {_number(adamw['time'] * 1e3)} ms per step, "
                f"{adamw['bytes'] / 2**20:.3g} MiB of state)"
            )
        out.append(f"**{model}**{summary}")
        out.append("")
        header = ["structure", "T", "ms / step", "time / AdamW", "state MiB", "state / AdamW"]
        out.append(list_table(header, table_rows))
    return "\n".join(out)


def structure_modules(names: Sequence[str]) -> list[str]:
    """Return the public structmat modules that define the structures ``names``.

    For each structure its own module comes after the modules of the templates it
    derives from (``structmat.toeplitz`` before ``structmat.tril_toeplitz``); the
    abstract base modules and private helper modules are left out.
    """
    skip = {"structmat.base", "structmat.linear_structure"}
    modules: list[str] = []
    for name in names:
        for cls in reversed(structmat.get_structure(name).__mro__):
            module = cls.__module__
            private = module.rsplit(".", 1)[-1].startswith("_")
            public = module.startswith("structmat.") and module not in skip and not private
            if public and module not in modules:
                modules.append(module)
    return modules


def module_docs(names: Sequence[str]) -> str:
    """One section per structure module: its docstring, then those of its classes.

    The classes are the public ones of :mod:`structmat` defined in that module; their
    full entries (with methods) are on the API pages, so here they are not indexed.
    """
    public = [getattr(structmat, name) for name in structmat.__all__]
    out = []
    for module in structure_modules(names):
        out += [f"``{module}``", "-" * (len(module) + 4), "", f".. automodule:: {module}"]
        out += ["   :no-members:", ""]
        for cls in public:
            if isinstance(cls, type) and cls.__module__ == module:
                out += [f".. autoclass:: structmat.{cls.__name__}", "   :no-index:"]
                out += ["   :no-members:", "   :no-show-inheritance:", ""]
    return "\n".join(out)


def command_help(width: int = 88) -> str:
    """Return ``singd-opt --help`` as printed in a terminal ``width`` columns wide."""
    from singd_opt_demo.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal width
    try:
        return build_parser().format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def write_all(target: Path, results: Path) -> None:
    """Write the generated fragments into ``target``.

    Args:
        target: Output folder (created if needed).
        results: The ``benchmarks/results`` folder.
    """
    target.mkdir(parents=True, exist_ok=True)
    names = singd_structures()
    files = {
        "storage.rst": storage_table(names),
        "modules.rst": module_docs(names),
        "kernels.rst": kernel_tables(results / "structmat_kernels.json"),
        "optimizer.rst": optimizer_tables(results / "optimizer_step.json"),
        "command_help.txt": command_help(),
    }
    for name, text in files.items():
        path = target / name
        if not path.is_file() or path.read_text() != text:  # keep mtimes of unchanged files
            path.write_text(text)

"""The demo lives in its own package: the libraries never import it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: The one module of the library allowed to name the demo: ``python -m singd_opt``.
FORWARDER = SRC / "singd_opt" / "__main__.py"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` statement of ``path`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_libraries_do_not_import_the_demo() -> None:
    offenders = []
    for package in ("structmat", "singd_opt"):
        for path in sorted((SRC / package).rglob("*.py")):
            if path == FORWARDER:
                continue
            names = imported_modules(path)
            demo = {name for name in names if name.split(".")[0] == "singd_opt_demo"}
            if demo:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(demo)}")
    assert not offenders, offenders
    # The forwarder does import it (the check above can see such an import).
    assert "singd_opt_demo.program" in imported_modules(FORWARDER)


def test_importing_every_library_module_loads_no_demo_module() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import singd_opt, structmat\n"
        "for package in (singd_opt, structmat):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'singd_opt_demo'))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip() == "[]"


def test_console_command_points_into_the_demo_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, _, function = project["scripts"]["singd-opt"].partition(":")
    assert module == "singd_opt_demo.program"
    assert function == "run"
    assert (SRC / "singd_opt_demo" / "program.py").is_file()
    assert (SRC / "singd_opt_demo" / "__init__.py").is_file()
    assert not (SRC / "singd_opt" / "cli.py").exists()
    assert not (SRC / "singd_opt" / "demo").exists()

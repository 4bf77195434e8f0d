"""The per-step cost benchmark: its measurement on one small model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_step_cost_measures_each_structure_against_adamw() -> None:
    module = _benchmark("step_cost")
    rows = module.measure("digits_mlp", ["adamw", "diagonal"], rounds=2, steps=1)
    assert set(rows) == {"adamw", "diagonal"}
    assert rows["adamw"]["vs_adamw"] == 1.0
    for row in rows.values():
        assert row["seconds"] > row["step_seconds"] > 0
        assert row["rest_seconds"] == pytest.approx(row["seconds"] - row["step_seconds"])
    diagonal = rows["diagonal"]
    assert diagonal["vs_adamw"] == pytest.approx(diagonal["seconds"] / rows["adamw"]["seconds"])
    assert "| digits_mlp |" in module.table({"digits_mlp": rows})


def test_step_cost_times_the_defaults_as_users_construct_them() -> None:
    module = _benchmark("step_cost")
    model = module.time_to_target.WORKLOADS["digits_mlp"].make_model()
    optimizer = module.build(module.DEFAULTS, model, {})
    structures = {block.describe()["preconditioner"] for block in optimizer.blocks}
    assert any("block" in text for text in structures)  # the per-layer choice, not T=1 dense
    rows = module.measure("digits_mlp", ["adamw", module.DEFAULTS], rounds=1, steps=1)
    assert rows[module.DEFAULTS]["seconds"] > 0


def test_step_cost_by_width_writes_each_width(tmp_path: Path) -> None:
    module = _benchmark("step_cost_width")
    output = tmp_path / "width.json"
    data = module.main(["--widths", "32", "--rounds", "1", "--steps", "1", "--output", str(output)])
    row = data["results"]["32"]
    assert row["singd_vs_adamw"] == pytest.approx(row["singd_seconds"] / row["adamw_seconds"])
    assert output.read_text().startswith("{")

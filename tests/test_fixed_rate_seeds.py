"""The fixed-rate seeds benchmark: both optimizers per seed, and its summary."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


def test_fixed_rate_seeds_runs_both_optimizers_and_adds_a_key(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "fixed_rate_seeds", ROOT / "benchmarks" / "fixed_rate_seeds.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    output = tmp_path / "seeds.json"
    output.write_text(json.dumps({"earlier": {}}))
    arguments = ["--workload", "digits_mlp", "--adamw-lr", "1e-3", "--singd-lr", "3e-3"]
    result = module.main([*arguments, "--seeds", "2", "--max-steps", "10", "--output", str(output)])
    for key in ("adamw", "singd"):
        row = result[key]
        assert len(row["steps"]) == 2
        assert row["missed"] == sum(steps is None for steps in row["steps"])
        assert row["mean_seconds"] > 0 and row["median_seconds_per_step"] > 0
    ratio = result["singd"]["mean_seconds"] / result["adamw"]["mean_seconds"]
    assert result["time_vs_adamw"] == pytest.approx(ratio)
    stored = json.loads(output.read_text())
    assert set(stored) == {"earlier", "digits_mlp adamw=0.001 singd=0.003 seeds=2"}

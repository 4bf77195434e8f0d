"""The time-to-target benchmark: its quick mode end to end, and its step counting."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ttt() -> ModuleType:
    path = ROOT / "benchmarks" / "time_to_target.py"
    spec = importlib.util.spec_from_file_location("time_to_target", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_quick_mode_writes_results_and_a_table(
    ttt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "time_to_target.json"
    data = ttt.main(["--quick", "--workloads", "digits_cnn", "digits_mlp", "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(data))
    assert data["meta"]["quick"] is True and data["meta"]["threads"] == 1
    expected = {"adamw", "sgd", "singd/diagonal/default", "singd/diagonal/fast"}
    assert set(data["results"]) == {"digits_cnn", "digits_mlp"}
    for workload in data["results"].values():
        assert workload["max_steps"] == 20 and workload["target"] == 0.97
        assert set(workload["optimizers"]) == expected
        for row in workload["optimizers"].values():
            assert len(row["runs"]) == 1 and len(row["tuning"]) == 1
            run = row["runs"][0]
            assert run["seconds"] > 0 and run["seconds_per_step"] > 0
            assert run["steps"] is None or run["steps"] == run["steps_run"] <= 20
            assert run["seconds_per_step"] == pytest.approx(run["seconds"] / run["steps_run"])
            assert 0.0 <= run["score"] <= 1.0
        assert workload["optimizers"]["adamw"]["seconds_per_step_vs_adamw"] == 1.0
    table = capsys.readouterr().out
    assert "| AdamW |" in table and "| SINGD diagonal (fast) |" in table


def test_steps_are_counted_to_the_first_evaluation_that_hits(ttt: ModuleType) -> None:
    import torch

    workload = dataclasses.replace(
        ttt.WORKLOADS["digits_mlp"], target=0.0, eval_every=5, max_steps=12
    )
    split = workload.load_split(True)

    def build(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01)

    hit = ttt.run_to_target(workload, split, build, seed=0)
    assert hit.steps == hit.steps_run == 5 and not hit.diverged
    missed = ttt.run_to_target(dataclasses.replace(workload, target=1.01), split, build, seed=0)
    assert missed.steps is None and missed.steps_run == 12 and missed.seconds > hit.seconds


def test_a_diverging_run_stops_and_counts_as_a_miss(ttt: ModuleType) -> None:
    import torch

    workload = dataclasses.replace(ttt.WORKLOADS["digits_mlp"], max_steps=50)
    split = workload.load_split(True)

    def build(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=1e6)

    run = ttt.run_to_target(workload, split, build, seed=0)
    assert run.diverged and run.steps is None


def test_medians_count_misses_as_infinitely_slow(ttt: ModuleType) -> None:
    assert ttt.median_or_none([30, None, 10]) == 30
    assert ttt.median_or_none([None, None, 10]) is None
    assert ttt.median_or_none([20, 40]) == 30


def test_the_language_model_is_a_workload_with_a_loss_target(ttt: ModuleType) -> None:
    workload = ttt.WORKLOADS["lm"]
    assert workload.target == -ttt.LM_TARGET_LOSS  # scores are higher-is-better
    assert "nats/char" in workload.target_text
    assert workload.singd_options == {"loss_average": "batch+sequence"}

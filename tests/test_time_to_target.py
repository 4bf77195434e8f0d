"""The time-to-target benchmark: its quick mode end to end, and its step counting."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
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
    expected = {"adamw", "sgd", "singd/defaults", "singd/diagonal/default", "singd/diagonal/fast"}
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


def test_singd_with_only_a_learning_rate_gets_nothing_else(
    ttt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(ttt, "SINGD", lambda model, **kwargs: calls.append(kwargs))
    candidate = next(c for c in ttt.candidates() if c.key == "singd/defaults")
    assert [s["lr"] for s in candidate.grid] == list(ttt.LR_GRID)
    adamw = next(c for c in ttt.candidates() if c.key == "adamw")
    assert adamw.grid == candidate.grid  # one learning-rate grid for both
    candidate.build(None, {"lr": 3e-3}, ttt.WORKLOADS["digits_mlp"])
    candidate.build(None, {"lr": 1e-2}, ttt.WORKLOADS["lm"])
    assert calls == [{"lr": 3e-3}, {"lr": 1e-2, "loss_average": "batch+sequence"}]


def test_named_singd_configurations_parse_and_bad_ones_are_refused(ttt: ModuleType) -> None:
    key, config = ttt.parse_singd_config('graft={"T": 1, "structures": ["diagonal", "dense"]}')
    assert key == "singd/graft" and config.options == {"T": 1, "structures": ("diagonal", "dense")}
    assert [s["lr"] for s in config.grid] == list(ttt.LR_GRID)
    _, fixed = ttt.parse_singd_config('fixed={"lr": 0.01}')
    assert fixed.grid == [{}]
    keys = [c.key for c in ttt.candidates(singd_configs={key: config})]
    assert "singd/graft" in keys and "singd/defaults" not in keys
    with pytest.raises(ValueError, match="NAME=JSON"):
        ttt.parse_singd_config('{"T": 1}')
    with pytest.raises(ValueError, match="object"):
        ttt.parse_singd_config("x=[1, 2]")


def test_a_workload_whose_package_is_missing_is_skipped(
    ttt: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = dataclasses.replace(ttt.WORKLOADS["digits_mlp"], name="absent")
    ttt.register_workload(dataclasses.replace(workload, missing=lambda: "no such package"))
    try:
        data = ttt.main(["--quick", "--workloads", "absent", "--output", str(tmp_path / "r.json")])
    finally:
        del ttt.WORKLOADS["absent"]
    assert data["results"] == {}
    assert "skipping workload absent: no such package" in capsys.readouterr().out


REAL_WORKLOADS = ("gpt2_lm", "llama_lm", "vit_digits", "resnet_digits")


def test_real_architectures_are_workloads_with_the_shared_optimizer_list(ttt: ModuleType) -> None:
    for name in REAL_WORKLOADS:
        workload = ttt.WORKLOADS[name]
        assert workload.optimizers == ttt.REAL_OPTIMIZERS
        assert set(workload.optimizers) <= {c.key for c in ttt.candidates()}
    assert ttt.WORKLOADS["gpt2_lm"].target == -ttt.GPT2_TARGET_LOSS
    assert ttt.WORKLOADS["resnet_digits"].target == ttt.RESNET_TARGET


def test_real_architectures_quick_mode(ttt: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    output = tmp_path / "time_to_target.json"
    data = ttt.main(
        [
            "--quick",
            "--workloads",
            "llama_lm",
            "resnet_digits",
            "--optimizers",
            "adamw",
            "singd/defaults",
            "--output",
            str(output),
        ]
    )
    assert set(data["results"]) == {"llama_lm", "resnet_digits"}
    assert data["meta"]["transformers"] is not None
    assert {"lr", "T", "structures"} <= set(data["meta"]["singd_constructor_defaults"])
    for workload in data["results"].values():
        assert set(workload["optimizers"]) == {"adamw", "singd/defaults"}
        for row in workload["optimizers"].values():
            run = row["runs"][0]
            assert run["steps_run"] == 20 and not run["diverged"]
    loss = -data["results"]["llama_lm"]["optimizers"]["adamw"]["runs"][0]["score"]
    assert 0.0 < loss < math.log(97)  # below the uniform guess over 97 tokens
    accuracy = data["results"]["resnet_digits"]["optimizers"]["adamw"]["runs"][0]["score"]
    assert 0.0 <= accuracy <= 1.0

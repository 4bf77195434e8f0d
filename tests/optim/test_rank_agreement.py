"""Two processes always reach the same decision, or the same clear error.

Every run of :mod:`tests.optim.fault_cases` gives the processes a reason to disagree
(a non-finite gradient on one process, a scaler's local finding, a layer used on one
process only, a different configuration, a checkpoint with pending curvature). Each
must end in bitwise-identical replicas equal to one process training on the whole
batches (float64, relative error below 1e-12), or in the same clear error on both
processes. All runs share one pair of spawned processes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.optim.distributed_cases import spawn
from tests.optim.fault_cases import Fault, run_fault, run_faults

MODES = [
    (wrapper, distribute)
    for wrapper in ("bare", "ddp", "fsdp")
    for distribute in ("replicate", "split")
]

#: Runs that must end like one process, with the number of steps skipped.
AGREE: dict[str, tuple[Fault, int]] = {
    **{
        f"nan-{w}-{d}": (Fault(f"nan-{w}-{d}", w, {"distribute": d}, nan_at=1), 1) for w, d in MODES
    },
    "nan-ddp-replicate-T1": (Fault("nan-ddp-replicate-T1", "ddp", {"T": 1}, nan_at=1), 1),
    "nan-bare-split-update-step": (
        Fault("nan-bare-split-update-step", options={"distribute": "split"}, nan_at=2),
        1,
    ),
    "overflow-bare-replicate": (Fault("overflow-bare-replicate", overflow=True, nan_at=1), 1),
    "scaler-bare-synchronized": (
        Fault("scaler-bare-synchronized", scaler=True, overflow=True, synchronize=True, nan_at=1),
        1,
    ),
    "scaler-ddp": (Fault("scaler-ddp", "ddp", scaler=True, overflow=True, nan_at=1), 1),
    "scaler-ddp-split": (
        Fault(
            "scaler-ddp-split",
            "ddp",
            {"distribute": "split"},
            scaler=True,
            overflow=True,
            nan_at=1,
        ),
        1,
    ),
    **{
        f"routed-{w}-{d}": (
            Fault(f"routed-{w}-{d}", w, {"distribute": d}, routed="functional"),
            0,
        )
        for w, d in MODES[:4]
    },
    "routed-linear-ddp": (Fault("routed-linear-ddp", "ddp", routed="linear"), 0),
}

#: Runs that must end in the same error on both processes: (run, words of the message).
ERRORS: dict[str, tuple[Fault, tuple[str, ...]]] = {
    "scaler-bare": (
        Fault("scaler-bare", scaler=True, overflow=True, nan_at=1),
        ("found_inf", "synchronize_gradients()"),
    ),
    "scaler-bare-split": (
        Fault(
            "scaler-bare-split",
            options={"distribute": "split"},
            scaler=True,
            overflow=True,
            nan_at=1,
        ),
        ("found_inf", "synchronize_gradients()"),
    ),
    "scaler-ddp-after-averaging": (
        Fault("scaler-ddp-after-averaging", "ddp", scaler=True, nan_at=1),
        ("found_inf", "1 of 2"),
    ),
    "mismatch-structures": (
        Fault(
            "mismatch-structures",
            options={"structures": ("dense", "triltoeplitz")},
            rank_options={1: {"structures": ("dense", "triutoeplitz")}},
        ),
        ("structures", "triltoeplitz", "triutoeplitz"),
    ),
    "mismatch-T": (Fault("mismatch-T", rank_options={1: {"T": 3}}), ("'T'", "2", "3")),
    "mismatch-lr": (Fault("mismatch-lr", rank_options={1: {"lr": 0.06}}), ("'lr'", "0.06")),
    "mismatch-damping": (
        Fault("mismatch-damping", rank_options={1: {"damping": 0.2}}),
        ("'damping'",),
    ),
    "mismatch-distribute": (
        Fault("mismatch-distribute", rank_options={1: {"distribute": "split"}}),
        ("distribute", "replicate", "split"),
    ),
    "mismatch-shapes": (Fault("mismatch-shapes", widths={1: 10}), ("shape", "9", "10")),
}

CHECKPOINT = Fault("checkpoint-pending", save_at=2)
FAULTS = [
    *(fault for fault, _ in AGREE.values()),
    *(fault for fault, _ in ERRORS.values()),
    CHECKPOINT,
]


@pytest.fixture(scope="module")
def results() -> dict[str, list[dict[str, Any]]]:
    per_rank = spawn(2, run_faults, FAULTS)
    return {fault.name: [r[fault.name] for r in per_rank] for fault in FAULTS}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=1e-30)
    return ((actual - expected).abs().max() / scale).item()


def _same(first: Any, second: Any) -> bool:
    """Whether two nested checkpoint entries are equal, tensors bitwise."""
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and torch.equal(first, second)
    if isinstance(first, dict):
        return (
            isinstance(second, dict)
            and first.keys() == second.keys()
            and all(_same(v, second[k]) for k, v in first.items())
        )
    if isinstance(first, list | tuple):
        return (
            type(first) is type(second)
            and len(first) == len(second)
            and all(_same(a, b) for a, b in zip(first, second, strict=True))
        )
    return first == second


def _assert_replicas(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert rank["error"] is None, rank.get("traceback")
    first, second = (r["state"] for r in ranks)
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), f"{key} differs between the processes"


def _assert_equals_one_process(state: dict[str, Any], expected: dict[str, Any]) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        error = _relative_error(state[key], value)
        assert error < 1e-12, f"{key}: relative error {error:.2e}"


@pytest.mark.parametrize("name", list(AGREE))
def test_processes_agree_and_equal_one_process(name: str, results: dict[str, Any]) -> None:
    fault, skipped = AGREE[name]
    ranks = results[name]
    _assert_replicas(ranks)
    single = run_fault(fault)
    assert single["error"] is None, single.get("traceback")
    assert [r["skipped"] for r in ranks] == [skipped, skipped] == [single["skipped"]] * 2
    if fault.scaler:
        assert [r["scale"] for r in ranks] == [single["scale"]] * 2
    _assert_equals_one_process(ranks[0]["state"], single["state"])


@pytest.mark.parametrize("name", list(ERRORS))
def test_processes_end_in_the_same_clear_error(name: str, results: dict[str, Any]) -> None:
    _, words = ERRORS[name]
    errors = [r["error"] for r in results[name]]
    assert errors[0] is not None and errors[0] == errors[1], errors
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"


def test_no_unrecorded_warning_for_a_layer_recorded_on_another_process(
    results: dict[str, Any],
) -> None:
    for name in ("routed-linear-ddp", "routed-ddp-replicate", "routed-bare-split"):
        for rank in results[name]:
            assert not [w for w in rank["warnings"] if "no curvature was recorded" in w], name


def test_a_checkpoint_with_pending_curvature_is_the_same_on_every_process(
    results: dict[str, Any],
) -> None:
    ranks = results[CHECKPOINT.name]
    _assert_replicas(ranks)
    for rank in ranks:
        assert any("since the last step" in w for w in rank["save_warnings"])
    saved = [r["checkpoint"]["singd"] for r in ranks]
    assert saved[0]["steps"] == saved[1]["steps"] == CHECKPOINT.save_at
    for name, block in saved[0]["blocks"].items():
        assert "H_K" not in block, name
    assert _same(saved[0], saved[1])
    single = run_fault(CHECKPOINT)
    for rank in ranks:
        _assert_equals_one_process(rank["resumed"], single["state"])
        _assert_equals_one_process(rank["state"], single["state"])


@pytest.mark.parametrize(
    ("function", "options", "shape"),
    [
        ("linear", {}, (4, 3)),
        ("embedding", {}, (6, 3)),
        ("conv1d", {"stride": 2, "padding": 1, "dilation": 1}, (4, 2, 3)),
        ("conv2d", {"stride": (1, 2), "padding": "same", "dilation": (2, 1)}, (4, 2, 2, 3)),
        ("conv3d", {"groups": 2, "padding": (0, 1, 2)}, (4, 1, 1, 2, 3)),
    ],
)
def test_a_chosen_map_survives_its_numeric_encoding(
    function: str, options: dict[str, Any], shape: tuple[int, ...]
) -> None:
    from singd_opt.blocks.deferred import decode_layer, encode_layer, layer_of_call
    from singd_opt.layers import ParameterRows

    param = ParameterRows(torch.nn.Parameter(torch.zeros(shape)))
    layer = layer_of_call(param, function, options)
    code = encode_layer(layer)
    decoded = decode_layer(param, code)
    assert type(decoded) is type(layer)
    assert getattr(decoded, "geometry", None) == getattr(layer, "geometry", None)
    assert torch.equal(encode_layer(decoded), code)
    assert not encode_layer(None).any()


def test_the_first_difference_of_two_set_ups_is_named() -> None:
    from singd_opt import SINGD
    from singd_opt.distributed.agreement import describe_setup, first_difference

    def description(structures: tuple[str, str]) -> list[tuple[str, str]]:
        model = torch.nn.Sequential(torch.nn.Linear(3, 4))
        optimizer = SINGD(model, structures=structures)
        return describe_setup(optimizer.blocks, optimizer.param_groups, {"distribute": "split"})

    lower = description(("dense", "triltoeplitz"))
    assert lower == description(("dense", "triltoeplitz"))
    message = first_difference([lower, description(("dense", "triutoeplitz"))])
    assert message.startswith("parameter group 0 'structures' is ('dense', 'triltoeplitz')")
    assert message.endswith("('dense', 'triutoeplitz') on process 1")
    shorter = first_difference([lower, lower[:-1]])
    assert "number of blocks" in shorter and "(nothing)" in shorter

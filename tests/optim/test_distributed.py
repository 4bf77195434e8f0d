"""Two processes (gloo, CPU) end where one process on the whole batches ends.

All cases run in one pair of spawned processes (see
:mod:`tests.optim.distributed_cases`); each is compared with the same training in this
process on the whole batches: parameters, ``K``, ``C`` and momenta, to a relative
error below 1e-12 in float64 and 1e-5 in float32.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.optim.distributed_cases import Case, run_case, run_cases, spawn

STRUCTURES = [
    ("dense", "dense"),
    ("diagonal", "block3diagonal"),
    ("hierarchical3_2", "triltoeplitz"),
    ("triutoeplitz", "triltopleftdiag"),
    ("trilbottomrightdiag", "tril"),
    ("triutopleftdiag", "triu"),
    ("transposedhierarchical3_2", "triubottomrightdiag"),
]

CASES = [
    *(Case(f"bare-{s[0]}-{s[1]}", options={"structures": s}) for s in STRUCTURES),
    *(
        Case(f"split-{s[0]}-{s[1]}", options={"structures": s, "distribute": "split"})
        for s in STRUCTURES
    ),
    Case("split-warm-start", options={"distribute": "split", "warm_start": True}),
    *(
        Case(f"recommended-{mode}", options={"defaults": "recommended", "distribute": mode})
        for mode in ("replicate", "split")
    ),
    Case("ddp", wrapper="ddp"),
    Case("ddp-split", wrapper="ddp", options={"distribute": "split"}),
    Case("sequence-batch+sequence", model="sequence", options={"loss_average": "batch+sequence"}),
    Case("sequence-reduce", model="sequence", options={"kfac_approx": "reduce"}),
    Case("sum-loss", options={"loss_average": None, "lr": 0.005}),
    Case("kfac-like-T1", options={"kfac_like": True, "alpha1": 0.0, "T": 1}),
    Case("uneven", shards=(5, 11)),
    Case(
        "uneven-split-sum",
        shards=(3, 13),
        options={"loss_average": None, "lr": 0.005, "distribute": "split"},
    ),
    Case("accumulation", micro_batches=2, shards=(6, 10)),
    Case("ddp-accumulation", wrapper="ddp", micro_batches=3),
    Case("transformer", model="transformer"),
    Case(
        "transformer-ddp-split", model="transformer", wrapper="ddp", options={"distribute": "split"}
    ),
    Case("fsdp", wrapper="fsdp"),
    Case("fsdp-split", wrapper="fsdp", options={"distribute": "split"}),
    Case("fsdp-transformer", model="transformer", wrapper="fsdp"),
    *(
        Case(f"packed-{wrapper}-{mode}", model="packed", wrapper=wrapper, options=options)
        for wrapper, mode in (("bare", "replicate"), ("ddp", "split"), ("fsdp", "replicate"))
        for options in [{"packed_projections": "split", "distribute": mode}]
    ),
    Case("float32", dtype=torch.float32, options={"structures": ("dense", "hierarchical3_2")}),
    Case("resume", resume_at=3),
    Case(
        "resume-split-transformer",
        model="transformer",
        resume_at=3,
        options={"distribute": "split"},
    ),
    Case("resume-fsdp-transformer", model="transformer", wrapper="fsdp", resume_at=3),
    Case("from-single-ddp", wrapper="ddp", resume_at=3, resume_from_single=True),
    Case(
        "from-single-fsdp-transformer",
        model="transformer",
        wrapper="fsdp",
        resume_at=3,
        resume_from_single=True,
    ),
]
#: Cases whose checkpoint (taken with two processes) is resumed by one process.
TO_SINGLE = ["resume-split-transformer", "resume-fsdp-transformer"]


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    per_rank = spawn(2, run_cases, CASES)
    return {case.name: [r[case.name] for r in per_rank] for case in CASES}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=1e-30)
    return ((actual - expected).abs().max() / scale).item()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_two_processes_equal_one(case: Case, results: dict[str, Any]) -> None:
    for rank_result in results[case.name]:
        assert "error" not in rank_result, rank_result.get("error")
    expected = run_case(case)["state"]
    tolerance = 1e-12 if case.dtype == torch.float64 else 1e-5
    for rank, rank_result in enumerate(results[case.name]):
        state = rank_result["state"]
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            error = _relative_error(state[key], value)
            assert error < tolerance, f"process {rank}, {key}: relative error {error:.2e}"


def test_packed_maps_are_split_on_every_process(results: dict[str, Any]) -> None:
    for name in ("packed-bare-replicate", "packed-ddp-split", "packed-fsdp-replicate"):
        for rank_result in results[name]:
            factors = {key for key in rank_result["state"] if key.startswith("Ks:")}
            assert factors == {
                "Ks:qkv.0",
                "Ks:qkv.1",
                "Ks:qkv.2",
                "Ks:mix.gate",
                "Ks:mix.up",
                "Ks:per_head.a",
                "Ks:per_head.b",
                "Ks:head",
            }


def test_collectives_per_step_do_not_grow_with_the_layers(results: dict[str, Any]) -> None:
    """At most one collective per dtype and purpose in a step, whatever the layer count."""
    # bare MLP: the blocks' decisions before their first update (step 0 only), the
    # gradients on every step, the curvature on update steps (T = 2), the skip votes
    assert results["bare-dense-dense"][0]["calls"] == [4, 2, 3, 2, 3]
    # split: one all-gather of the owners' results (and the votes) per step
    assert results["split-dense-dense"][0]["calls"] == [4, 2, 3, 2, 3]
    # DDP averages the gradients itself
    assert results["ddp"][0]["calls"] == [3, 1, 2, 1, 2]
    # the transformer has 15 blocks and still the same number of collectives
    assert results["transformer"][0]["calls"] == [4, 2, 3, 2, 3]


@pytest.mark.parametrize("name", TO_SINGLE)
def test_a_checkpoint_of_two_processes_resumes_in_one(name: str, results: dict[str, Any]) -> None:
    case = next(c for c in CASES if c.name == name)
    assert "error" not in results[name][0], results[name][0].get("error")
    checkpoint = results[name][0]["checkpoint"]
    single = run_case(case, checkpoint=checkpoint)["state"]
    expected = run_case(case)["state"]
    for key, value in expected.items():
        assert _relative_error(single[key], value) < 1e-12, key

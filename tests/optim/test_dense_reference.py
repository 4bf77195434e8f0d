"""SINGD against an independent dense re-implementation of its update, in float64.

:class:`~tests.optim.dense_reference_impl.DenseSINGD` keeps every pre-conditioner
factor as a dense matrix and applies each structure as an explicit projection. After
every step the parameters, ``K``, ``C`` and (where stored) ``m_K``, ``m_C`` of
:class:`singd_opt.SINGD` must agree with it to near machine precision.

Layer widths are chosen so that structure boundaries matter: ``d_K = 33`` splits into
``30 + 3`` for ``block30diagonal`` and into ``15 + 3 + 15`` for
``hierarchical15_15``; ``block3diagonal`` gets exact and ragged block counts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from tests.optim.dense_reference_impl import (
    DenseSINGD,
    pattern_mask,
    project,
    single_intra_op_thread,
)

DTYPE = torch.float64
RTOL, ATOL = 1e-10, 1e-12
STEPS = 10

ALL_STRUCTURES = [
    "dense",
    "diagonal",
    "block30diagonal",
    "block3diagonal",
    "hierarchical15_15",
    "hierarchical3_2",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
    "tril",
    "triu",
]

# SINGD proper: Riemannian momentum, parameter momentum, weight decay, T = 1.
SINGD_CONFIG = {
    "T": 1,
    "kfac_like": False,
    "normalize_lr_cov": False,
    "alpha1": 0.5,
    "momentum": 0.9,
    "weight_decay": 1e-2,
    "lr": 0.05,
    "lr_cov": 0.1,
    "damping": 0.1,
}
# IKFAC variant with normalised covariance learning rate, sparse updates, no momentum.
IKFAC_CONFIG = {
    "T": 3,
    "kfac_like": True,
    "normalize_lr_cov": True,
    "alpha1": 0.0,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "lr": 0.05,
    "lr_cov": 0.3,
    "damping": 0.01,
}


# ------------------------------------------------------------------- harness


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with single_intra_op_thread():
        yield


def mlp() -> nn.Module:
    """Three linear layers with d_K = 33, 21, 16 and d_C = 20, 16, 3.

    Returns:
        The model (the last layer has no bias).
    """
    return nn.Sequential(
        nn.Linear(32, 20),
        nn.Tanh(),
        nn.Linear(20, 16),
        nn.Tanh(),
        nn.Linear(16, 3, bias=False),
    )


def sequence_mlp() -> nn.Module:
    """Linear layers applied to ``(batch, sequence, features)`` inputs.

    Returns:
        The model.
    """
    return nn.Sequential(nn.Linear(7, 18), nn.Tanh(), nn.Linear(18, 4))


def cnn2d() -> nn.Module:
    """Two 2d convolutions (one strided and grouped) and a linear head.

    Expects inputs of shape ``(batch, 3, 6, 6)``.

    Returns:
        The model.
    """
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 4, 2, stride=2, groups=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(36, 3),
    )


def cnn1d() -> nn.Module:
    """Two 1d convolutions (one dilated, one strided without bias) and a linear head.

    Expects inputs of shape ``(batch, 3, 10)``.

    Returns:
        The model.
    """
    return nn.Sequential(
        nn.Conv1d(3, 5, 3, padding=2, dilation=2),
        nn.Tanh(),
        nn.Conv1d(5, 4, 2, stride=2, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(20, 3),
    )


def make_batches(
    input_shape: tuple[int, ...], target_shape: tuple[int, ...], steps: int = STEPS
) -> list[tuple[Tensor, Tensor]]:
    """Draw a fresh random batch for every step.

    Args:
        input_shape: Shape of one input batch.
        target_shape: Shape of one target batch.
        steps: Number of batches.

    Returns:
        A list of ``(input, target)`` pairs.
    """
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(input_shape, generator=generator, dtype=DTYPE),
            torch.randn(target_shape, generator=generator, dtype=DTYPE),
        )
        for _ in range(steps)
    ]


def squared_error(output: Tensor, target: Tensor, loss_average: str | None) -> Tensor:
    """Squared error, summed or averaged consistently with ``loss_average``.

    Args:
        output: Model output, ``(batch, ..., features)``.
        target: Target of the same shape.
        loss_average: ``None`` (sum), ``"batch"`` or ``"batch+sequence"``.

    Returns:
        The scalar loss.
    """
    total = ((output - target) ** 2).sum()
    if loss_average is None:
        return total
    if loss_average == "batch":
        return total / output.shape[0]
    return total / output.shape[:-1].numel()


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    """Compare with the float64 tolerances of this module.

    Args:
        actual: Value from the optimizer under test.
        expected: Value from the dense re-implementation.
        what: Description used in the failure message.
    """
    if actual.shape == expected.shape and torch.allclose(actual, expected, rtol=RTOL, atol=ATOL):
        return  # fast path; the call below explains any failure
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def compare_state(
    step: int, model: nn.Module, opt: SINGD, model_ref: nn.Module, ref: DenseSINGD
) -> None:
    """Compare parameters and pre-conditioner state after a step.

    Args:
        step: Index of the step just taken (for messages).
        model: Model trained by the optimizer under test.
        opt: The optimizer under test.
        model_ref: Model trained by the dense re-implementation.
        ref: The dense re-implementation.
    """
    for (name, param), param_ref in zip(
        model.named_parameters(), model_ref.parameters(), strict=True
    ):
        assert_close(param.detach(), param_ref.detach(), f"step {step}, parameter {name}")
    for name in ref.layers:
        assert_close(opt.Ks[name].to_dense(), ref.K[name], f"step {step}, K[{name}]")
        assert_close(opt.Cs[name].to_dense(), ref.C[name], f"step {step}, C[{name}]")
        # m_K, m_C carry over between updates only with Riemannian momentum
        if ref.alpha1 != 0.0:
            assert_close(opt.m_Ks[name].to_dense(), ref.m_K[name], f"step {step}, m_K[{name}]")
            assert_close(opt.m_Cs[name].to_dense(), ref.m_C[name], f"step {step}, m_C[{name}]")


def run_and_compare(
    build_model: Callable[[], nn.Module],
    batches: list[tuple[Tensor, Tensor]],
    loss_average: str | None = "batch",
    **hyperparameters: object,
) -> tuple[SINGD, DenseSINGD]:
    """Train two copies of a model, one with each optimizer, comparing every step.

    Args:
        build_model: Creates the model (converted to float64 here).
        batches: One ``(input, target)`` pair per step.
        loss_average: Passed to both optimizers and used for the loss.
        **hyperparameters: Further constructor arguments for both optimizers.

    Returns:
        The optimizer under test and the dense re-implementation after training.
    """
    if loss_average is None:
        # A summed loss scales the gradients, and with them H_C, by the number of terms;
        # smaller learning rates keep the trajectory in a well-conditioned range.
        hyperparameters = {
            **hyperparameters,
            "lr": 0.1 * hyperparameters["lr"],
            "lr_cov": 0.1 * hyperparameters["lr_cov"],
        }
    torch.manual_seed(0)
    model = build_model().to(DTYPE)
    model_ref = copy.deepcopy(model)
    opt = SINGD(
        model,
        loss_average=loss_average,
        **hyperparameters,
        defaults="reference",
        train_all_parameters=True,
    )
    ref = DenseSINGD(model_ref, loss_average=loss_average, **hyperparameters)
    for step, (inputs, target) in enumerate(batches):
        for net, optimizer in ((model, opt), (model_ref, ref)):
            optimizer.zero_grad()
            squared_error(net(inputs), target, loss_average).backward()
            optimizer.step()
        compare_state(step, model, opt, model_ref, ref)
    return opt, ref


# -------------------------------------------------------- the projections
def test_projection_examples():
    """Spot-check the hand-written projections on a 5 x 5 symmetric matrix."""
    S = torch.arange(25, dtype=DTYPE).reshape(5, 5)
    S = S + S.T
    torch.testing.assert_close(project("diagonal", S), torch.diag(torch.diagonal(S)))
    expected = torch.zeros_like(S)
    expected[:3, :3], expected[3:, 3:] = S[:3, :3], S[3:, 3:]
    torch.testing.assert_close(project("block3diagonal", S), expected)
    torch.testing.assert_close(project("tril", S), torch.tril(2 * S) - torch.diag(S.diagonal()))
    # triltopleftdiag: diagonal plus the last row (off-diagonal entries doubled)
    expected = torch.diag(S.diagonal())
    expected[4, :4] = 2 * S[4, :4]
    torch.testing.assert_close(project("triltopleftdiag", S), expected)
    # hierarchical2_1 of size 5: [[A, B], [0, diag, 0], [0, D, E]] with A 2x2, E 1x1
    expected = torch.zeros_like(S)
    expected[:2, :2], expected[:2, 2:] = S[:2, :2], 2 * S[:2, 2:]
    expected[2, 2], expected[3, 3], expected[4, 4] = S[2, 2], S[3, 3], S[4, 4]
    expected[4, 2:4] = 2 * S[4, 2:4]
    torch.testing.assert_close(project("hierarchical2_1", S), expected)
    # triltoeplitz: coefficient k is the mean of the two k-th off-diagonals
    coeffs = [S.diagonal(-k).sum() * (1 if k == 0 else 2) / (5 - k) for k in range(5)]
    expected = sum(c * torch.diag(torch.ones(5 - k, dtype=DTYPE), -k) for k, c in enumerate(coeffs))
    torch.testing.assert_close(project("triltoeplitz", S), expected)
    torch.testing.assert_close(project("triutoeplitz", S), expected.T)


@pytest.mark.parametrize("name", ALL_STRUCTURES)
def test_projection_preserves_trace_and_pattern(name: str):
    """Every projection keeps the trace and lands in the structure's pattern."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(23, 23, generator=generator, dtype=DTYPE)
    S = X @ X.T
    P = project(name, S)
    torch.testing.assert_close(P.trace(), S.trace())
    if "toeplitz" not in name:
        assert not P[~pattern_mask(name, 23)].any()
        # the structure's entries absorb the whole symmetric matrix on the pattern
        torch.testing.assert_close(
            P.sum(), (S * (pattern_mask(name, 23) | pattern_mask(name, 23).T)).sum()
        )


# ----------------------------------------------------------- the optimizer
@pytest.mark.parametrize("config", [SINGD_CONFIG, IKFAC_CONFIG], ids=["singd", "ikfac"])
@pytest.mark.parametrize("structure", ALL_STRUCTURES)
def test_structures(structure: str, config: dict):
    """Every structure, for both factors, with SINGD and IKFAC-like settings."""
    batches = make_batches((8, 32), (8, 3))
    run_and_compare(mlp, batches, structures=(structure, structure), **config)


@pytest.mark.parametrize(
    "structures",
    [
        ("tril", "diagonal"),
        ("hierarchical3_2", "triutoeplitz"),
        ("triltoeplitz", "block3diagonal"),
        ("triubottomrightdiag", "triltopleftdiag"),
        ("dense", "trilbottomrightdiag"),
        ("triutopleftdiag", "hierarchical15_15"),
    ],
)
def test_mixed_structures(structures: tuple[str, str]):
    """Different structures for ``K`` and ``C``."""
    batches = make_batches((8, 32), (8, 3))
    run_and_compare(mlp, batches, structures=structures, **SINGD_CONFIG)


@pytest.mark.parametrize("normalize_lr_cov", [False, True, "spectral"])
@pytest.mark.parametrize("kfac_like", [False, True])
@pytest.mark.parametrize("T", [1, 3])
def test_hyperparameters(T: int, kfac_like: bool, normalize_lr_cov: bool | str):
    """Update frequency, KFAC-like update and normalised ``lr_cov`` in all combinations."""
    batches = make_batches((8, 32), (8, 3))
    run_and_compare(
        mlp,
        batches,
        structures=("hierarchical3_2", "dense"),
        T=T,
        kfac_like=kfac_like,
        normalize_lr_cov=normalize_lr_cov,
        alpha1=0.0 if kfac_like else 0.5,
        momentum=0.0 if T == 1 else 0.9,
        weight_decay=0.0 if kfac_like else 5e-2,
        lr=0.05,
        lr_cov=0.2,
        damping=0.05,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("normalize_lr_cov", [False, True])
def test_kfac_like_ignores_alpha1(normalize_lr_cov: bool):
    """With ``kfac_like=True`` a non-zero ``alpha1`` is treated as zero everywhere."""
    batches = make_batches((8, 32), (8, 3))
    config = {**IKFAC_CONFIG, "alpha1": 0.5, "normalize_lr_cov": normalize_lr_cov}
    run_and_compare(mlp, batches, structures=("triltopleftdiag", "dense"), **config)


def test_lr_cov_schedule():
    """A callable ``lr_cov`` is evaluated at the (zero-based) step counter."""
    batches = make_batches((8, 32), (8, 3))
    config = {**SINGD_CONFIG, "T": 2, "lr_cov": lambda step: 0.3 / (1.0 + step)}
    run_and_compare(mlp, batches, structures=("triutoeplitz", "tril"), **config)


def test_large_step_counts_stay_in_sync():
    """Twenty steps with ``T = 4``: updates at steps 0, 4, 8, 12, 16."""
    batches = make_batches((8, 32), (8, 3), steps=20)
    config = {**SINGD_CONFIG, "T": 4}
    run_and_compare(mlp, batches, structures=("block3diagonal", "hierarchical3_2"), **config)


@pytest.mark.parametrize(
    ("structures", "kfac_approx", "loss_average"),
    [
        *[
            (("dense", "dense"), kfac_approx, loss_average)
            for kfac_approx in ("expand", "reduce")
            for loss_average in (None, "batch", "batch+sequence")
        ],
        (("block3diagonal", "triltoeplitz"), "expand", "batch+sequence"),
        (("block3diagonal", "triltoeplitz"), "reduce", None),
    ],
)
def test_sequence_inputs(structures: tuple[str, str], kfac_approx: str, loss_average: str | None):
    """Linear layers on ``(batch, sequence, features)`` inputs: expand/reduce, loss scalings."""
    batches = make_batches((3, 5, 7), (3, 5, 4))
    run_and_compare(
        sequence_mlp,
        batches,
        loss_average=loss_average,
        kfac_approx=kfac_approx,
        structures=structures,
        **SINGD_CONFIG,
    )


@pytest.mark.parametrize("loss_average", [None, "batch", "batch+sequence"])
@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_conv2d(kfac_approx: str, loss_average: str | None):
    """2d convolutions (padding, stride, groups): expand/reduce, loss scalings."""
    batches = make_batches((4, 3, 6, 6), (4, 3))
    run_and_compare(
        cnn2d,
        batches,
        loss_average=loss_average,
        kfac_approx=kfac_approx,
        structures=("dense", "dense"),
        **SINGD_CONFIG,
    )


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_conv2d_structured(kfac_approx: str):
    """2d convolutions with structured factors and the IKFAC-like update."""
    batches = make_batches((4, 3, 6, 6), (4, 3))
    run_and_compare(
        cnn2d,
        batches,
        kfac_approx=kfac_approx,
        structures=("hierarchical3_2", "triutoeplitz"),
        **IKFAC_CONFIG,
    )


@pytest.mark.parametrize("loss_average", [None, "batch", "batch+sequence"])
@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_conv1d(kfac_approx: str, loss_average: str | None):
    """1d convolutions (padding, dilation, stride, no bias): expand/reduce, loss scalings."""
    batches = make_batches((4, 3, 10), (4, 3))
    run_and_compare(
        cnn1d,
        batches,
        loss_average=loss_average,
        kfac_approx=kfac_approx,
        structures=("tril", "diagonal"),
        **SINGD_CONFIG,
    )

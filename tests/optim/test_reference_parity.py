"""Numerical parity with the published ``singd`` 0.0.5, and where the two must differ.

* In float32, :class:`singd_opt.SINGD` reproduces the reference's parameters and
  pre-conditioner factors after ten steps on a small MLP, a small CNN and linear
  layers on sequences, for the structures the reference supports correctly.
* The reference's block-diagonal structure multiplies by ``K`` where ``K^T`` is
  needed (``rmatmat`` returns ``K @ X`` and ``from_inner()`` returns ``K K^T``).
  For layers of width at most 30, ``block30diagonal`` is a single dense block, so
  :class:`singd_opt.SINGD` must reproduce its own ``dense`` trajectory, while the
  reference does not. ``hierarchical15_15`` (one dense block on layers of width at
  most 15) must reproduce the ``dense`` trajectory as well.
* The dense re-implementation used by ``test_dense_reference.py`` agrees with the
  reference in float64 (after allowing float64 in the reference's dtype helper),
  and with the reference's block-diagonal structure once its transposes are fixed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from tests.optim.dense_reference_impl import DenseSINGD, single_intra_op_thread
from tests.optim.test_dense_reference import (
    IKFAC_CONFIG,
    SINGD_CONFIG,
    cnn2d,
    mlp,
    sequence_mlp,
    squared_error,
)

reference_optimizer = pytest.importorskip("singd.optim.optimizer")

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore:Calling naive implementation"),
]

ReferenceSINGD = reference_optimizer.SINGD

STEPS = 10
RTOL32, ATOL32 = 1e-5, 1e-6
PARITY_STRUCTURES = ["dense", "diagonal", "hierarchical15_15", "triltoeplitz", "triutoeplitz"]

# Milder settings for the convolution and sequence models keep their float32
# trajectories well conditioned, so rounding differences stay near 1e-7.
MILD_SINGD_CONFIG = {**SINGD_CONFIG, "lr": 0.02, "lr_cov": 0.05}
MILD_IKFAC_CONFIG = {**IKFAC_CONFIG, "lr": 0.02, "lr_cov": 0.1, "damping": 0.1}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with single_intra_op_thread():
        yield


def make_batches(
    input_shape: tuple[int, ...], target_shape: tuple[int, ...], dtype: torch.dtype
) -> list[tuple[Tensor, Tensor]]:
    """Draw one random ``(input, target)`` batch per step.

    Args:
        input_shape: Shape of an input batch.
        target_shape: Shape of a target batch.
        dtype: Data type of the batches.

    Returns:
        ``STEPS`` pairs.
    """
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(input_shape, generator=generator, dtype=torch.float64).to(dtype),
            torch.randn(target_shape, generator=generator, dtype=torch.float64).to(dtype),
        )
        for _ in range(STEPS)
    ]


def train(
    optimizer_cls: Callable,
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    loss_average: str | None = "batch",
    **hyperparameters: object,
) -> object:
    """Train ``model`` in place on ``batches``, one optimizer step per batch.

    Args:
        optimizer_cls: Optimizer class taking the model as first argument.
        model: The model.
        batches: ``(input, target)`` pairs.
        loss_average: Passed to the optimizer and used for the loss.
        **hyperparameters: Further optimizer arguments.

    Returns:
        The optimizer.
    """
    if optimizer_cls is SINGD:  # the reference's defaults for every argument not given
        hyperparameters = {"defaults": "reference", **hyperparameters}
    optimizer = optimizer_cls(model, loss_average=loss_average, **hyperparameters)
    for inputs, target in batches:
        optimizer.zero_grad()
        squared_error(model(inputs), target, loss_average).backward()
        optimizer.step()
    return optimizer


def train_pair(
    build_model: Callable[[], nn.Module],
    batches: list[tuple[Tensor, Tensor]],
    optimizer_classes: tuple[Callable, Callable],
    dtype: torch.dtype,
    **hyperparameters: object,
) -> tuple[nn.Module, object, nn.Module, object]:
    """Train two identical copies of a model with two optimizers.

    Args:
        build_model: Creates the model.
        batches: ``(input, target)`` pairs.
        optimizer_classes: The two optimizer classes.
        dtype: Data type of the model.
        **hyperparameters: Arguments for both optimizers.

    Returns:
        ``(model_1, optimizer_1, model_2, optimizer_2)``.
    """
    torch.manual_seed(0)
    model = build_model().to(dtype)
    model_2 = copy.deepcopy(model)
    opt = train(optimizer_classes[0], model, batches, **hyperparameters)
    opt_2 = train(optimizer_classes[1], model_2, batches, **hyperparameters)
    return model, opt, model_2, opt_2


def dense_factors(optimizer: object) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Return an optimizer's ``K`` and ``C`` factors as dense matrices.

    Args:
        optimizer: A SINGD optimizer (``Ks``, ``Cs`` of structured matrices) or the
            dense re-implementation (``K``, ``C`` of tensors).

    Returns:
        Dictionaries from layer name to dense ``K`` and dense ``C``.
    """
    if isinstance(optimizer, DenseSINGD):
        return optimizer.K, optimizer.C
    Ks = {name: K.to_dense() for name, K in optimizer.Ks.items()}
    Cs = {name: C.to_dense() for name, C in optimizer.Cs.items()}
    return Ks, Cs


def assert_same_results(
    model: nn.Module,
    opt: object,
    model_2: nn.Module,
    opt_2: object,
    rtol: float,
    atol: float,
) -> None:
    """Compare parameters and pre-conditioner factors of two trained models.

    Args:
        model: First trained model.
        opt: Its optimizer.
        model_2: Second trained model.
        opt_2: Its optimizer.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
    """
    for (name, param), param_2 in zip(model.named_parameters(), model_2.parameters(), strict=True):
        torch.testing.assert_close(
            param.detach(),
            param_2.detach(),
            rtol=rtol,
            atol=atol,
            msg=lambda m, n=name: f"parameter {n}: {m}",
        )
    for kind, factors, factors_2 in zip(
        "KC", dense_factors(opt), dense_factors(opt_2), strict=True
    ):
        assert factors.keys() == factors_2.keys()
        for name in factors:
            torch.testing.assert_close(
                factors[name],
                factors_2[name],
                rtol=rtol,
                atol=atol,
                msg=lambda m, n=name, k=kind: f"{k} of layer {n}: {m}",
            )


def max_difference(model: nn.Module, model_2: nn.Module) -> float:
    """Return the largest absolute parameter difference between two models.

    Args:
        model: First model.
        model_2: Second model.

    Returns:
        The largest entry-wise difference.
    """
    return max(
        (param - param_2).abs().max().item()
        for param, param_2 in zip(model.parameters(), model_2.parameters(), strict=True)
    )


# ------------------------------------------------------ float32 parity
@pytest.mark.parametrize(
    "config",
    [SINGD_CONFIG, IKFAC_CONFIG, {**SINGD_CONFIG, "T": 3, "normalize_lr_cov": True}],
    ids=["singd", "ikfac", "singd-T3-normalized"],
)
@pytest.mark.parametrize("structure", PARITY_STRUCTURES)
def test_mlp_parity(structure: str, config: dict):
    """MLP with d_K = 33 (every hierarchical15_15 region in use) and a bias-free layer."""
    batches = make_batches((8, 32), (8, 3), torch.float32)
    results = train_pair(
        mlp,
        batches,
        (SINGD, ReferenceSINGD),
        torch.float32,
        structures=(structure, structure),
        **config,
    )
    assert_same_results(*results, rtol=RTOL32, atol=ATOL32)


@pytest.mark.parametrize(
    ("kfac_approx", "config"),
    [("expand", MILD_SINGD_CONFIG), ("reduce", MILD_IKFAC_CONFIG)],
    ids=["expand-singd", "reduce-ikfac"],
)
@pytest.mark.parametrize("structure", PARITY_STRUCTURES)
def test_cnn_parity(structure: str, kfac_approx: str, config: dict):
    """Padded, strided and grouped 2d convolutions with a linear head.

    KFAC-expand runs with SINGD's update at ``T = 1``, KFAC-reduce with the
    KFAC-like update, ``T = 3`` and normalised ``lr_cov``.
    """
    batches = make_batches((4, 3, 6, 6), (4, 3), torch.float32)
    results = train_pair(
        cnn2d,
        batches,
        (SINGD, ReferenceSINGD),
        torch.float32,
        kfac_approx=kfac_approx,
        structures=(structure, structure),
        **config,
    )
    assert_same_results(*results, rtol=RTOL32, atol=ATOL32)


@pytest.mark.parametrize("loss_average", ["batch", "batch+sequence"])
@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
@pytest.mark.parametrize("structures", [("dense", "dense"), ("triltoeplitz", "hierarchical15_15")])
def test_sequence_parity(structures: tuple[str, str], kfac_approx: str, loss_average: str):
    """Linear layers on ``(batch, sequence, features)`` inputs."""
    batches = make_batches((3, 5, 7), (3, 5, 4), torch.float32)
    results = train_pair(
        sequence_mlp,
        batches,
        (SINGD, ReferenceSINGD),
        torch.float32,
        loss_average=loss_average,
        kfac_approx=kfac_approx,
        structures=structures,
        **MILD_IKFAC_CONFIG,
    )
    assert_same_results(*results, rtol=RTOL32, atol=ATOL32)


# ------------------------------------- where the reference is wrong
def narrow_mlp(width: int) -> Callable[[], nn.Module]:
    """Return a factory for an MLP whose factors are at most ``width`` wide.

    Args:
        width: Largest dimension: ``d_K = width`` for both layers (bias included),
            ``d_C = width - 1`` and ``3``.

    Returns:
        A function creating the model.
    """

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(width - 1, width - 1), nn.Tanh(), nn.Linear(width - 1, 3))

    return build


@pytest.mark.parametrize("config", [SINGD_CONFIG, IKFAC_CONFIG], ids=["singd", "ikfac"])
@pytest.mark.parametrize(
    ("structure", "width"), [("block30diagonal", 30), ("hierarchical15_15", 15)]
)
def test_single_block_structures_match_dense(structure: str, width: int, config: dict):
    """A structure that is one dense block at these widths follows the dense trajectory."""
    batches = make_batches((8, width - 1), (8, 3), torch.float64)
    torch.manual_seed(0)
    model = narrow_mlp(width)().to(torch.float64)
    model_dense = copy.deepcopy(model)
    opt = train(SINGD, model, batches, structures=(structure, structure), **config)
    opt_dense = train(SINGD, model_dense, batches, structures=("dense", "dense"), **config)
    assert_same_results(model, opt, model_dense, opt_dense, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", [SINGD_CONFIG, IKFAC_CONFIG], ids=["singd", "ikfac"])
def test_reference_block_diagonal_deviates_from_dense(config: dict):
    """The reference's block30diagonal trajectory leaves its own dense one (its bug)."""
    batches = make_batches((8, 29), (8, 3), torch.float32)
    torch.manual_seed(0)
    model = narrow_mlp(30)()
    model_dense = copy.deepcopy(model)
    model_ours = copy.deepcopy(model)
    train(ReferenceSINGD, model, batches, structures=("block30diagonal",) * 2, **config)
    train(ReferenceSINGD, model_dense, batches, structures=("dense", "dense"), **config)
    train(SINGD, model_ours, batches, structures=("block30diagonal",) * 2, **config)
    assert max_difference(model, model_dense) > 1e-4
    assert max_difference(model_ours, model_dense) < 1e-5


# --------------------------------- the dense re-implementation itself
def reference_with_all_structures() -> type:
    """Return the reference optimizer class extended by its unlisted structures.

    Returns:
        A subclass of the reference optimizer accepting more structure names.
    """
    from singd.structures.blockdiagonal import Block3DiagonalMatrix
    from singd.structures.hierarchical import Hierarchical3_2Matrix
    from singd.structures.trilbottomrightdiag import TrilBottomRightDiagonalMatrix
    from singd.structures.triltopleftdiag import TrilTopLeftDiagonalMatrix
    from singd.structures.triubottomrightdiag import TriuBottomRightDiagonalMatrix
    from singd.structures.triutopleftdiag import TriuTopLeftDiagonalMatrix

    class ExtendedReferenceSINGD(ReferenceSINGD):
        SUPPORTED_STRUCTURES: ClassVar[dict[str, type]] = {
            **ReferenceSINGD.SUPPORTED_STRUCTURES,
            "block3diagonal": Block3DiagonalMatrix,
            "hierarchical3_2": Hierarchical3_2Matrix,
            "triltopleftdiag": TrilTopLeftDiagonalMatrix,
            "trilbottomrightdiag": TrilBottomRightDiagonalMatrix,
            "triutopleftdiag": TriuTopLeftDiagonalMatrix,
            "triubottomrightdiag": TriuBottomRightDiagonalMatrix,
        }

    return ExtendedReferenceSINGD


@pytest.fixture
def float64_reference(monkeypatch: pytest.MonkeyPatch) -> type:
    """The extended reference optimizer with float64 allowed in its dtype helper.

    The reference's structures only refuse float64 in ``lowest_precision``; this
    fixture lets that helper rank float64 above float32.

    Returns:
        The reference optimizer class.
    """
    import singd.structures.blockdiagonal
    import singd.structures.hierarchical
    import singd.structures.triltoeplitz
    import singd.structures.triutoeplitz

    order = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

    def lowest_precision(*dtypes: torch.dtype) -> torch.dtype:
        return order[min(order.index(dtype) for dtype in dtypes)]

    for module in (
        singd.structures.blockdiagonal,
        singd.structures.hierarchical,
        singd.structures.triltoeplitz,
        singd.structures.triutoeplitz,
    ):
        monkeypatch.setattr(module, "lowest_precision", lowest_precision)
    return reference_with_all_structures()


ORACLE_STRUCTURES = [
    "dense",
    "diagonal",
    "hierarchical15_15",
    "hierarchical3_2",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
]


@pytest.mark.parametrize(
    ("structure", "config"),
    [
        (structure, SINGD_CONFIG if index % 2 == 0 else IKFAC_CONFIG)
        for index, structure in enumerate(ORACLE_STRUCTURES)
    ]
    + [("dense", IKFAC_CONFIG), ("diagonal", SINGD_CONFIG)],
)
def test_dense_oracle_matches_reference(float64_reference: type, structure: str, config: dict):
    """The dense re-implementation reproduces the reference's correct structures."""
    results = train_pair(
        mlp,
        make_batches((8, 32), (8, 3), torch.float64),
        (float64_reference, DenseSINGD),
        torch.float64,
        structures=(structure, structure),
        **config,
    )
    assert_same_results(*results, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("build_model", "kfac_approx", "loss_average"),
    [
        (cnn2d, "expand", None),
        (cnn2d, "reduce", "batch"),
        (cnn2d, "expand", "batch+sequence"),
        (sequence_mlp, "reduce", None),
        (sequence_mlp, "expand", "batch"),
        (sequence_mlp, "reduce", "batch+sequence"),
    ],
)
def test_dense_oracle_matches_reference_inputs(
    float64_reference: type, build_model: Callable, kfac_approx: str, loss_average: str | None
):
    """The oracle's input and gradient processing (and scaling) matches the reference's."""
    shapes = {cnn2d: ((4, 3, 6, 6), (4, 3)), sequence_mlp: ((3, 5, 7), (3, 5, 4))}[build_model]
    config = MILD_SINGD_CONFIG
    if loss_average is None:  # summed loss: larger gradients, smaller steps
        config = {**config, "lr": 0.1 * config["lr"], "lr_cov": 0.1 * config["lr_cov"]}
    results = train_pair(
        build_model,
        make_batches(*shapes, torch.float64),
        (float64_reference, DenseSINGD),
        torch.float64,
        loss_average=loss_average,
        kfac_approx=kfac_approx,
        structures=("hierarchical3_2", "triutoeplitz"),
        **config,
    )
    assert_same_results(*results, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("structure", ["block30diagonal", "block3diagonal"])
def test_dense_oracle_matches_reference_block_diagonal_with_transposes_fixed(
    float64_reference: type, monkeypatch: pytest.MonkeyPatch, structure: str
):
    """Pin down the reference's block-diagonal bug: two missing transposes.

    With ``rmatmat`` computing ``K^T X`` and ``from_inner()`` computing ``K^T K``
    block by block, the reference agrees with the dense re-implementation.
    """
    from singd.structures.blockdiagonal import BlockDiagonalMatrixTemplate as Block

    from_inner = Block.from_inner

    def transposed(matrix: Block) -> Block:
        return type(matrix)(matrix._blocks.transpose(1, 2), matrix._last.T)

    def fixed_rmatmat(self: Block, mat: Tensor) -> Tensor:
        return transposed(self) @ mat

    def fixed_from_inner(self: Block, X: Tensor | None = None) -> Block:
        if X is None:  # K^T K: Gram matrix of the columns of every block
            blocks = torch.einsum("nji,njk->nik", self._blocks, self._blocks)
            return type(self)(blocks, self._last.T @ self._last)
        return from_inner(self, X)  # uses the fixed rmatmat

    monkeypatch.setattr(Block, "rmatmat", fixed_rmatmat)
    monkeypatch.setattr(Block, "from_inner", fixed_from_inner)
    results = train_pair(
        mlp,
        make_batches((8, 32), (8, 3), torch.float64),
        (float64_reference, DenseSINGD),
        torch.float64,
        structures=(structure, structure),
        **SINGD_CONFIG,
    )
    assert_same_results(*results, rtol=1e-10, atol=1e-12)

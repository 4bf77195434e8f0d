"""With the KFAC-like update, ``K K^T`` and ``C C^T`` converge to damped inverse covariances.

Fixing the weights (``lr = 0``) and the batch fixes the processed input covariance
``S_K = A^T A`` and output-gradient covariance ``S_C = G^T G`` of every layer. With
dense factors and ``kfac_like=True`` the update of ``K`` is::

    K <- K - beta K m_K,    m_K = 1/2 (K^T S_K K + lambda K^T K - I) = 1/2 (K^T M K - I)

with ``M = S_K + lambda I`` (``C`` likewise). Starting from ``K = I``, every iterate
is a polynomial in ``M``, so all matrices share ``M``'s eigenvectors and each
eigenvalue ``mu`` of ``M`` evolves on its own. Writing ``q = k sqrt(mu)`` for the
corresponding eigenvalue ``k`` of ``K`` (``q_0 = sqrt(mu)``)::

    q' = q + beta/2 q (1 - q^2),    1 - q' = (1 - q) (1 - beta/2 q (1 + q)).

If ``beta <= 1`` and ``beta <= 2 / (sqrt(mu_max) (1 + sqrt(mu_max)))``, the factor
``1 - beta/2 q (1 + q)`` lies in ``[0, 1)`` for every ``q`` between ``q_0`` and
``1``, so ``q`` moves monotonically to ``1`` and never leaves that interval. With
``q_low = min(1, sqrt(mu_min))`` the error contracts at least by
``rho = 1 - beta/2 q_low (1 + q_low)`` per step::

    |1 - q_t| <= rho^t |1 - q_0|.

The fixed point ``q = 1`` is ``K K^T = M^{-1}``, and in ``M``'s metric

    || M^{1/2} K K^T M^{1/2} - I ||_2 = max |q_t^2 - 1| <= rho^t max|1 - q_0| (1 + q_max)

with ``q_max = max(1, sqrt(mu_max))``. The test takes ``beta`` half the admissible
maximum, runs enough steps for this bound to fall below ``1e-8``, and checks the
bound at every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from math import ceil, log, sqrt

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from tests.optim.dense_reference_impl import DenseSINGD, single_intra_op_thread

DTYPE = torch.float64
DAMPING = 0.5
TARGET = 1e-8
MAX_STEPS = 400


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with single_intra_op_thread():
        yield


def covariances(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    loss_average: str | None,
    kfac_approx: str,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Compute ``S_K = A^T A`` and ``S_C = G^T G`` of every layer on one batch.

    ``A`` and ``G`` carry the optimizer's scaling (see
    :func:`tests.optim.dense_reference_impl.input_matrix` and
    :func:`~tests.optim.dense_reference_impl.output_grad_matrix`).

    Args:
        model: The model (left unchanged).
        inputs: The batch.
        target: The targets.
        loss_fn: The loss.
        loss_average: The optimizer's ``loss_average``.
        kfac_approx: The optimizer's ``kfac_approx``.

    Returns:
        A dictionary from layer name to ``(S_K, S_C)``.
    """
    model = copy.deepcopy(model)
    recorder = DenseSINGD(model, loss_average=loss_average, kfac_approx=kfac_approx)
    loss_fn(model(inputs), target).backward()
    result = {}
    for name in recorder.layers:
        A, G = recorder.covariance_factors(name)
        result[name] = (A.T @ A, G.T @ G)
    return result


def mlp_case() -> tuple[nn.Module, Tensor, Tensor, Callable, str | None, str]:
    """Two linear layers, KFAC-expand, mean over the batch.

    Returns:
        ``(model, inputs, target, loss_fn, loss_average, kfac_approx)``.
    """
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(16, 6, generator=generator, dtype=DTYPE)
    target = torch.randn(16, 3, generator=generator, dtype=DTYPE)

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((output - target) ** 2).sum() / output.shape[0]

    return model, inputs, target, loss_fn, "batch", "expand"


def sequence_case() -> tuple[nn.Module, Tensor, Tensor, Callable, str | None, str]:
    """Linear layers on sequences, KFAC-reduce, mean over batch and sequence.

    Returns:
        ``(model, inputs, target, loss_fn, loss_average, kfac_approx)``.
    """
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(8, 5, 4, generator=generator, dtype=DTYPE)
    target = torch.randn(8, 5, 2, generator=generator, dtype=DTYPE)

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((output - target) ** 2).sum() / output.shape[:-1].numel()

    return model, inputs, target, loss_fn, "batch+sequence", "reduce"


def conv_case() -> tuple[nn.Module, Tensor, Tensor, Callable, str | None, str]:
    """A 2d convolution and a linear head, KFAC-expand, summed loss.

    Returns:
        ``(model, inputs, target, loss_fn, loss_average, kfac_approx)``.
    """
    model = nn.Sequential(nn.Conv2d(2, 3, 2, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(6, 2, 4, 4, generator=generator, dtype=DTYPE)
    target = torch.randn(6, 2, generator=generator, dtype=DTYPE)

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        return 0.05 * ((output - target) ** 2).sum()

    return model, inputs, target, loss_fn, None, "expand"


def symmetric_sqrt(mat: Tensor) -> Tensor:
    """Square root of a symmetric positive definite matrix.

    Args:
        mat: Symmetric positive definite matrix.

    Returns:
        Its symmetric positive definite square root.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(mat)
    return eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T


@pytest.mark.parametrize("case", [mlp_case, sequence_case, conv_case], ids=["mlp", "seq", "conv"])
def test_kfac_like_fixed_point(case: Callable):
    """``K K^T -> (S_K + lambda I)^{-1}`` and ``C C^T -> (S_C + lambda I)^{-1}``."""
    torch.manual_seed(0)
    model, inputs, target, loss_fn, loss_average, kfac_approx = case()
    model = model.to(DTYPE)
    S = covariances(model, inputs, target, loss_fn, loss_average, kfac_approx)

    # M = S + lambda I for every factor of every layer, and the spectrum bounds
    M = {
        (name, kind): S_factor + DAMPING * torch.eye(S_factor.shape[0], dtype=DTYPE)
        for name, S_pair in S.items()
        for kind, S_factor in zip("KC", S_pair, strict=True)
    }
    eigenvalues = torch.cat([torch.linalg.eigvalsh(mat) for mat in M.values()])
    mu_min, mu_max = eigenvalues.min().item(), eigenvalues.max().item()
    assert mu_min >= DAMPING * (1 - 1e-12)

    # step size: half the largest one with guaranteed monotone convergence
    beta = 0.5 * min(1.0, 2.0 / (sqrt(mu_max) * (1.0 + sqrt(mu_max))))
    q_low, q_max = min(1.0, sqrt(mu_min)), max(1.0, sqrt(mu_max))
    rho = 1.0 - 0.5 * beta * q_low * (1.0 + q_low)
    initial_error = max(abs(1.0 - sqrt(mu_min)), abs(1.0 - sqrt(mu_max)))

    def bound(steps: int) -> float:
        return rho**steps * initial_error * (1.0 + q_max)

    steps = ceil(log(TARGET / bound(0)) / log(rho))
    assert steps <= MAX_STEPS, f"data give slow convergence: rho = {rho}, {steps} steps"

    M_sqrt = {key: symmetric_sqrt(mat) for key, mat in M.items()}
    parameters = [param.detach().clone() for param in model.parameters()]
    optimizer = SINGD(
        model,
        lr=0.0,
        momentum=0.9,
        damping=DAMPING,
        alpha1=0.0,
        T=1,
        loss_average=loss_average,
        lr_cov=beta,
        structures=("dense", "dense"),
        kfac_approx=kfac_approx,
        kfac_like=True,
        defaults="reference",
        train_all_parameters=True,
    )
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss_fn(model(inputs), target).backward()
        optimizer.step()
        for (name, kind), root in M_sqrt.items():
            factor = (optimizer.Ks if kind == "K" else optimizer.Cs)[name].to_dense()
            error = root @ factor @ factor.T @ root - torch.eye(root.shape[0], dtype=DTYPE)
            assert torch.linalg.matrix_norm(error, ord=2).item() <= bound(step) + 1e-12, (
                f"{kind} of layer {name} after {step} steps"
            )

    for param, initial in zip(model.parameters(), parameters, strict=True):
        assert torch.equal(param.detach(), initial)  # lr = 0: the batch statistics stay fixed
    for (name, kind), mat in M.items():
        factor = (optimizer.Ks if kind == "K" else optimizer.Cs)[name].to_dense()
        inverse = torch.linalg.inv(mat)
        # ||K K^T - M^{-1}||_2 <= ||M^{-1}||_2 * bound <= bound / mu_min
        torch.testing.assert_close(
            factor @ factor.T, inverse, rtol=0.0, atol=TARGET / mu_min + 1e-12
        )

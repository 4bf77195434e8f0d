"""``symmetric_eigen`` and ``from_inner_diagonal`` against dense computations."""

from __future__ import annotations

import pytest
import torch

import structmat
from structmat import available_structures, get_structure

SPECTRAL = ["dense", "diagonal", "block3diagonal", "block4diagonal"]


def _symmetric_member(name: str, dim: int) -> structmat.StructuredMatrix:
    generator = torch.Generator().manual_seed(dim)
    A = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
    return get_structure(name).from_dense(A @ A.T + torch.eye(dim, dtype=torch.float64))


@pytest.mark.parametrize("name", SPECTRAL)
@pytest.mark.parametrize("dim", [1, 7, 12])
def test_symmetric_eigen_is_an_eigendecomposition_within_the_structure(name: str, dim: int) -> None:
    H = _symmetric_member(name, dim)
    values, compose = H.symmetric_eigen()
    dense = H.to_dense()
    expected = torch.linalg.eigvalsh(dense)
    torch.testing.assert_close(values.sort().values, expected, rtol=1e-12, atol=1e-12)
    assert type(compose(values)) is type(H)
    torch.testing.assert_close(compose(values).to_dense(), dense, rtol=1e-12, atol=1e-12)
    root = compose(values.sqrt()).to_dense()  # the symmetric square root
    torch.testing.assert_close(root @ root, dense, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(root, root.mT, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "name", [*sorted(n for n in available_structures() if "{" not in n), "hierarchical3_2"]
)
def test_only_declared_structures_decompose(name: str) -> None:
    cls = get_structure(name)
    if cls.closed_under_spectral_functions:
        return
    with pytest.raises(TypeError, match="closed_under_spectral_functions"):
        cls.eye(6, dtype=torch.float64).symmetric_eigen()


@pytest.mark.parametrize("name", ["dense", "diagonal", "block3diagonal", "triltoeplitz"])
def test_from_inner_diagonal_is_from_inner2_of_the_diagonal_matrix(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    cls = get_structure(name)
    A = cls.from_dense(torch.randn(9, 9, dtype=torch.float64, generator=generator))
    values = torch.rand(9, dtype=torch.float64, generator=generator)
    expected = cls.from_dense(A.to_dense().mT @ torch.diag(values) @ A.to_dense())
    if name in ("dense", "diagonal", "block3diagonal"):
        result = A.from_inner_diagonal(values)
    else:  # no kernel of its own: the generic default, with its warning
        with pytest.warns(structmat.DenseFallbackWarning, match="from_inner_diagonal"):
            result = A.from_inner_diagonal(values)
    torch.testing.assert_close(result.to_dense(), expected.to_dense(), rtol=1e-12, atol=1e-12)


def test_from_inner_diagonal_checks_its_argument() -> None:
    A = get_structure("diagonal").eye(4)
    with pytest.raises(TypeError, match=r"values must be a torch\.Tensor"):
        A.from_inner_diagonal([1.0, 2.0, 3.0, 4.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"values must have shape \(4,\)"):
        A.from_inner_diagonal(torch.ones(3))
    with pytest.raises(TypeError, match="dtype"):
        A.from_inner_diagonal(torch.ones(4, dtype=torch.float64))


def test_declaring_spectral_functions_without_the_kernel_is_rejected() -> None:
    with pytest.raises(TypeError, match="does not implement _symmetric_eigen"):

        class Undecomposed(structmat.LinearStructure):
            name = None
            closed_under_spectral_functions = True

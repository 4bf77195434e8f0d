"""Hypothesis strategies and dense twins shared by every structure's tests.

One strategy draws random members of any registered structure; one independent
dense projection per convention says what ``from_dense`` must return. The law
suite (``test_structure_laws.py``) applies the same checks to every name in
:data:`STRUCTURE_NAMES`.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor

import structmat
from structmat import StructuredMatrix

#: Every built-in structure, with small and realistic members of each family.
STRUCTURE_NAMES: list[str] = [
    "dense",
    "diagonal",
    "block1diagonal",
    "block3diagonal",
    "block30diagonal",
    "hierarchical3_2",
    "hierarchical15_15",
    "transposedhierarchical3_2",
    "transposedhierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
    "tril",
    "triu",
]

#: Structures whose storage is inherently ``d x d`` (exempt from the allocation check).
DENSE_STORAGE: set[str] = {"dense", "tril", "triu"}

#: Structures whose ``from_dense`` averages diagonals instead of keeping entries.
TOEPLITZ: dict[str, bool] = {"triltoeplitz": False, "triutoeplitz": True}  # name -> upper

#: The expected transpose structure of every name.
TRANSPOSE_NAME: dict[str, str] = {
    **{name: name for name in ("dense", "diagonal", "block1diagonal", "block3diagonal")},
    "block30diagonal": "block30diagonal",
    "hierarchical3_2": "transposedhierarchical3_2",
    "hierarchical15_15": "transposedhierarchical15_15",
    "transposedhierarchical3_2": "hierarchical3_2",
    "transposedhierarchical15_15": "hierarchical15_15",
    "triltoeplitz": "triutoeplitz",
    "triutoeplitz": "triltoeplitz",
    "triltopleftdiag": "triutopleftdiag",
    "triutopleftdiag": "triltopleftdiag",
    "trilbottomrightdiag": "triubottomrightdiag",
    "triubottomrightdiag": "trilbottomrightdiag",
    "tril": "triu",
    "triu": "tril",
}

MAX_DIM = 70


def interesting_dims(cls: type[StructuredMatrix]) -> list[int]:
    """Dimensions at which ``cls`` changes shape: 1, block and corner boundaries."""
    dims = {1, 2, 3, 30, 41, 64, MAX_DIM}
    block = getattr(cls, "block_size", None)
    if block is not None:
        dims |= {block - 1, block, block + 1, 2 * block, 2 * block + 1}
    k1, k2 = getattr(cls, "max_k1", None), getattr(cls, "max_k2", None)
    if k1 is not None and k2 is not None:
        dims |= {k1 - 1, k1, k1 + 1, k1 + k2, k1 + k2 + 1, k1 + k2 + 2}
    return sorted(d for d in dims if 1 <= d <= MAX_DIM)


def random_member(
    cls: type[StructuredMatrix],
    dim: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    invertible: bool = False,
) -> StructuredMatrix:
    """A random (generally non-symmetric) member of ``cls`` of size ``dim``.

    With ``invertible=True`` the member is ``I + N`` where every stored entry of
    ``N`` lies in ``[-1/(2d), 1/(2d)]``. A row of any member holds at most ``d``
    stored entries, so ``||N||_inf <= 1/2`` and ``A`` is invertible with
    ``||A^{-1}||_inf <= 2``: well conditioned for every structure.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in cls.tensor_shapes(dim).items():
        if invertible:
            values = (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5) / dim
        else:
            values = torch.randn(shape, generator=generator, dtype=torch.float64)
        tensors[name] = values.to(dtype)
    member = cls(**tensors)
    if invertible:
        member.diag_add_(1.0)
    return member


def random_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A standard normal tensor from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def pattern(cls: type[StructuredMatrix], dim: int) -> Tensor:
    """The boolean sparsity pattern of ``cls`` (where a member may be non-zero)."""
    ones = {
        name: torch.ones(shape, dtype=torch.float64)
        for name, shape in cls.tensor_shapes(dim).items()
    }
    return cls(**ones).to_dense() != 0


def project(name: str, sym: Tensor) -> Tensor:
    """Independent dense projection onto structure ``name``.

    Toeplitz structures average each pair of mirrored diagonals; every other
    structure keeps ``S[i, j]`` on its pattern and folds the mirror ``S[j, i]``
    into it where the mirror lies outside the pattern.
    """
    dim = sym.shape[0]
    if name in TOEPLITZ:
        idx = torch.arange(dim)
        lag = (idx[:, None] - idx[None, :]).abs()
        sums = torch.zeros(dim, dtype=sym.dtype).index_add_(0, lag.flatten(), sym.flatten())
        coefficients = sums / torch.arange(dim, 0, -1, dtype=sym.dtype)
        lower = (idx[:, None] - idx[None, :]).clamp(min=0)
        keep = idx[:, None] >= idx[None, :]
        out = torch.where(keep, coefficients[lower], torch.zeros((), dtype=sym.dtype))
        return out.mT.contiguous() if TOEPLITZ[name] else out
    mask = pattern(structmat.get_structure(name), dim)
    folded = sym + torch.where(mask.mT, torch.zeros((), dtype=sym.dtype), sym.mT)
    return torch.where(mask, folded, torch.zeros((), dtype=sym.dtype))


@st.composite
def dims(draw: st.DrawFn, cls: type[StructuredMatrix]) -> int:
    """A dimension: a boundary of ``cls`` or any size up to :data:`MAX_DIM`."""
    return draw(st.sampled_from(interesting_dims(cls)) | st.integers(1, MAX_DIM))


seeds = st.integers(0, 2**31 - 1)

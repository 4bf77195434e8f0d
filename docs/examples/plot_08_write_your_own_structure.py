r"""
Write your own structure
========================

``structmat`` is open: a new structure is a subclass of
:class:`~structmat.LinearStructure` (or :class:`~structmat.StructuredMatrix`), the
shipped law suite :mod:`structmat.testing` verifies it in a few lines, and once
registered under a name it works everywhere a built-in one does, including
:class:`~singd_opt.SINGD`.

This example builds **circulant matrices**,

.. math::

    A = \operatorname{circ}(c), \qquad A_{ij} = c_{(i - j) \bmod d},

stored as their first column :math:`c \in \mathbb{R}^d`. The discrete Fourier transform
diagonalizes them: :math:`A x = c \circledast x` is a circular convolution, computed as
:math:`\mathcal{F}^{-1}(\hat c \odot \hat x)` with :math:`\hat c = \mathcal{F} c`. So
they are closed under ``+``, ``@`` (:math:`\hat c_1 \odot \hat c_2`), transposition
(:math:`c_{-k}`) and inversion (:math:`1 / \hat c`), and every kernel costs
:math:`O(d \log d)` per vector instead of :math:`O(d^2)`.
"""

# %%
# The structure
# -------------
#
# A structure declares its storage layout (:meth:`~structmat.StructuredMatrix.tensor_shapes`),
# takes those tensors as constructor keywords and hands them to ``super().__init__``,
# which checks them. It defines ``from_dense`` (the projection of a dense matrix onto
# the structure) and ``to_dense``, and declares its structural facts as class
# attributes. :class:`~structmat.LinearStructure` contributes ``+``, scalar ``*``, their
# in-place forms and ``zeros``, because :math:`A` is linear in :math:`c`.
#
# Everything else has a generic implementation that goes through a dense
# :math:`d \times d` matrix and warns with :class:`~structmat.DenseFallbackWarning`; a
# structure replaces it by overriding the kernel hook (``_matmat``, ``_matmul``, ...,
# listed in :mod:`structmat.base`). Circulant matrices get an FFT kernel for each.
#
# The projection averages each wrapped diagonal, :math:`c_k = \frac1d \sum_{i - j
# \equiv k} S_{ij}`: the orthogonal projection onto circulant matrices.

import math
import time

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import structmat
from singd_opt import SINGD
from structmat import LinearStructure, SingularMatrixError
from structmat.testing import StructureLaws


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in float64 for float64 data and in float32 otherwise (half types too)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@structmat.register
class Circulant(LinearStructure):
    r"""Circulant matrices :math:`A_{ij} = c_{(i - j) \bmod d}`, stored as ``column``."""

    name = "circulant"
    closed_under_inverse = True  # the facts are declared per structure, default False
    closed_under_transpose = True

    def __init__(self, column: Tensor) -> None:
        super().__init__(column=column)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """One vector of ``d`` coefficients."""
        return {"column": (dim,)}

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> "Circulant":
        """Average every wrapped diagonal; reads the matrix through 2d diagonal views."""
        S = cls.check_square(sym_mat)
        d = S.shape[0]
        # wrapped diagonal k: the k-th lower diagonal and the (d - k)-th upper one
        sums = [S.diagonal(-k).sum() + S.diagonal(d - k).sum() for k in range(d)]
        return cls(torch.stack(sums) / d)

    def to_dense(self) -> Tensor:
        """Gather the coefficient of every entry."""
        d = self.column.shape[0]
        index = torch.arange(d, device=self.column.device)
        return self.column[(index[:, None] - index[None, :]) % d]

    # -------------------------------------------------- FFT kernels, O(d log d)
    def _spectrum(self, dtype: torch.dtype) -> Tensor:
        return torch.fft.rfft(self.column.to(dtype))

    def _matmat(self, X: Tensor) -> Tensor:
        """``A @ X``: filter every column of ``X`` (any layout) with the spectrum."""
        spectrum = self._spectrum(work_dtype(X.dtype))
        product = spectrum.unsqueeze(1) * torch.fft.rfft(X.to(spectrum.real.dtype), dim=0)
        return torch.fft.irfft(product, n=X.shape[0], dim=0).to(X.dtype)

    def _matmul(self, other: "Circulant") -> "Circulant":
        return type(self)(self._matmat(other.column.unsqueeze(1)).squeeze(1))

    def _transpose(self) -> "Circulant":
        # the one transpose hook: A.rmatmat(X) and X @ A are A.T @ X, through _matmat
        return type(self)(self.column.flip(0).roll(1))

    def _diag(self) -> Tensor:
        return self.column[:1].repeat(self.column.shape[0])

    def _diag_add_(self, value: float | Tensor) -> None:
        self.column[:1].add_(value)

    def _frobenius_norm(self) -> Tensor:
        # every coefficient appears d times: ||A||_F = sqrt(d) ||c||_2
        return super()._frobenius_norm() * math.sqrt(self.column.shape[0])

    def _inv(self) -> "Circulant":
        d = self.column.shape[0]
        inverse = torch.fft.irfft(1 / self._spectrum(work_dtype(self.dtype)), n=d)
        if not bool(inverse.isfinite().all()):
            raise SingularMatrixError("Circulant matrix is singular: its spectrum has a zero")
        return type(self)(inverse.to(self.dtype))

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> "Circulant":
        # sum over the wrapped diagonals of X X^T: circular autocorrelations of the columns
        d = X.shape[0]
        power = torch.fft.rfft(X.to(work_dtype(X.dtype)), dim=0).abs().square().sum(1)
        return cls((torch.fft.irfft(power, n=d) / d).to(X.dtype))

    def _from_inner_identity(self) -> "Circulant":
        # A^T A is circulant with spectrum |c^|^2: the projection keeps it as it is
        d = self.column.shape[0]
        power = self._spectrum(work_dtype(self.dtype)).abs().square()
        return type(self)(torch.fft.irfft(power, n=d).to(self.dtype))

    def _from_inner2(self, XXT: Tensor) -> "Circulant":
        # in the Fourier basis, P(A^T M A) has the eigenvalues |c^|^2 (F M F*)_kk, so
        # it is the product of the circulant A^T A and the projection of M
        return self._from_inner_identity() @ type(self).from_dense(XXT)


A = Circulant(torch.tensor([1.0, 2.0, 3.0, 4.0]))
print(A.to_dense())
print((A @ torch.eye(4)).equal(A.to_dense()), A.T.to_dense().equal(A.to_dense().T))

# %%
# Verify it with the law suite
# ----------------------------
#
# :class:`~structmat.testing.StructureLaws` checks every operation against dense
# float64 arithmetic on random members of all sizes up to 70 (drawn by hypothesis from
# ``tensor_shapes``) and, in a few draws, up to 300 with batch-sized operands of 64 to
# 256 columns; operands in every layout an optimizer passes (transposed views such as
# ``grad.mT``, strided slices); products after in-place updates; the closure and
# algebraic laws, inverses (singular members that are not zero included), gradients,
# accuracy and dtypes in float32, bfloat16 and float16, results that own their storage,
# mixed dtypes and other bad input, and that no operation falls back to dense or
# allocates a :math:`d \times d` tensor. ``from_dense`` is not the default
# "keep the pattern" projection, so the subclass says what it is instead, by an
# independent dense computation. In a test file, name the class ``Test...`` and pytest
# runs the laws; here ``check()`` runs them directly.


class CirculantLaws(StructureLaws):
    """The laws, with the projection onto circulant matrices computed entry by entry."""

    structure = Circulant

    def project(self, mat: Tensor) -> Tensor:
        """Replace every entry by the mean of its wrapped diagonal."""
        d = mat.shape[0]
        index = torch.arange(d)
        lag = (index[:, None] - index[None, :]) % d
        means = torch.zeros(d, dtype=mat.dtype).index_add_(0, lag.flatten(), mat.flatten()) / d
        return means[lag]


start = time.perf_counter()
print(CirculantLaws().check(max_examples=5))
print(f"({time.perf_counter() - start:.1f} s)")

# %%
# A wrong kernel does not get through. This variant forgets that each coefficient
# appears :math:`d` times in the matrix and returns the norm of the storage:

class SloppyCirculant(Circulant):
    """A circulant structure with a wrong Frobenius norm."""

    name = None  # not registered

    def _frobenius_norm(self) -> Tensor:
        return LinearStructure._frobenius_norm(self)


class SloppyLaws(CirculantLaws):
    """The same laws for the sloppy variant."""

    structure = SloppyCirculant


print(SloppyLaws().check(max_examples=5, raise_on_failure=False))

# %%
# Train with it
# -------------
#
# ``@structmat.register`` made the structure known as ``"circulant"``, so SINGD takes
# it like any built-in name. Here a small MLP on scikit-learn's bundled 8x8 digits uses
# circulant preconditioner factors for every layer, next to dense ones.

images, labels = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.25, random_state=0, stratify=labels
)
x_train = torch.tensor(x_train, dtype=torch.float32) / 16
x_test = torch.tensor(x_test, dtype=torch.float32) / 16
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)


def train(structure: str, steps: int = 100) -> tuple[list[float], float]:
    """Train an MLP with SINGD in ``structure``; return the losses and test accuracy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = SINGD(model, lr=0.05, structures=(structure, structure))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(x_train), (64,), generator=generator)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return losses, accuracy


fig, ax = plt.subplots(figsize=(6, 3.5))
for structure in ("circulant", "dense"):
    losses, accuracy = train(structure)
    print(f"{structure:>9}: final loss {losses[-1]:.3f}, test accuracy {accuracy:.3f}")
    ax.plot(losses, label=f"SINGD, {structure} factors")
ax.set(xlabel="step", ylabel="training loss", yscale="log", title="MLP on 8x8 digits")
ax.legend()
fig.tight_layout()

# %%
# A circulant factor of a layer with :math:`d` inputs stores :math:`d` numbers instead
# of :math:`d^2`, and each product with it costs :math:`O(d \log d)`. To make a
# structure available to others, put the class in a module that registers it on import
# and ship its ``StructureLaws`` subclass with your tests.

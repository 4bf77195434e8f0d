"""
Structures overview
===================

SINGD keeps two Kronecker factors per layer, :math:`K` (input side) and :math:`C`
(output side), together with their momenta :math:`m_K` and :math:`m_C`. The argument
``structures=(structure_K, structure_C)`` restricts each pair to a structure: a set of
matrices that is closed under addition and multiplication, so the update never leaves
it. This example shows which structures there are and how each one approximates a
symmetric matrix, first at one size and then as the size grows.
"""

# %%
# The structures SINGD accepts
# ----------------------------
#
# ``SINGD.SUPPORTED_STRUCTURES`` maps the standard structure names to their matrix
# classes. SINGD accepts every other structure that :mod:`structmat` registers as well:
# full triangles, triangular "arrow" matrices, the transposed hierarchical structure,
# and any block size or corner sizes of the parametric families (``block64diagonal``,
# ``hierarchical8_24``, ...). Any of these names is a valid entry of ``structures``,
# for all layers or, with parameter groups, per layer.

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation, PillowWriter
from torch import Tensor

import structmat
from singd_opt import SINGD

torch.manual_seed(0)

standard = list(SINGD.SUPPORTED_STRUCTURES)
more = [
    n
    for n in structmat.available_structures()
    if "{" not in n and n not in standard
]
more = sorted(
    more, key=lambda n: (n not in ("tril", "triu"), n)
)  # full triangles first
more.append("transposedhierarchical15_15")
names = standard + more
print("standard:", standard)
print("also accepted:", more)


def structure(name: str) -> type[structmat.StructuredMatrix]:
    """Return the matrix class of the structure ``name``."""
    if name in SINGD.SUPPORTED_STRUCTURES:
        return SINGD.SUPPORTED_STRUCTURES[name]
    return structmat.get_structure(name)


# %%
# From a dense matrix to a structure and back
# -------------------------------------------
#
# Every structure class projects a dense symmetric matrix onto the structure with
# ``from_dense`` and returns the matrix it represents with ``to_dense``. The projection
# keeps the entries the structure can store. Triangular and one-sided structures
# (Toeplitz, arrow, hierarchical) also fold the mirrored entries of the other triangle
# into the stored ones, so their off-diagonal entries are sums of two entries of the
# original.


def random_symmetric(dim: int) -> Tensor:
    """Return a random symmetric ``dim x dim`` matrix (normal entries)."""
    mat = torch.randn(dim, dim)
    return (mat + mat.T) / math.sqrt(2)


dim = 48
dense = random_symmetric(dim)
diagonal = SINGD.SUPPORTED_STRUCTURES["diagonal"].from_dense(dense).to_dense()
print(torch.equal(diagonal, torch.diag(dense.diag())))

# %%
# Every structure at one size
# ---------------------------
#
# Here is the same :math:`48 \times 48` matrix projected onto every structure. Zero
# entries are white, so the sparsity pattern of each structure shows directly; the
# numbers in the titles count what each structure stores. Only the pattern matters
# here, so every panel gets its own colour scale, symmetric around zero and clipped at
# 2.5 standard deviations of its nonzero entries (averaging along a diagonal, as the
# Toeplitz projection does, shrinks the entries a lot).


def project(name: str, mat: Tensor) -> Tensor:
    """Project ``mat`` onto the structure ``name``; return it as a dense matrix."""
    return structure(name).from_dense(mat).to_dense()


def stored(name: str, mat: Tensor) -> int:
    """Count the numbers the structure ``name`` stores at the size of ``mat``."""
    structured = structure(name).from_dense(mat)
    return sum(tensor.numel() for _, tensor in structured.named_tensors())


def colour_limit(mat: Tensor) -> float:
    """Return 2.5 standard deviations of the nonzero entries of ``mat``."""
    nonzero = mat[mat != 0]
    return 2.5 * nonzero.std().item() if nonzero.numel() > 1 else 1.0


columns = 4
rows = math.ceil((len(names) + 1) / columns)
panels = {"original": dense} | {name: project(name, dense) for name in names}

fig, axes = plt.subplots(
    rows, columns, figsize=(2.6 * columns, 3.0 * rows), layout="constrained"
)
fig.suptitle(f"Projections of a random symmetric {dim} x {dim} matrix")
for ax in axes.flat:
    ax.set_axis_off()
for ax, (name, mat) in zip(axes.flat, panels.items(), strict=False):
    limit = colour_limit(mat)
    ax.imshow(mat, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    count = dim * dim if name == "original" else stored(name, dense)
    ax.set_title(f"{name}\n{count} numbers", fontsize=9)

# %%
# Reading the figure:
#
# - ``dense`` keeps everything and ``diagonal`` only the diagonal.
# - ``block30diagonal`` keeps dense :math:`30 \times 30` blocks on the diagonal (plus
#   a smaller last block when 30 does not divide :math:`d`).
# - ``hierarchical15_15`` keeps the first 15 rows in full, the last 15 rows from
#   column 16 on and a diagonal in between: about :math:`31 d` numbers instead of
#   :math:`d^2`. ``transposedhierarchical15_15`` is its transpose.
# - ``triltoeplitz`` and ``triutoeplitz`` are triangular with constant diagonals:
#   :math:`d` numbers describe the whole matrix.
# - ``tril`` and ``triu`` keep a full triangle (and store a full square tensor), the
#   four arrow structures a diagonal plus one dense row or column inside a triangle.
#
# How the structures grow with the dimension
# ------------------------------------------
#
# Several sub-structures only appear once the matrix is large enough: a
# ``block30diagonal`` matrix of size 16 is a single dense block, and a
# ``hierarchical15_15`` matrix is dense up to size 30. The animation below walks
# through :math:`d = 2, 4, \dots, 128`. Each matrix is drawn on the same square, so a
# single entry of the :math:`2 \times 2` matrix fills a quarter of it.

dims = [2**k for k in range(1, 8)]  # 2, 4, ..., 128
frames = []
for d in dims:
    original = random_symmetric(d)
    frames.append(
        {"original": original} | {name: project(name, original) for name in names}
    )


def upsample(mat: Tensor, size: int = max(dims)) -> Tensor:
    """Repeat every entry of ``mat`` so that it becomes ``size x size``."""
    factor = size // mat.shape[0]
    return mat.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)


fig, axes = plt.subplots(
    rows, columns, figsize=(2.4 * columns, 2.5 * rows + 0.4), layout="constrained"
)
for ax in axes.flat:
    ax.set_axis_off()
images = {}
for ax, name in zip(axes.flat, frames[0], strict=False):
    blank = torch.zeros(max(dims), max(dims))
    images[name] = ax.imshow(
        blank, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    ax.set_title(name, fontsize=9)
heading = fig.suptitle("d = 128", fontsize=14, fontweight="bold")
fig.canvas.draw()  # lay the grid out once ...
fig.set_layout_engine("none")  # ... and keep it for every frame (much faster)


def draw(index: int) -> list:
    """Show the matrices of dimension ``dims[index]``; return changed artists."""
    for name, mat in frames[index].items():
        limit = colour_limit(mat)
        images[name].set_data(upsample(mat))
        images[name].set_clim(-limit, limit)
    heading.set_text(f"d = {dims[index]}")
    return [*images.values(), heading]


animation = FuncAnimation(fig, draw, frames=len(dims))
animation.save("structures.gif", writer=PillowWriter(fps=1), dpi=80)
plt.close(fig)

# %%
# The animation is saved as ``structures.gif``:
#
# - from :math:`d = 32` on, ``block30diagonal`` splits into a :math:`30 \times 30`
#   block and a remainder, and at :math:`d = 128` four full blocks and one of size 8
#   run down the diagonal;
# - ``hierarchical15_15`` is dense while :math:`d \le 30`; beyond that, the diagonal
#   middle part and the thin off-diagonal strips appear between the two dense corners;
# - the Toeplitz structures look the same at every size: one number per diagonal,
#   repeated along it.
#
# To use a structure, pass its name for both factors,
# ``SINGD(model, structures=("hierarchical15_15", "hierarchical15_15"))``, or different
# names for :math:`K` and :math:`C`. :doc:`/choosing_a_structure` compares what each one
# costs as the layer width grows.

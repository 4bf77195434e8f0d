r"""Block-diagonal matrices with dense (general, non-symmetric) blocks of a fixed size.

The family ``block{b}diagonal`` holds, for every block size :math:`b \ge 1`, the matrices

.. math::

    A = \operatorname{blockdiag}(K_1, \dots, K_N, L),
    \qquad K_i \in \mathbb{R}^{b \times b},\ L \in \mathbb{R}^{r \times r},

of size :math:`d = N b + r` with :math:`N = \lfloor d / b \rfloor` and
:math:`r = d \bmod b` (the last block ``L`` is smaller than ``b`` and empty when ``b``
divides ``d``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor

from structmat._layout import writes_forbidden
from structmat._numerics import dense_inverse
from structmat.base import Scalar
from structmat.linear_structure import LinearStructure
from structmat.numerics import HALF_TYPES
from structmat.registry import family_member, register_family


class BlockDiagonal(LinearStructure):
    r"""Block-diagonal matrix :math:`\operatorname{blockdiag}(K_1, \dots, K_N, L)`.

    This class is the template of the family; the concrete class for block size ``b``
    is ``BlockDiagonal.with_block_size(b)`` (registered as ``"block{b}diagonal"``).

    Stored tensors, for a ``d x d`` member with ``N = d // b`` and ``r = d % b``:

    - ``blocks``: the full blocks :math:`K_1, \dots, K_N`, shape ``(N, b, b)``;
    - ``last_block``: the trailing block :math:`L`, shape ``(r, r)`` (possibly empty).

    Every kernel works block by block (batched over the ``N`` full blocks), so with
    :math:`d/b` blocks: ``A @ X`` and ``A^T @ X`` cost :math:`O(d b n)`; ``A @ B``,
    ``inv``, ``from_inner()`` and ``from_inner2(M)`` (:math:`K_i^\top M_{ii} K_i` from
    the diagonal blocks :math:`M_{ii}` of :math:`M`) :math:`O(d b^2)`;
    ``from_mat_inner(X)`` and ``from_inner(X)`` :math:`O(d b n)` (the latter through
    :math:`X_i X_i^\top` when ``n >= 2 b``); ``from_dense`` reads the :math:`O(d b)`
    entries of the diagonal blocks. When ``b`` divides ``d`` the kernels skip the empty
    last block (their results share it). Closed under transposition (blockwise) and
    inversion.

    Class attributes:
        block_size: The block size :math:`b` (``None`` on the template).
    """

    block_size: ClassVar[int | None] = None
    parameters = ("block_size",)
    template_hint = "use BlockDiagonal.with_block_size(b) or get_structure('block{b}diagonal')"
    closed_under_inverse = True
    closed_under_transpose = True
    batches_under_vmap = True
    batches_natively = True
    closed_under_spectral_functions = True
    _plain_constructor = True

    def __init__(self, blocks: Tensor, last_block: Tensor) -> None:
        super().__init__(blocks=blocks, last_block=last_block)

    # ------------------------------------------------------------------ family
    @classmethod
    def with_block_size(cls, block_size: int) -> type[BlockDiagonal]:
        """Return the (cached) block-diagonal structure with blocks of size ``block_size``.

        Raises:
            TypeError: If ``block_size`` is not an integer.
            ValueError: If ``block_size`` is not positive.
        """
        if not isinstance(block_size, int) or isinstance(block_size, bool):
            raise TypeError(f"block_size must be an int, got {block_size!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        return family_member(BlockDiagonal, f"block{block_size}diagonal", block_size=block_size)

    @classmethod
    def _require_block_size(cls) -> int:
        cls._require_concrete()
        assert cls.block_size is not None
        return cls.block_size

    # ----------------------------------------------------------------- layout
    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{"blocks": (dim // b, b, b), "last_block": (dim % b, dim % b)}``."""
        b = cls._require_block_size()
        count, rest = divmod(dim, b)
        return {"blocks": (count, b, b), "last_block": (rest, rest)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d = N b + r`` from ``blocks (N, b, b)`` and ``last_block (r, r)``."""
        return shapes["blocks"][0] * cls._require_block_size() + shapes["last_block"][0]

    def _split_rows(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Split ``X``, ``(..., d, n)``, into ``(..., N, b, n)`` row blocks and the last rows.

        The leading dimensions are a stack's batch dimensions (none for a member).
        """
        count, b = self.blocks.shape[-3], self._require_block_size()
        if X.ndim == 2:  # a member's operand
            return X[: count * b].reshape(count, b, X.shape[1]), X[count * b :]
        head = X[..., : count * b, :]
        return head.reshape(*X.shape[:-2], count, b, X.shape[-1]), X[..., count * b :, :]

    @staticmethod
    def _join_rows(blocks: Tensor, last: Tensor) -> Tensor:
        """Inverse of :meth:`_split_rows`: the row blocks and last rows joined, ``(..., d, n)``."""
        return torch.cat([blocks.reshape(*blocks.shape[:-3], -1, blocks.shape[-1]), last], -2)

    # --------------------------------------------------------- dense round trip
    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> BlockDiagonal:
        """Keep the diagonal blocks of ``sym_mat`` (every entry's mirror is in the pattern).

        Gathers only the :math:`N b^2 + r^2` entries of the diagonal blocks.
        """
        blocks, last_block = cls._diagonal_blocks(cls._check_square(sym_mat))
        return cls(blocks=blocks, last_block=last_block.clone())

    @classmethod
    def _diagonal_blocks(cls, mat: Tensor) -> tuple[Tensor, Tensor]:
        """Gather the ``(N, b, b)`` full diagonal blocks of ``mat`` and view its last block.

        Reads only the :math:`N b^2 + r^2` entries of the diagonal blocks.
        """
        b = cls._require_block_size()
        count = mat.shape[0] // b
        offsets = torch.arange(count, device=mat.device).mul_(b).view(count, 1, 1)
        local = torch.arange(b, device=mat.device)
        rows = offsets + local.view(1, b, 1)
        cols = offsets + local.view(1, 1, b)
        start = count * b
        return mat[rows, cols], mat[start:, start:]

    def to_dense(self) -> Tensor:
        """Assemble the ``d x d`` block-diagonal matrix (a stack: one per member)."""
        if not self.batch_shape:
            return torch.block_diag(*self.blocks.unbind(0), self.last_block)
        return self._members_to_dense()

    # ---------------------------------------------------------------- kernels
    def _products(self) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """The products for the full blocks and for the last block.

        ``bmm`` and ``mm`` for a member; ``matmul`` (over the batch dimensions too) for a
        stack.
        """
        return (torch.matmul, torch.matmul) if self._batch_shape else (torch.bmm, torch.mm)

    def _matmul(self, other: BlockDiagonal) -> BlockDiagonal:
        """Blockwise product :math:`K_i K'_i`, :math:`O(d b^2)`."""
        last, (blockwise, single) = self.last_block, self._products()
        return self._like(
            blocks=blockwise(self.blocks, other.blocks),
            last_block=single(last, other.last_block) if last.numel() else last,
        )

    def _matmat(self, X: Tensor) -> Tensor:
        """Batched product of each block with its rows of ``X``, :math:`O(d b n)`.

        Without autograd the batched products are written straight into the result,
        with no copy to join them; any layout of ``X`` (and of the blocks, which are
        transposed views in a transpose) is read in place. A stack's products are
        joined (its row blocks are not one view of the result).
        """
        blocks, last, (blockwise, single) = self.blocks, self.last_block, self._products()
        X_blocks, X_last = self._split_rows(X)
        if self._batch_shape or writes_forbidden(blocks, last, X):
            return self._join_rows(blockwise(blocks, X_blocks), single(last, X_last))
        out = X.new_empty(X.shape)
        out_blocks, out_last = self._split_rows(out)
        torch.bmm(blocks, X_blocks, out=out_blocks)
        if last.numel():
            torch.mm(last, X_last, out=out_last)
        return out

    def _transpose(self) -> BlockDiagonal:
        """Transpose every block (views, no copy)."""
        transposed = {"blocks": self.blocks.mT, "last_block": self.last_block.mT}
        return self._from_checked(self.shape, transposed, self._batch_shape)

    def _diag(self) -> Tensor:
        heads = self.blocks.diagonal(dim1=-2, dim2=-1)
        return torch.cat(
            [heads.reshape(*heads.shape[:-2], -1), self.last_block.diagonal(dim1=-2, dim2=-1)],
            -1,
        )

    def _trace(self, mean: bool) -> Tensor:
        """Sum of the blocks' diagonals without assembling the diagonal (half types: default)."""
        if self.blocks.dtype in HALF_TYPES:
            return super()._trace(mean)
        total = self.blocks.diagonal(dim1=-2, dim2=-1).sum((-2, -1))
        last = self.last_block
        if last.numel():
            last_trace = last.diagonal(dim1=-2, dim2=-1).sum(-1) if last.ndim > 2 else last.trace()
            total = total.add_(last_trace)
        return total.div_(self.shape[0]) if mean else total

    def _diag_add_(self, value: Scalar) -> None:
        heads = self.blocks.diagonal(dim1=-2, dim2=-1)
        heads.add_(self.per_member(value, heads))
        if self.last_block.numel():
            last = self.last_block.diagonal(dim1=-2, dim2=-1)
            last.add_(self.per_member(value, last))

    def _inv(self) -> BlockDiagonal:
        """Batched dense inverse of the blocks, :math:`O(d b^2)`.

        Raises:
            SingularMatrixError: If any block is singular.
        """
        what = f"{type(self).__name__} matrix (a diagonal block)"
        return type(self)(
            blocks=dense_inverse(self.blocks, what),
            last_block=dense_inverse(self.last_block, what),
        )

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> BlockDiagonal:
        r"""Diagonal blocks :math:`X_i X_i^\top` of :math:`X X^\top`, :math:`O(d b n)`."""
        b = cls._require_block_size()
        count = X.shape[0] // b
        X_blocks = X[: count * b].reshape(count, b, X.shape[1])
        X_last = X[count * b :]
        return cls(blocks=block_grams(X_blocks), last_block=X_last @ X_last.mT)

    def _from_inner(self, X: Tensor) -> BlockDiagonal:
        r"""Blocks :math:`(K_i^\top X_i)(K_i^\top X_i)^\top`, :math:`O(d b n)`.

        For ``n >= 2 b`` columns as :math:`K_i^\top (X_i X_i^\top) K_i`:
        :math:`d b n + 2 d b^2` multiply-adds instead of :math:`2 d b n`, and no
        ``d x n`` intermediate. The :math:`X_i X_i^\top` of small blocks are formed through
        larger ones (:func:`block_grams`).
        """
        X_blocks, X_last = self._split_rows(X)
        blocks, last = self.blocks, self.last_block
        if X.shape[1] >= 2 * self.block_size:
            return self._like(
                blocks=torch.bmm(torch.bmm(blocks.mT, block_grams(X_blocks)), blocks),
                last_block=last.mT @ (X_last @ X_last.mT) @ last if last.numel() else last,
            )
        S_blocks = torch.bmm(blocks.mT, X_blocks)
        S_last = torch.mm(last.mT, X_last)
        return self._like(
            blocks=torch.bmm(S_blocks, S_blocks.mT), last_block=torch.mm(S_last, S_last.mT)
        )

    def _from_inner_identity(self) -> BlockDiagonal:
        r""":math:`A^\top A` is blockdiag(:math:`K_i^\top K_i`), :math:`O(d b^2)`."""
        last, (blockwise, single) = self.last_block, self._products()
        return self._like(
            blocks=blockwise(self.blocks.mT, self.blocks),
            last_block=single(last.mT, last) if last.numel() else last,
        )

    def _from_inner2(self, XXT: Tensor) -> BlockDiagonal:
        r"""Blocks :math:`K_i^\top M_{ii} K_i` of the diagonal blocks of ``M``, :math:`O(d b^2)`."""
        M_blocks, M_last = self._diagonal_blocks(XXT)
        return type(self)(
            blocks=self.blocks.mT @ M_blocks @ self.blocks,
            last_block=self.last_block.mT @ M_last @ self.last_block,
        )

    def _from_inner_diagonal(self, values: Tensor) -> BlockDiagonal:
        # blockwise B^T diag(v_b) B: O(d b^2)
        blocks, last = self.blocks, self.last_block
        count = blocks.shape[0] * blocks.shape[-1]
        head = values[:count].reshape(blocks.shape[:2]).unsqueeze(-1)
        tail = values[count:].unsqueeze(-1)
        return type(self)(blocks.mT @ (head * blocks), last.mT @ (tail * last))

    def _symmetric_eigen(self) -> tuple[Tensor, Callable[[Tensor], BlockDiagonal]]:
        """A batched symmetric eigendecomposition of the blocks, :math:`O(d b^2)`."""
        blocks, last = self.blocks, self.last_block
        values, vectors = torch.linalg.eigh(0.5 * (blocks + blocks.mT))
        last_values, last_vectors = torch.linalg.eigh(0.5 * (last + last.mT))
        count = blocks.shape[0] * blocks.shape[-1]
        cls = type(self)

        def compose(new_values: Tensor) -> BlockDiagonal:
            new_values = new_values.to(vectors.dtype)
            head = new_values[:count].reshape(values.shape).unsqueeze(-2)
            tail = new_values[count:]
            return cls((vectors * head) @ vectors.mT, (last_vectors * tail) @ last_vectors.mT)

        return torch.cat([values.reshape(-1), last_values]), compose


#: Blocks smaller than this (dividing it) get their Gram matrices :math:`X_i X_i^\top` as
#: the diagonal blocks of super-blocks of this size (see :func:`block_grams`) ...
SUPER_BLOCK = 16
#: ... for operands with at least this many columns.
SUPER_BLOCK_MIN_COLUMNS = 256


def block_grams(X_blocks: Tensor) -> Tensor:
    r"""Return :math:`X_i X_i^\top` for ``X_blocks`` of shape ``(N, b, n)``: ``(N, b, b)``.

    A batched product of ``b x n`` by ``n x b`` matrices with small ``b`` runs far
    below the BLAS's speed: measured on one CPU thread (float32, the transposed operands
    of an optimizer step), ``b = 8`` took 165 us at ``N = 8, n = 2048`` where the
    products of the ``N / 2`` super-blocks of 16 rows took 77 us (twice the
    multiply-adds), ``b = 4``, ``N = 36``, ``n = 544``: 99 us against 52 us for
    super-blocks of 16; at ``n = 32`` the super-blocks were slower. So for ``b <``
    :data:`SUPER_BLOCK` dividing it, ``N`` a multiple of ``SUPER_BLOCK / b`` and ``n >=``
    :data:`SUPER_BLOCK_MIN_COLUMNS`, the super-blocks' Gram matrices are formed and
    their diagonal blocks kept; otherwise one batched product.

    Complexity:
        :math:`N b^2 n` multiply-adds, or :math:`N b s n` through the super-blocks of
        size :math:`s` (:data:`SUPER_BLOCK`).
    """
    count, b, n = X_blocks.shape
    group = SUPER_BLOCK // b
    if b >= SUPER_BLOCK or SUPER_BLOCK % b or count % group or n < SUPER_BLOCK_MIN_COLUMNS:
        return torch.bmm(X_blocks, X_blocks.mT)
    supers = X_blocks.reshape(count // group, SUPER_BLOCK, n)
    grams = torch.bmm(supers, supers.mT).view(count // group, group, b, group, b)
    # (G, g, b, g, b) -> the g diagonal (b, b) blocks of each super-block
    return grams.diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(count, b, b)


register_family(r"block(\d+)diagonal", BlockDiagonal.with_block_size, "block{b}diagonal")

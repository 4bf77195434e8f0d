r"""Curvature of a Kronecker block accumulated over backward passes (and processes).

Each recorded call :math:`i` gives :math:`H_K^{(i)}` (a mean over its :math:`n_i` input
rows) and :math:`H_C^{(i)}` (scaled for the :math:`N_i` loss terms of a mean loss, see
:mod:`singd_opt.layers.base`). Within one process, the losses of the backward passes
between two optimizer steps add up to the step's loss (gradient accumulation: each
pass's loss is its share of the full mean), so the result equals one pass over the
union of the mini-batches when

.. math::
    H_K = \frac{\sum_i n_i H_K^{(i)}}{\sum_i n_i}, \qquad
    H_C = N \sum_i \frac{H_C^{(i)}}{N_i} \text{ (mean loss)}, \qquad
    H_C = \sum_i H_C^{(i)} \text{ (summed loss)},

with :math:`N = \sum_i N_i`. :class:`CurvatureSums` merges the calls of one process that way.

Across processes of a data-parallel run, each process's loss is the mean (or sum)
over its own samples, the loss of one process over all samples. With
:math:`H_K^{(r)}, H_C^{(r)}` the merged curvature of process :math:`r`, the exact
combination is weighted by the numbers of loss terms,
:math:`H_C = \sum_r N_r H_C^{(r)} / \sum_r N_r` (mean loss) or
:math:`\sum_r H_C^{(r)}` (summed loss), and :math:`H_K` by the numbers of rows. Both are
sums of per-process quantities (:meth:`CurvatureSums.reducible`): one all-reduce
combines them (:mod:`singd_opt.distributed`).
"""

from __future__ import annotations

from torch import Tensor

from structmat import StructuredMatrix


class CurvatureSums:
    r"""The curvature :math:`H_K, H_C` of the calls recorded since the last update.

    Stores the merged :math:`H_K` and :math:`H_C` themselves (a single call's terms
    are kept as they are), merging each further call by the weighted means above.

    Attributes:
        H_K: The merged :math:`H_K`.
        H_C: The merged :math:`H_C` (before any gradient un-scaling).
        rows: :math:`\sum_i n_i`.
        terms: :math:`N = \sum_i N_i` (the number of loss terms, 1 per call for a sum).
        mean_loss: Whether the loss is a mean (``loss_average`` is not ``None``).
    """

    def __init__(
        self,
        H_K: StructuredMatrix,
        H_C: StructuredMatrix,
        rows: int,
        terms: int,
        mean_loss: bool,
    ) -> None:
        """Start with one call's terms (``H_K, H_C`` are taken over, not copied).

        Args:
            H_K: The call's :math:`H_K` (mean over its ``rows`` input rows).
            H_C: The call's :math:`H_C` (scaled for ``terms`` loss terms).
            rows: Number of rows of the call's input matrix.
            terms: Number of loss terms the call's :math:`H_C` was scaled for.
            mean_loss: Whether the loss is a mean.
        """
        self.H_K = H_K
        self.H_C = H_C
        self.rows = rows
        self.terms = terms
        self.mean_loss = mean_loss

    def add(self, H_K: StructuredMatrix, H_C: StructuredMatrix, rows: int, terms: int) -> None:
        """Merge one more call's terms (see :meth:`__init__`)."""
        total_rows = self.rows + rows
        self.H_K.mul_(self.rows / total_rows).add_(H_K, alpha=rows / total_rows)
        total_terms = self.terms + terms
        if self.mean_loss:
            self.H_C.mul_(total_terms / self.terms).add_(H_C, alpha=total_terms / terms)
        else:
            self.H_C.add_(H_C)
        self.rows, self.terms = total_rows, total_terms

    def tensors(self) -> list[Tensor]:
        """Return the stored tensors of ``H_K`` and ``H_C``."""
        return [*self.H_K.tensors().values(), *self.H_C.tensors().values()]

    def reducible(self) -> tuple[list[Tensor], list[float]]:
        r"""Turn this process's terms into summands of a cross-process sum, in place.

        ``H_K`` becomes :math:`n_r H_K^{(r)}` and ``H_C`` becomes
        :math:`N_r H_C^{(r)}` (mean loss) or stays :math:`H_C^{(r)}` (summed loss);
        the counts are ``[n_r, N_r]``. After the tensors and counts are summed over
        the processes, :meth:`set_reduced` divides by the totals.

        Returns:
            The tensors (to be summed in place) and the counts.
        """
        self.H_K.mul_(float(self.rows))
        if self.mean_loss:
            self.H_C.mul_(float(self.terms))
        return self.tensors(), [float(self.rows), float(self.terms)]

    def set_reduced(self, counts: list[float]) -> None:
        """Divide the summed tensors by the summed counts (after :meth:`reducible`).

        Args:
            counts: The summed counts ``[rows, terms]``.
        """
        rows, terms = round(counts[0]), round(counts[1])
        self.H_K.mul_(1.0 / rows)
        if self.mean_loss:
            self.H_C.mul_(1.0 / terms)
        self.rows, self.terms = rows, terms

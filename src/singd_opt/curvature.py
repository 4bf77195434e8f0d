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

with :math:`N = \sum_i N_i`. :class:`CurvatureSums` merges the backward passes of one
process that way.

Within one backward pass, a weight used by several calls (a layer applied twice in one
forward pass, like weight sharing over sequence positions) contributes like one call
on the calls' inputs stacked as extra positions: :math:`H_K` is the mean over all their
rows, and :math:`H_C` the sum of the calls' :math:`H_C^{(i)}` (the loss terms are those
of the one loss, counted once, taken from the first call). Calls belong to the same
backward pass when autograd runs their hooks in the same graph task.

Across the :math:`R` processes of a data-parallel run the same rule holds one level up:
the loss being minimised is the *average* of the processes' losses (data-parallel
gradients are averaged), each process's loss being the sum of its backward passes'
losses. That is the one-process loss when every process computes the mean over its
own samples from shards of equal size; with shards of sizes :math:`B_r` a process
scales its mean loss by :math:`R B_r / B` (the usual data-parallel convention, which
makes the averaged gradient exact), and a summed loss by :math:`R`. Then, with
:math:`H_K^{(r)}, H_C^{(r)}, n_r, N_r` the merged terms and counts of process
:math:`r`,

.. math::
    H_K = \frac{\sum_r n_r H_K^{(r)}}{\sum_r n_r}, \qquad
    H_C = \frac{N}{R^2} \sum_r \frac{H_C^{(r)}}{N_r} \text{ (mean loss)}, \qquad
    H_C = \frac{1}{R^2} \sum_r H_C^{(r)} \text{ (summed loss)},

with :math:`N = \sum_r N_r`: sums of per-process quantities
(:meth:`CurvatureSums.reducible`), so one all-reduce combines them
(:mod:`singd_opt.distributed`).
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
        row_count: :math:`\sum_i n_i`.
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
        backward_pass: int | None = None,
    ) -> None:
        """Start with one call's terms (``H_K, H_C`` are taken over, not copied).

        Args:
            H_K: The call's :math:`H_K` (mean over its ``rows`` input rows).
            H_C: The call's :math:`H_C` (scaled for ``terms`` loss terms).
            rows: Number of rows of the call's input matrix.
            terms: Number of loss terms the call's :math:`H_C` was scaled for.
            mean_loss: Whether the loss is a mean.
            backward_pass: Identifies the backward pass of the call (``None``: unknown).
        """
        self.H_K = H_K
        self.H_C = H_C
        self.row_count = rows
        self.terms = terms
        self.mean_loss = mean_loss
        self._pass = backward_pass
        self._pass_terms = terms

    def add(
        self,
        H_K: StructuredMatrix,
        H_C: StructuredMatrix,
        rows: int,
        terms: int,
        backward_pass: int | None = None,
    ) -> None:
        """Merge one more call's terms (see :meth:`__init__`)."""
        total_rows = self.row_count + rows
        self.H_K.mul_(self.row_count / total_rows).add_(H_K, alpha=rows / total_rows)
        self.row_count = total_rows
        if backward_pass is not None and backward_pass == self._pass:
            # another call in the same pass: its H_C adds to this pass's, whose weight
            # in the merged H_C is N / N_p
            self.H_C.add_(H_C, alpha=self.terms / self._pass_terms if self.mean_loss else 1.0)
            return
        total_terms = self.terms + terms
        if self.mean_loss:
            self.H_C.mul_(total_terms / self.terms).add_(H_C, alpha=total_terms / terms)
        else:
            self.H_C.add_(H_C)
        self.terms = total_terms
        self._pass, self._pass_terms = backward_pass, terms

    def tensors(self) -> list[Tensor]:
        """Return the stored tensors of ``H_K`` and ``H_C``."""
        return [*self.H_K.tensors().values(), *self.H_C.tensors().values()]

    def reducible(self) -> tuple[list[Tensor], list[float]]:
        r"""Turn this process's terms into summands of a cross-process sum, in place.

        ``H_K`` becomes :math:`n_r H_K^{(r)}` and ``H_C`` becomes
        :math:`H_C^{(r)} / N_r` (mean loss) or stays :math:`H_C^{(r)}` (summed loss);
        the counts are ``[n_r, N_r]``. After the tensors and counts are summed over
        the processes, :meth:`set_reduced` finishes the combination.

        Returns:
            The tensors (to be summed in place) and the counts.
        """
        self.H_K.mul_(float(self.row_count))
        if self.mean_loss:
            self.H_C.mul_(1.0 / self.terms)
        return self.tensors(), [float(self.row_count), float(self.terms)]

    def set_reduced(self, counts: list[float], processes: int) -> None:
        """Finish the combination of :meth:`reducible`'s summed tensors and counts.

        Args:
            counts: The summed counts ``[rows, terms]``.
            processes: The number :math:`R` of processes.
        """
        rows, terms = round(counts[0]), round(counts[1])
        self.H_K.mul_(1.0 / rows)
        scale = (terms if self.mean_loss else 1.0) / processes**2
        if scale != 1.0:
            self.H_C.mul_(scale)
        self.row_count, self.terms = rows, terms

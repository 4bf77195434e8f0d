r"""The preconditioner block: the unit the optimizer loops over.

A block owns a set of parameters (or blocks of rows of parameters) and the state of
their preconditioner. Each optimizer step asks every block, in two phases:

1. :meth:`PreconditionerBlock.propose`: compute, without changing any state, the
   block's new preconditioner (on update steps) and its preconditioned gradients
   (the *directions*);
2. :meth:`Proposal.commit`: make the new preconditioner the block's state.

Between the two phases the optimizer checks every proposed tensor for finiteness at
once (one device-to-host synchronisation per step) and drops the whole step if one
is not finite. What the optimizer then does with a direction :math:`N` of parameter
:math:`\theta` is the same for every block (momentum :math:`\mu`, weight decay
:math:`\gamma`, learning rate :math:`\beta_2`):

.. math::
    b \leftarrow \mu b + N + \gamma \theta, \qquad \theta \leftarrow \theta - \beta_2 b.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from singd_opt.layers import ParameterRows
from structmat import StructuredMatrix


@dataclass(frozen=True)
class StepContext:
    """What a block needs to know about the current step.

    Attributes:
        step: Number of optimizer steps taken before this one.
        grad_factor: The factor the ``.grad`` tensors carry (a gradient scaler's
            scale, else 1); directions are computed from ``grad / grad_factor``.
        grad_unscaling: Factor that finishes un-scaling the recorded output-side
            curvature of this step (see :mod:`singd_opt.grad_scale`).
        gradients: The full gradients of sharded parameters, to be used instead of
            their ``.grad`` (``None`` without sharding).
    """

    step: int
    grad_factor: float = 1.0
    grad_unscaling: float = 1.0
    gradients: Mapping[nn.Parameter, Tensor] | None = None


@dataclass
class Proposal:
    """A block's proposed step: directions and a new state, not yet committed.

    Attributes:
        directions: ``(parameter rows, direction)`` for every parameter with a gradient.
        checked: Tensors that must be finite for the step to be taken (the new
            preconditioner's and the directions).
        commit: Makes the proposed preconditioner the block's state.
        matrices: Structured matrices other processes need to follow the step (the new
            momenta ``m_K``, ``m_C`` of an updated Kronecker block), by name.
    """

    directions: list[tuple[ParameterRows, Tensor]]
    checked: list[Tensor] = field(default_factory=list)
    commit: Callable[[], None] = lambda: None
    matrices: dict[str, StructuredMatrix] = field(default_factory=dict)


class PreconditionerBlock(ABC):
    """The preconditioner of a set of parameters.

    Attributes:
        kind: Short name of the block type (``"kronecker"``, ``"elementwise"``).
        name: The block's name (the layer's or the parameter's name in the model).
        params: The parameters (or their blocks of rows) the block preconditions.
        group_index: Index of the parameter group that holds the parameters.
        recording: Whether the block records curvature in the current step (set by
            the optimizer before each step's forward pass; the only value the
            recording hooks read).
    """

    kind: ClassVar[str]

    def __init__(self, name: str, params: tuple[ParameterRows, ...], group_index: int) -> None:
        self.name = name
        self.params = params
        self.group_index = group_index
        self.recording = False

    @property
    def effective(self) -> PreconditionerBlock:
        """The block that does the work (a deferred block's choice; else itself)."""
        return self

    # ------------------------------------------------------------- curvature
    def has_curvature(self) -> bool:
        """Whether curvature was recorded since the last preconditioner update."""
        return False

    def curvature_tensors(self) -> list[Tensor]:
        """The tensors of the curvature recorded since the last update (for checks)."""
        return []

    def drop_curvature(self) -> None:  # noqa: B027 (blocks without curvature keep none)
        """Forget the curvature recorded since the last update."""

    # ------------------------------------------------------------------ step
    @abstractmethod
    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """Return the directions and the new state of this step, changing nothing.

        Args:
            group: The block's parameter group (hyper-parameters).
            context: The step.
        """

    # ---------------------------------------------------------------- state
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Return the block's state: tensors (the live ones) and plain values."""

    @abstractmethod
    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], None]:
        """Validate ``state`` and return a function that loads it.

        Nothing changes until the returned function is called, so an optimizer can
        validate every block before loading any.

        Args:
            state: An entry written by :meth:`state_dict`.
            group: The (new) parameter group of the block.

        Raises:
            ValueError: If ``state`` does not fit this block.
        """

    @abstractmethod
    def state_tensors(self) -> list[Tensor]:
        """Return every tensor of the block's state (for memory accounting)."""

    def describe(self) -> dict[str, Any]:
        """Return a summary: kind, parameter shapes and structures."""
        return {"kind": self.kind}

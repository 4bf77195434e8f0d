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
from collections.abc import Callable, Hashable, Mapping
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
        directions: ``(parameter rows, direction)`` for every parameter with a gradient,
            in the order of :meth:`PreconditionerBlock.gradient_rows`.
        checked: Tensors that must be finite for the step to be taken (the new
            preconditioner's and the directions).
        commit: Makes the proposed preconditioner the block's state.
        shared: What other processes need to follow the step when they receive it
            instead of computing it (``distribute="split"``): tensors laid out like
            :meth:`PreconditionerBlock.shared_buffers`, or ``None`` when the step
            changed nothing they cannot compute themselves.
        replacement: The block that takes this block's place once the step is taken
            (a deferred block's choice), else ``None``.
    """

    directions: list[tuple[ParameterRows, Tensor]]
    checked: list[Tensor] = field(default_factory=list)
    commit: Callable[[], None] = lambda: None
    shared: list[Tensor] | None = None
    replacement: PreconditionerBlock | None = None


class PreconditionerBlock(ABC):
    """The preconditioner of a set of parameters, and all of its state.

    Consumers (the optimizer, the distributor, summaries) use only this interface;
    facts about a block are declared as class attributes.

    Attributes:
        kind: Short name of the block type (``"kronecker"``, ``"elementwise"``).
        splittable: Whether one process can do the block's work and hand the result to
            the others (``distribute="split"``); else every process does it.
        mixes_rows: Whether a direction mixes the rows of the gradient, so that a
            sharded parameter needs its whole gradient.
        batch_min_size: The fewest blocks of one :meth:`batch_key` that are proposed
            together (:meth:`propose_batch`); fewer go one by one.
        name: The block's name (the layer's or the parameter's name in the model).
        params: The parameters (or their blocks of rows) the block preconditions.
        group_index: Index of the parameter group that holds the parameters.
        recording: Whether the block records curvature in the current step (set by
            the optimizer before each step's forward pass; the only value the
            recording hooks read).
        origin: The block the optimizer created for these parameters, which saves and
            loads their state (the block itself, unless it replaced another).
    """

    kind: ClassVar[str]
    batch_min_size: ClassVar[int] = 2
    splittable: ClassVar[bool] = False
    mixes_rows: ClassVar[bool] = False

    def __init__(self, name: str, params: tuple[ParameterRows, ...], group_index: int) -> None:
        self.name = name
        self.params = params
        self.group_index = group_index
        self.recording = False
        self.origin: PreconditionerBlock = self

    def for_step(self) -> PreconditionerBlock:
        """The block that does this step's work: this one, or the block it turns into.

        A block that turns into another (a deferred block's choice) returns that
        block; the optimizer puts it in this block's place once the step is taken,
        and forgets it (:meth:`drop_curvature`) when the step is skipped.
        """
        return self

    def gradient_rows(self) -> list[ParameterRows]:
        """The parameters (rows) that have a gradient now: the order of the directions."""
        return [rows for rows in self.params if rows.param.grad is not None]

    # -------------------------------------------------------------- decisions
    def decision(self) -> Tensor | None:
        """What this process saw that every process must decide on alike, or ``None``.

        A block with an open decision (a choice that depends on what was recorded,
        which processes recording different data could make differently) returns a
        float64 vector of a length fixed at construction; the same blocks return one
        on every process of a step. The processes then gather their vectors and hand
        them all to :meth:`decide` before anything else of the step happens.
        """
        return None

    def decide(self, seen: list[Tensor]) -> None:  # noqa: B027 (most blocks decide nothing)
        """Make the decision from what every process saw (the same on every process).

        Args:
            seen: :meth:`decision` of every process, by rank.

        Raises:
            ValueError: If the processes saw things that no decision can reconcile.
        """

    # ------------------------------------------------------------- curvature
    def record(
        self,
        x: Tensor,
        grad_output: Tensor,
        group: Mapping[str, Any],
        grad_prescale: float = 1.0,
    ) -> None:
        """Add one recorded call (input and output gradient) to the block's curvature.

        Only blocks with recording hooks receive calls.

        Raises:
            TypeError: For a block that records no curvature.
        """
        raise TypeError(f"a {self.kind} block records no curvature")

    def has_curvature(self) -> bool:
        """Whether curvature was recorded since the last preconditioner update."""
        return False

    def drop_curvature(self) -> None:  # noqa: B027 (blocks without curvature keep none)
        """Forget the curvature recorded since the last update."""

    def lacks_curvature(self) -> bool:
        """Whether the block should have recorded curvature for its first update and did not.

        Read on recording steps, before the update (for the unrecorded-layer warning).
        """
        return False

    def curvature_buffers(self) -> list[Tensor]:
        """Templates (shape, dtype, device) of the curvature summed over processes.

        Empty for a block that does not record in this step.
        """
        return []

    def reducible_curvature(self) -> list[Tensor] | None:
        """This process's summands of the curvature summed over processes.

        May change the recorded curvature in place; ``None`` when nothing was
        recorded here (the process then contributes zeros).
        """
        return None

    def set_reduced_curvature(  # noqa: B027 (blocks without curvature keep none)
        self, sums: list[Tensor], processes: int, group: Mapping[str, Any]
    ) -> None:
        """Adopt the summed curvature (views into buffers of this step, which it may keep).

        Args:
            sums: The sums, laid out like :meth:`curvature_buffers`.
            processes: Number of processes summed over.
            group: The block's parameter group.
        """

    # ------------------------------------------------------------------ step
    @abstractmethod
    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """Return the directions and the new state of this step, changing nothing.

        Args:
            group: The block's parameter group (hyper-parameters).
            context: The step.
        """

    def batch_key(self, group: Mapping[str, Any], context: StepContext) -> Hashable | None:
        """A key shared by the blocks this one can be proposed together with, or ``None``.

        Blocks of one parameter group whose keys are equal (and not ``None``) are
        proposed by one :meth:`propose_batch` call; by default every block goes alone.
        """
        return None

    def propose_batch(
        self, blocks: list[PreconditionerBlock], group: Mapping[str, Any], context: StepContext
    ) -> list[Proposal]:
        """Return the proposals of ``blocks``, equal to each one's :meth:`propose`.

        ``blocks`` hold this one and share its :meth:`batch_key`. The default proposes
        one block after the other.
        """
        return [block.propose(group, context) for block in blocks]

    def shared_buffers(self) -> list[Tensor]:
        """Templates of what a proposal shares (:attr:`Proposal.shared`) in this step."""
        return []

    def received(
        self,
        directions: list[tuple[ParameterRows, Tensor]],
        shared: list[Tensor] | None,
        group: Mapping[str, Any],
        context: StepContext,
    ) -> Proposal:
        """The proposal of this block from the process that computed it.

        Args:
            directions: That process's directions.
            shared: That proposal's :attr:`Proposal.shared` (views into buffers of
                this step, which the block may keep).
            group: The block's parameter group.
            context: The step.

        Raises:
            TypeError: For a block that is not :attr:`splittable`.
        """
        raise TypeError(f"a {self.kind} block is computed by every process")

    def learning_rate(self, group: Mapping[str, Any]) -> float:
        """The learning rate of the block's directions in ``group``."""
        return float(group["lr"])

    def cost(self) -> float:
        """Estimated multiply-adds of one preconditioner update and one direction."""
        return 0.0

    # ---------------------------------------------------------------- state
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Return the block's state: tensors (the live ones) and plain values.

        The optimizer saves and loads through :attr:`origin`.
        """

    def settled_state_dict(self) -> dict[str, Any]:
        """:attr:`origin`'s state as of the last taken step, without what was recorded since.

        What every process holds alike (the curvature recorded since the last step is
        each process's own share). Called on the block in the optimizer's list; a
        block that keeps nothing between the backward pass and the step needs no
        override.
        """
        return self.origin.state_dict()

    @abstractmethod
    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        """Validate ``state`` and return a function that loads it.

        Nothing changes until the returned function is called, so an optimizer can
        validate every block before loading any. The function returns the block that
        holds the loaded state (this one, or the block a deferred block had chosen).

        Args:
            state: An entry written by :meth:`state_dict`.
            group: The (new) parameter group of the block.

        Raises:
            ValueError: If ``state`` does not fit this block.
        """

    @abstractmethod
    def state_tensors(self) -> list[Tensor]:
        """Return every tensor of the block's state (for memory accounting)."""

    def matrices(self) -> dict[str, StructuredMatrix]:
        """The block's structured matrices by name (none for most blocks)."""
        return {}

    def pending_curvature(self) -> tuple[StructuredMatrix, StructuredMatrix, int, int] | None:
        """``(H_K, H_C, rows, terms)`` recorded since the last update, if the block keeps such."""
        return None

    def oversized(self, multiple: float, min_bytes: int) -> str | None:
        """A line about the block if its preconditioner keeps more than ``multiple`` x its weight.

        Args:
            multiple: The stated multiple of the parameters' bytes.
            min_bytes: Preconditioners of at most this many bytes are never reported.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Return a summary: ``kind`` and ``preconditioner`` (texts) and kind-specific facts."""
        return {"kind": self.kind, "preconditioner": ""}

"""Read-only views of the Kronecker blocks' state, keyed by block name.

The reference optimizer exposes ``Ks``, ``Cs``, ``m_Ks``, ``m_Cs`` and the pending
curvature ``H_Ks``, ``H_Cs`` as dictionaries keyed by layer name; these views keep
that interface on top of the blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from singd_opt.blocks import PreconditionerBlock
from singd_opt.summary import describe_blocks, total_state_bytes
from structmat import StructuredMatrix, get_structure


class StructureTable(Mapping[str, type[StructuredMatrix]]):
    """Read-only mapping from the standard structure names to their structmat classes.

    Classes are looked up in the structmat registry on access.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = tuple(names)

    def __getitem__(self, name: str) -> type[StructuredMatrix]:
        if name not in self._names:
            raise KeyError(name)
        return get_structure(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"StructureTable({list(self._names)})"


#: The structure names SINGD documents as standard (any registered name is accepted).
STANDARD_STRUCTURES = StructureTable(
    ("dense", "diagonal", "block30diagonal", "hierarchical15_15", "triltoeplitz", "triutoeplitz")
)


class BlockViews:
    """Views of the blocks: their matrices by block name (new dicts per access), a table, bytes."""

    blocks: list[PreconditionerBlock]

    def describe(self) -> str:
        """Return a table of the blocks: parameters, kind, structures and state bytes."""
        return describe_blocks(self)

    def state_bytes(self) -> int:
        """Bytes of the whole optimizer state (each storage once, cached products included)."""
        return total_state_bytes(self)

    def _matrices(self, key: str) -> dict[str, StructuredMatrix]:
        found = {}
        for block in self.blocks:
            matrix = block.matrices().get(key)
            if matrix is not None:
                found[block.name] = matrix
        return found

    def _pending(self) -> dict[str, tuple[StructuredMatrix, StructuredMatrix, int, int]]:
        found = {}
        for block in self.blocks:
            pending = block.pending_curvature()
            if pending is not None:
                found[block.name] = pending
        return found

    @property
    def Ks(self) -> dict[str, StructuredMatrix]:
        """The input-side factors ``K`` by block name."""
        return self._matrices("K")

    @property
    def Cs(self) -> dict[str, StructuredMatrix]:
        """The output-side factors ``C`` by block name."""
        return self._matrices("C")

    @property
    def m_Ks(self) -> dict[str, StructuredMatrix]:
        """The momenta of ``K`` by block name (empty when ``alpha1 == 0``)."""
        return self._matrices("m_K")

    @property
    def m_Cs(self) -> dict[str, StructuredMatrix]:
        """The momenta of ``C`` by block name (empty when ``alpha1 == 0``)."""
        return self._matrices("m_C")

    @property
    def H_Ks(self) -> dict[str, StructuredMatrix]:
        """Curvature :math:`H_K` recorded since the last update, by block name."""
        return {name: found[0] for name, found in self._pending().items()}

    @property
    def H_Cs(self) -> dict[str, StructuredMatrix]:
        """Curvature :math:`H_C` recorded since the last update, by block name."""
        return {name: found[1] for name, found in self._pending().items()}

    @property
    def H_counts(self) -> dict[str, tuple[int, int]]:
        """``(input rows, loss terms)`` behind :attr:`H_Ks` and :attr:`H_Cs`, by block name."""
        return {name: (found[2], found[3]) for name, found in self._pending().items()}

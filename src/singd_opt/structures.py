"""Looking up a structure by name, with errors that name the argument and the choices."""

from __future__ import annotations

from structmat import StructuredMatrix, available_structures, get_structure


def where(group_index: int | None) -> str:
    """`` (parameter group i)`` for messages about a group's value, else empty."""
    return "" if group_index is None else f" (parameter group {group_index})"


def resolve_structure(
    name: object, argument: str = "structures", group_index: int | None = None
) -> type[StructuredMatrix]:
    """Return the structmat class for a structure name.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If no structure has that name; the message lists the valid ones.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"{argument} entries must be structure names (str){where(group_index)}, got {name!r}"
        )
    try:
        return get_structure(name)
    except ValueError:
        raise ValueError(
            f"{argument}: unknown structure {name!r}{where(group_index)}; valid names are: "
            f"{', '.join(available_structures())}"
        ) from None

"""Look up structures by name, including parametric families such as ``block30diagonal``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from structmat.base import StructuredMatrix

C = TypeVar("C", bound=type)

_NAMED: dict[str, type[StructuredMatrix]] = {}
_FAMILIES: list[tuple[re.Pattern[str], Callable[..., type[StructuredMatrix]], str]] = []


def register(cls: C) -> C:
    """Class decorator: register ``cls`` under its ``name`` class attribute."""
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty string class attribute 'name'")
    if name in _NAMED and _NAMED[name] is not cls:
        raise ValueError(f"a structure named {name!r} is already registered")
    _NAMED[name] = cls
    return cls


def register_family(
    pattern: str, factory: Callable[..., type[StructuredMatrix]], template: str
) -> None:
    """Register a parametric family of structures.

    Args:
        pattern: Regular expression matched against the whole name; its groups are
            passed, converted to ``int``, to ``factory``.
        factory: Returns the structure class for the parsed integers.
        template: Human-readable form of the names, e.g. ``"block{b}diagonal"``.
    """
    _FAMILIES.append((re.compile(pattern), factory, template))


def available_structures() -> list[str]:
    """Return the registered names, with parametric families written as templates."""
    return sorted(_NAMED) + [template for _, _, template in _FAMILIES]


def get_structure(name: str) -> type[StructuredMatrix]:
    """Return the structure class registered as ``name``.

    Args:
        name: A fixed name (``"dense"``, ``"triltoeplitz"``, ...) or a member of a
            parametric family (``"block64diagonal"``, ``"hierarchical15_15"``, ...).

    Raises:
        ValueError: If ``name`` names no structure; the message lists the valid names.
    """
    if isinstance(name, str):
        if name in _NAMED:
            return _NAMED[name]
        for pattern, factory, _ in _FAMILIES:
            match = pattern.fullmatch(name)
            if match:
                try:
                    return factory(*(int(group) for group in match.groups()))
                except ValueError as error:
                    raise ValueError(
                        f"invalid structure {name!r} ({error}); valid names are: "
                        f"{', '.join(available_structures())}"
                    ) from error
    raise ValueError(
        f"unknown structure {name!r}; valid names are: {', '.join(available_structures())}"
    )

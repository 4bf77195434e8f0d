"""Look up structures by name, including parametric families such as ``block30diagonal``.

The registry is the one place that turns names into structure classes:

- :func:`register` records a class under its ``name``;
- :func:`register_family` records a parametric family (a name pattern and a factory);
- :func:`family_member` creates, once, the concrete class of a family for given
  parameters (``BlockDiagonal.with_block_size`` and ``Hierarchical.with_sizes`` use it);
- :func:`get_structure` resolves any of these names, and
  :meth:`~structmat.StructuredMatrix.transpose_structure` resolves a structure's
  declared ``transpose_name`` through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from structmat._storage import check_layout_determines_dimension

if TYPE_CHECKING:
    from structmat.base import StructuredMatrix

C = TypeVar("C", bound="type[StructuredMatrix]")

_NAMED: dict[str, type[StructuredMatrix]] = {}
_FAMILIES: list[tuple[re.Pattern[str], Callable[..., type[StructuredMatrix]], str]] = []
_MEMBERS: dict[tuple[type, str], type] = {}
_RESOLVED: dict[str, type[StructuredMatrix]] = {}


def register(cls: C) -> C:
    """Class decorator: register ``cls`` under its ``name`` class attribute.

    The stored shapes of a member must determine its dimension: ``tensor_shapes(d)``
    differs for every ``d`` and ``dim_from_shapes`` reads it back (checked here, see
    :func:`structmat._storage.check_layout_determines_dimension`).

    Raises:
        ValueError: If ``name`` is not a non-empty string or another class holds it.
        TypeError: If the stored shapes do not determine the dimension.
    """
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty string class attribute 'name'")
    if name in _NAMED and _NAMED[name] is not cls:
        raise ValueError(f"a structure named {name!r} is already registered")
    check_layout_determines_dimension(cls)
    _NAMED[name] = cls
    _RESOLVED.pop(name, None)
    return cls


def register_family(
    pattern: str, factory: Callable[..., type[StructuredMatrix]], template: str
) -> None:
    """Register a parametric family of structures.

    Args:
        pattern: Regular expression matched against the whole name; its groups are
            passed, converted to ``int``, to ``factory``.
        factory: Returns the structure class for the parsed integers (usually through
            :func:`family_member`); raises ``ValueError`` for invalid parameters.
        template: Human-readable form of the names, e.g. ``"block{b}diagonal"``.
    """
    _FAMILIES.append((re.compile(pattern), factory, template))
    _RESOLVED.clear()


def family_member(template: type[C], name: str, /, **attributes: Any) -> type[C]:
    """Return the concrete structure ``name`` of the family ``template`` (created once).

    The class derives from ``template`` and sets ``name`` and ``attributes`` as class
    attributes (the family parameters, and ``transpose_name`` where the transpose
    belongs to another family). Its instances pickle by ``(template, name,
    attributes)``, so the class need not be importable by its own name.

    Args:
        template: The family's template class (e.g. :class:`~structmat.BlockDiagonal`).
        name: The registry name of the member, e.g. ``"block30diagonal"``.
        **attributes: Class attributes of the member, e.g. ``block_size=30``.

    Returns:
        The member class; the same object for the same ``(template, name)``.
    """
    key = (template, name)
    member = _MEMBERS.get(key)
    if member is None:
        parameters = [str(attributes[key]) for key in template.parameters if key in attributes]
        class_name = template.__name__ + "_".join(parameters)
        namespace = {
            **attributes,
            "name": name,
            "family_template": template,
            "family_attributes": dict(attributes),
            "__module__": template.__module__,
            "__qualname__": class_name,
            "__doc__": f"The ``{name}`` member of :class:`{template.__name__}`; see there.",
        }
        member = type(class_name, (template,), namespace)
        check_layout_determines_dimension(member)
        _MEMBERS[key] = member
    return member


def rebuild_member(
    template: type, name: str, attributes: dict[str, Any], tensors: dict[str, Any]
) -> StructuredMatrix:
    """Unpickle a member of a family created by :func:`family_member`."""
    return family_member(template, name, **attributes)(**tensors)


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
        if name in _RESOLVED:
            return _RESOLVED[name]
        for pattern, factory, _ in _FAMILIES:
            match = pattern.fullmatch(name)
            if match:
                try:
                    cls = factory(*(int(group) for group in match.groups()))
                except ValueError as error:
                    raise ValueError(
                        f"invalid structure {name!r} ({error}); valid names are: "
                        f"{', '.join(available_structures())}"
                    ) from error
                _RESOLVED[name] = cls
                return cls
    raise ValueError(
        f"unknown structure {name!r}; valid names are: {', '.join(available_structures())}"
    )

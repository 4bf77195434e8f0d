"""The storage check shared by the constructors of every structure.

A structure declares its storage layout once, in
:meth:`~structmat.StructuredMatrix.tensor_shapes`. :func:`check_storage` validates the
tensors given to a constructor against it, in this order, and names the offending
argument in each error:

1. exactly the declared names are given (``TypeError``), each a
   :class:`torch.Tensor` (``TypeError``);
2. all tensors share the dtype and device of the first (``ValueError``);
3. the dtype is a floating one (``TypeError``);
4. every tensor has the declared number of dimensions (``ValueError``);
5. the shapes are those of ``tensor_shapes(d)`` for the dimension ``d`` that
   :meth:`~structmat.StructuredMatrix.dim_from_shapes` reads off them, and
   ``d >= 1`` (``ValueError``).

Steps 3 to 5 depend only on the structure, the dtype and the shapes, and their outcome
is cached, so a constructor call costs a few attribute reads per tensor once a layout
has been seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from structmat.base import StructuredMatrix

Shapes = tuple[tuple[int, ...], ...]


_LAYOUTS: dict[type, tuple[tuple[str, int], ...]] = {}
_NDIMS: dict[type, Mapping[str, int]] = {}
_SIZES: dict[tuple[object, ...], torch.Size] = {}
_MAX_CACHED_LAYOUTS = 4096
_MISSING = object()


def _wrong_names(
    cls: type[StructuredMatrix], layout: tuple[tuple[str, int], ...], tensors: Mapping[str, object]
) -> None:
    raise TypeError(
        f"{cls.__name__} stores the tensors {', '.join(name for name, _ in layout)}; "
        f"got {', '.join(tensors)}"
    )


def declared_ndims(cls: type[StructuredMatrix]) -> Mapping[str, int]:
    """Return ``{name: ndim}`` of the stored tensors of ``cls`` (the same for every ``d``).

    Made once per class (a read-only mapping).
    """
    ndims = _NDIMS.get(cls)
    if ndims is None:
        ndims = _NDIMS[cls] = MappingProxyType(dict(_declared_layout(cls)))
    return ndims


def _declared_layout(cls: type[StructuredMatrix]) -> tuple[tuple[str, int], ...]:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        shapes = cls.tensor_shapes(1)
        layout = _LAYOUTS[cls] = tuple((name, len(shape)) for name, shape in shapes.items())
    return layout


def check_storage(cls: type[StructuredMatrix], tensors: Mapping[str, object]) -> torch.Size:
    """Validate the constructor tensors of a member of ``cls``; return its shape ``(d, d)``.

    Args:
        cls: The structure.
        tensors: ``{name: tensor}`` as passed to the constructor.

    Returns:
        The shape ``torch.Size([d, d])`` of the member the tensors store.

    Raises:
        TypeError: If a value is not a floating-point tensor or the names differ from
            the declared ones.
        ValueError: If the number of dimensions, the dtype or device, or the shapes do
            not fit the declared layout, or they describe an empty matrix.
    """
    layout = _LAYOUTS.get(cls) or _declared_layout(cls)
    if len(tensors) != len(layout):
        _wrong_names(cls, layout, tensors)
    key: list[object] = [cls]
    first: Tensor | None = None
    for name, _ in layout:
        tensor = tensors.get(name, _MISSING)
        if not isinstance(tensor, Tensor):
            if tensor is _MISSING:
                _wrong_names(cls, layout, tensors)
            raise TypeError(
                f"{cls.__name__}: {name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if first is None:
            first = tensor
        elif tensor.dtype != first.dtype or tensor.device != first.device:
            for culprit, value in ((name, tensor), (layout[0][0], first)):
                if not value.is_floating_point():
                    raise TypeError(
                        f"{cls.__name__}: {culprit} must have a floating-point dtype, "
                        f"got {value.dtype}"
                    )
            raise ValueError(
                f"{cls.__name__}: {name} must have the dtype and device of {layout[0][0]} "
                f"({first.dtype}, {first.device}), got ({tensor.dtype}, {tensor.device})"
            )
        key.append(tensor.shape)
    assert first is not None
    key.append(first.dtype)
    cache_key = tuple(key)
    size = _SIZES.get(cache_key)
    if size is None:
        # first time for this structure, dtype and shapes: the full check
        if not first.is_floating_point():
            raise TypeError(
                f"{cls.__name__}: {layout[0][0]} must have a floating-point dtype, "
                f"got {first.dtype}"
            )
        shapes = tuple(tuple(shape) for shape in key[1:-1])  # type: ignore[arg-type]
        for (name, ndim), shape in zip(layout, shapes, strict=True):
            if len(shape) != ndim:
                raise ValueError(
                    f"{cls.__name__}: {name} must be a {ndim}-d tensor, got shape {shape}"
                )
        dim = layout_dimension(cls, shapes)
        if len(_SIZES) >= _MAX_CACHED_LAYOUTS:
            _SIZES.clear()
        size = _SIZES[cache_key] = torch.Size((dim, dim))
    return size


def layout_dimension(cls: type[StructuredMatrix], shapes: Shapes) -> int:
    """Return ``d`` such that ``cls.tensor_shapes(d)`` lists ``shapes`` (in declared order).

    Raises:
        ValueError: If no ``d >= 1`` fits; the message names the tensors whose shapes
            differ from the layout at the dimension the shapes suggest.
    """
    names = list(declared_ndims(cls))
    given = dict(zip(names, shapes, strict=True))
    dim = cls.dim_from_shapes(given)
    if dim < 1:
        raise ValueError(
            f"{cls.__name__}: the tensors ({', '.join(names)}) of shapes {shapes} describe a "
            f"{dim} x {dim} matrix; a member needs d >= 1"
        )
    expected = cls.tensor_shapes(dim)
    wrong = [name for name in names if tuple(expected[name]) != given[name]]
    if wrong:
        details = "; ".join(
            f"{name} must have shape {tuple(expected[name])}, got {given[name]}" for name in wrong
        )
        raise ValueError(
            f"{cls.__name__}: {details} (a {dim} x {dim} member stores "
            f"{', '.join(f'{name} {tuple(shape)}' for name, shape in expected.items())})"
        )
    return dim


#: Dimensions at which :func:`check_layout_determines_dimension` compares the layouts.
LAYOUT_CHECK_DIMS = (*range(1, 130), 255, 256, 257, 1000, 1001)


def check_layout_determines_dimension(
    cls: type[StructuredMatrix], dims: tuple[int, ...] = LAYOUT_CHECK_DIMS
) -> None:
    """Raise ``TypeError`` unless the stored shapes of ``cls`` determine the dimension.

    A member's size is read off its stored shapes (:attr:`~structmat.StructuredMatrix.shape`),
    so ``tensor_shapes(d)`` must differ for different ``d`` and ``dim_from_shapes`` must
    return ``d`` for them. Checked at the dimensions ``dims`` (every ``d`` up to 129
    and a few larger ones); :func:`~structmat.register` and
    :func:`~structmat.registry.family_member` call it.

    Raises:
        TypeError: If two dimensions share a layout, or ``dim_from_shapes`` reads a wrong
            ``d``; the message names both and the layout.
    """
    seen: dict[tuple[tuple[str, tuple[int, ...]], ...], int] = {}
    for dim in dims:
        layout = {name: tuple(shape) for name, shape in cls.tensor_shapes(dim).items()}
        key = tuple(layout.items())
        if key in seen:
            raise TypeError(
                f"{cls.__name__}: the stored shapes do not determine the dimension: "
                f"{seen[key]} x {seen[key]} and {dim} x {dim} members both store {layout}; "
                "tensor_shapes(d) must differ for every d (store d somewhere, e.g. as the "
                "length of a tensor)"
            )
        seen[key] = dim
        read = cls.dim_from_shapes(layout)
        if read != dim:
            raise TypeError(
                f"{cls.__name__}.dim_from_shapes reads d = {read} off the shapes {layout} "
                f"of a {dim} x {dim} member"
            )


def search_dimension(cls: type[StructuredMatrix], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Find ``d`` with ``cls.tensor_shapes(d) == shapes`` by trying likely sizes first.

    Tries every size ``s`` in ``shapes`` and ``s +- 1``, then ``d = 1, 2, ...`` up to
    the number of stored elements plus one. If none fits, returns the candidate whose
    layout differs from ``shapes`` in the fewest tensors (so that the caller can say
    which tensors are wrong).
    """
    target = {name: tuple(shape) for name, shape in shapes.items()}
    sizes = {size for shape in target.values() for size in shape}
    candidates = sorted({c for s in sizes for c in (s - 1, s, s + 1) if c >= 1} or {1})

    def mismatches(dim: int) -> int:
        layout = cls.tensor_shapes(dim)
        return sum(tuple(layout.get(name, ())) != shape for name, shape in target.items())

    for dim in candidates:
        if mismatches(dim) == 0:
            return dim
    total = sum(_numel(shape) for shape in target.values())
    for dim in range(1, total + 2):
        if dim not in candidates and mismatches(dim) == 0:
            return dim
    return min(candidates, key=mismatches)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count

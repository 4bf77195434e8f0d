"""Flat buffers of many tensors: one collective for all of them.

A :class:`Buckets` lays tensors of any shapes out in one contiguous buffer per dtype
(and device), so that every layer's tensors travel in a single collective per dtype
instead of one per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Key = tuple[torch.dtype, torch.device]


class Buckets:
    """A layout of tensors (by shape and dtype) in one flat buffer per dtype and device.

    Attributes:
        sizes: Number of elements of each bucket, by ``(dtype, device)``.
    """

    def __init__(self) -> None:
        self.sizes: dict[Key, int] = {}
        self._slots: list[tuple[Key, int, torch.Size]] = []

    def add(
        self, shape: Sequence[int] | torch.Size, dtype: torch.dtype, device: torch.device
    ) -> int:
        """Reserve room for a tensor; return its slot index."""
        key = (dtype, torch.device(device))
        offset = self.sizes.get(key, 0)
        shape = torch.Size(shape)
        self.sizes[key] = offset + shape.numel()
        self._slots.append((key, offset, shape))
        return len(self._slots) - 1

    def add_like(self, tensor: Tensor) -> int:
        """Reserve room for a tensor like ``tensor``; return its slot index."""
        return self.add(tensor.shape, tensor.dtype, tensor.device)

    def empty(self, padded: dict[Key, int] | None = None) -> dict[Key, Tensor]:
        """Return zero-filled buffers (of the ``padded`` sizes when given)."""
        sizes = padded if padded is not None else self.sizes
        return {key: torch.zeros(sizes[key], dtype=key[0], device=key[1]) for key in self.sizes}

    def slot(self, index: int) -> tuple[Key, int, torch.Size]:
        """Return the bucket key, offset and shape of slot ``index``."""
        return self._slots[index]

    def view(self, buffers: dict[Key, Tensor], slot: int) -> Tensor:
        """Return the view of slot ``slot`` in ``buffers``."""
        key, offset, shape = self._slots[slot]
        return buffers[key][offset : offset + shape.numel()].view(shape)

    def pack(self, buffers: dict[Key, Tensor], slot: int, tensor: Tensor) -> None:
        """Copy ``tensor`` into its slot."""
        self.view(buffers, slot).copy_(tensor)

    def nbytes(self) -> int:
        """Bytes of all buckets together."""
        return sum(size * key[0].itemsize for key, size in self.sizes.items())


class Segments:
    """One :class:`Buckets` layout per process, laid end to end in shared buffers.

    Segment :math:`r` of each dtype's buffer is padded to the largest segment, so that
    a reduce-scatter or an all-gather hands process :math:`r` exactly segment :math:`r`.

    Attributes:
        layouts: The layout of each segment.
    """

    def __init__(self, count: int) -> None:
        self.layouts = [Buckets() for _ in range(count)]
        self._sizes: dict[Key, int] | None = None

    def sizes(self) -> dict[Key, int]:
        """The padded size of one segment, per dtype (fixed by the first call)."""
        if self._sizes is None:
            sizes: dict[Key, int] = {}
            for layout in self.layouts:
                for key, size in layout.sizes.items():
                    sizes[key] = max(sizes.get(key, 0), size)
            self._sizes = sizes
        return self._sizes

    def empty(self) -> dict[Key, Tensor]:
        """Zero-filled buffers holding every segment (no slot may be added after)."""
        count = len(self.layouts)
        return {
            key: torch.zeros(count * size, dtype=key[0], device=key[1])
            for key, size in self.sizes().items()
        }

    def part(self, buffers: dict[Key, Tensor], segment: int) -> dict[Key, Tensor]:
        """Segment ``segment`` of each of the full ``buffers``."""
        return {
            key: buffers[key][segment * size : (segment + 1) * size]
            for key, size in self.sizes().items()
        }

    def view(self, buffers: dict[Key, Tensor], segment: int, slot: int) -> Tensor:
        """The view of ``slot`` of segment ``segment`` in the full ``buffers``."""
        key, offset, shape = self.layouts[segment].slot(slot)
        start = segment * self.sizes()[key] + offset
        return buffers[key][start : start + shape.numel()].view(shape)

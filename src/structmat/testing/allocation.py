"""Record the largest tensor that torch operations allocate."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargestAllocation(TorchDispatchMode):
    """Dispatch mode that records the largest new storage produced by any torch operation.

    Outputs that share storage with an input (views, in-place results) are not new and
    are not counted. Use as a context manager::

        with LargestAllocation() as record:
            A @ X
        assert record.largest < d * d, record.op

    Attributes:
        largest: Elements of the largest new storage seen so far.
        op: Name of the operation that produced it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, Tensor)
        }
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in inputs:
                continue
            size = storage.nbytes() // max(tensor.element_size(), 1)
            if size > self.largest:
                self.largest, self.op = size, str(func)
        return out

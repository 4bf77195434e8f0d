"""Property-based testing for structures: random members and a subclassable law suite.

Verify a structure, built in or your own, by subclassing :class:`StructureLaws`::

    from structmat.testing import StructureLaws

    class TestMyStructure(StructureLaws):
        structure = MyStructure

pytest then runs every law on it; outside pytest, ``TestMyStructure().check()`` runs
them and reports which hold. The strategies draw members of any structure from its
declared :meth:`~structmat.StructuredMatrix.tensor_shapes`.

This module needs `hypothesis <https://hypothesis.readthedocs.io>`_ (install the
``testing`` extra: ``pip install "singd-opt[testing]"``); ``import structmat`` does not.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "structmat.testing needs hypothesis; install it with "
        "pip install 'singd-opt[testing]' (or pip install hypothesis)"
    ) from error

from structmat.testing.allocation import LargestAllocation
from structmat.testing.laws import LawReport, StructureLaws, raises
from structmat.testing.reference import pattern_projection, sparsity_pattern
from structmat.testing.strategies import (
    BATCH_COLUMNS,
    LARGE_MAX_DIM,
    MAX_DIM,
    dims,
    interesting_dims,
    large_dims,
    layouts,
    members,
    random_member,
    random_tensor,
    seeds,
)

__all__ = [
    "BATCH_COLUMNS",
    "LARGE_MAX_DIM",
    "MAX_DIM",
    "LargestAllocation",
    "LawReport",
    "StructureLaws",
    "dims",
    "interesting_dims",
    "large_dims",
    "layouts",
    "members",
    "pattern_projection",
    "raises",
    "random_member",
    "random_tensor",
    "seeds",
    "sparsity_pattern",
]

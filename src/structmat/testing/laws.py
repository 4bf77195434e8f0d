r"""The law suite: every property a structure must have, as a subclassable test class.

Subclass :class:`StructureLaws`, set ``structure``, and the subclass is a test class
for pytest (name it ``Test...``) and can run itself with :meth:`StructureLaws.check`::

    class TestCirculant(StructureLaws):
        structure = Circulant

        def project(self, mat):  # only if from_dense is not the pattern projection
            ...

Below :math:`A, B, C` are random members of the structure (generally non-symmetric),
:math:`a, b, c` their dense matrices, :math:`X` a random ``d x n`` matrix, :math:`M` a
random ``d x d`` matrix, :math:`S` a random (symmetric or general) ``d x d`` matrix and
:math:`P` the reference projection :meth:`StructureLaws.project`. "Matches" means
entrywise agreement within ``rtol`` relative to the largest entry, in float64.

``test_declared_structure``
    not a template; ``closed_under_transpose`` iff ``transpose_structure() is cls``;
    the transpose of the transpose structure is ``cls``; a registered ``name``
    resolves to ``cls``; the stored shapes determine ``d`` (``tensor_shapes(d)``
    differs for every ``d`` and ``dim_from_shapes`` reads it back). The other declared
    facts are checked by the laws they promise: ``closed_under_inverse`` by
    ``test_inverse`` and ``test_singular_inverse_raises``, the transpose facts by
    ``test_transpose_is_the_declared_structure``
``test_storage_layout``
    the tensors have the shapes of ``tensor_shapes(d)``, ``shape`` is ``(d, d)``,
    ``cls(**A.tensors())`` rebuilds :math:`A`, ``clone`` copies, ``to`` converts
``test_from_dense_is_the_projection``
    ``from_dense`` :math:`= P` on symmetric and general :math:`S`; :math:`P(P(S)) =
    P(S)`; linear; recovers the tensors of members
``test_arithmetic_matches_dense``
    :math:`A \pm B`, ``A.add(B, alpha)`` (number or tensor), :math:`cA`, :math:`A/c`,
    :math:`-A`, :math:`AB`, :math:`A^\top` match dense; sums, multiples and products
    are members (closure)
``test_in_place_operations_match_dense``
    ``add_``, ``mul_``, ``diag_add_`` match and return ``self``
``test_products_after_in_place_updates``
    after each of ``add_``, ``mul_``, ``diag_add_`` (and before), :math:`AX`,
    :math:`A^\top X`, :math:`X^\top A`, :math:`AB`, the diagonal, :math:`\|A\|_F` and
    ``from_inner`` match the updated dense matrix (no stale cache)
``test_products_with_tensors_match_dense``
    :math:`AX`, :math:`X^\top A`, :math:`A^\top X`, ``A.T @ X`` (matrices, vectors), with
    the operand in every layout of :func:`~structmat.testing.layouts` (contiguous,
    transposed view like ``grad.mT``, column-strided, transposed strided view); no
    product writes into its operand
``test_reductions_match_dense``
    diagonal, trace, average trace, :math:`\|A\|_F`, :math:`\max_{ij} |a_{ij}|`
``test_projected_products_match_dense``
    ``from_inner(X)`` :math:`= P(a^\top X X^\top a)`, ``from_inner()`` :math:`=
    P(a^\top a)`, ``from_mat_inner(X)`` :math:`= P(X X^\top)`, ``from_inner2(M)``
    :math:`= P(a^\top M a)`, ``from_inner_diagonal(v)`` :math:`= P(a^\top
    \operatorname{diag}(v) a)` (its generic default may fall back to dense), ``X`` and
    ``M`` in every layout; all are members (closure)
``test_large_members_and_batch_sized_operands``
    a few draws (:attr:`~StructureLaws.large_examples`) at :math:`131 \le d \le 300`
    with operands of 64 to 256 columns (``from_inner`` with 256): arithmetic, products
    and projected products in every layout, transpose, inverse, products after
    in-place updates
``test_results_own_their_storage``
    ``from_dense(S)`` is not a view of ``S``; ``from_mat_inner``, ``from_inner``,
    ``from_inner2``, ``clone``, ``+``, ``*``, ``@``, ``inv`` share no storage with
    their operands
``test_every_operation_keeps_the_dtype``
    every operation (``A.T``, ``A.T.T`` and ``from_dense`` included) on float32,
    bfloat16 and float16 operands returns that dtype, in every stored tensor
``test_mixed_dtype_operands_are_rejected``
    a tensor operand of another dtype (float64 with a float32 member and the other way
    round) raises ``TypeError`` for every product and leaves :math:`A` unchanged
``test_transpose_is_the_declared_structure``
    ``type(A.T) is cls.transpose_structure()``, :math:`(A^\top)^\top = A` as a member
    of ``cls`` (of :class:`~structmat.Dense` when the structure declares no transpose
    facts: its transposes are dense, and so are theirs); the dtype is kept
``test_algebraic_laws``
    :math:`(AB)^\top = B^\top A^\top`, :math:`(A+B)^\top = A^\top + B^\top`,
    :math:`(AB)C = A(BC)`, distributivity, :math:`AI = IA = A`, trace linear,
    :math:`\operatorname{tr} A^\top = \operatorname{tr} A`, :math:`\operatorname{tr}
    AB = \operatorname{tr} BA`
``test_inverse``
    closed under inversion: :math:`A^{-1}` matches, :math:`AA^{-1} = A^{-1}A = I`;
    else ``inv`` raises ``TypeError``
``test_spectral_functions``
    closed under spectral functions: for the symmetric member :math:`H = P(a^\top a) +
    I`, ``symmetric_eigen`` gives the eigenvalues of :math:`h`, ``compose`` of them
    rebuilds :math:`H` and of their square roots gives a symmetric member whose square
    is :math:`h`; else ``symmetric_eigen`` raises ``TypeError``
``test_singular_inverse_raises``
    ``zeros(d).inv()`` and ``inv()`` of non-zero exactly singular members
    (:meth:`~StructureLaws.singular_members`) raise
    :class:`~structmat.SingularMatrixError`
``test_zeros_and_eye``
    :math:`0` and :math:`I` at every boundary dimension, dtype and device
``test_batched_operations_match_members``
    for a structure declaring ``batches_under_vmap``: under :func:`torch.vmap` over
    three stacked members, :math:`AB`, :math:`AX`, :math:`A^\top X`, ``from_inner(X)``,
    ``from_inner()``, the average trace, :math:`\max_{ij} |a_{ij}|`, ``clone``,
    ``add_`` (with a per-member tensor factor), ``mul_`` and ``diag_add_`` equal each
    member's result, with no warning (a kernel without a batching rule warns)
``test_stacks_match_members``
    for a structure declaring ``batches_natively``: on stacks of three members
    (:meth:`~structmat.StructuredMatrix.stack`) every operation of
    :data:`~structmat.STACK_OPERATIONS` (products with members, matrices and
    vectors, sums, per-member scalar factors, the transpose, ``from_inner()``, the
    diagonal, traces, :math:`\max_{ij} |a_{ij}|`, in-place updates) equals each
    member's result, with no warning
``test_stack_round_trip_and_errors``
    ``stack(members).unbind()`` gives the members back, half-precision traces of a
    stack equal the members' own; on a stack the other
    operations (``inv``, ``frobenius_norm``, ``from_inner(X)``, ``from_inner2``), a
    factor of the wrong batch shape and an operand without the batch dimension raise
    ``ValueError`` and change nothing; a structure that does not declare
    ``batches_natively`` refuses to stack (``TypeError``)
``test_gradients``
    ``torch.autograd.gradcheck`` of :math:`AX`, ``from_inner(X)``,
    ``from_inner2(M)``, :math:`A^{-1}`
``test_low_precision_accuracy``
    float32, bfloat16, float16 within a few unit roundoffs of the exact result of
    the rounded inputs
``test_half_precision_reductions_do_not_overflow``
    :math:`\|A\|_F`, trace, average trace of members whose squares overflow are
    finite and accurate when representable
``test_bad_operands_are_rejected``
    other structures, shapes, scalars raise and leave :math:`A` unchanged
``test_bad_storage_is_rejected``
    the constructor rejects non-tensors, integer dtypes, wrong dimensions, dtypes
    and shapes, naming the tensor
``test_bad_dense_input_is_rejected``
    non-square ``from_dense`` input and ``zeros(0)`` raise ``ValueError``
``test_every_operation_is_structured``
    no operation falls back to dense (:class:`~structmat.DenseFallbackWarning`) or
    allocates a ``d x d`` tensor unless the storage has that size

The laws with hypothesis draw the dimension (boundaries included, see
:func:`~structmat.testing.interesting_dims`) and the random seeds; the others loop over
fixed dimensions.

Reach and knobs. By default the hypothesis laws draw ``1 <= d <= 70``
(:attr:`~StructureLaws.max_dim`) and operands of up to 6 columns; the large-size law
draws ``131 <= d <= 300`` (:attr:`~StructureLaws.large_min_dim`,
:attr:`~StructureLaws.large_max_dim`) with 64 to 256 columns, in
:attr:`~StructureLaws.large_examples` examples (2, or a twelfth of the profile's
``max_examples`` if that is more). Every other law runs with the active hypothesis
profile's ``max_examples``. The suite sets what it needs on each law itself: no
``deadline`` (an example builds and multiplies matrices, and its time varies with the
machine) and the health checks for slow or large examples and for a law shared by
several subclasses switched off, so a plain ``pytest`` run is not flaky. Set
:attr:`~StructureLaws.rtol` and :attr:`~StructureLaws.low_precision_tolerance` for
structures whose kernels round more, override :meth:`~StructureLaws.project` for a
projection other than the pattern one and :meth:`~StructureLaws.singular_members` to
supply singular members, and set a law to ``None`` to switch it off. Not reached:
sizes between 71 and 130 and above 300 (a route switching there needs a larger
``max_dim`` or ``large_max_dim``), devices other than the CPU, and autograd beyond the
first derivatives of ``gradcheck``.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import strategies as st
from torch import Tensor

from structmat._storage import check_layout_determines_dimension
from structmat.base import StructuredMatrix
from structmat.dense import Dense
from structmat.diagonal import Diagonal
from structmat.exceptions import DenseFallbackWarning, SingularMatrixError
from structmat.registry import available_structures, get_structure
from structmat.testing.allocation import LargestAllocation
from structmat.testing.reference import pattern_projection
from structmat.testing.strategies import (
    BATCH_COLUMNS,
    LARGE_MAX_DIM,
    MAX_DIM,
    dims,
    interesting_dims,
    large_dims,
    layouts,
    random_member,
    random_tensor,
    seeds,
)

LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)
HALF_PRECISION = (torch.bfloat16, torch.float16)

#: Health checks the laws switch off: examples build matrices (slow by hypothesis'
#: standards, large by design), and each subclass runs the same law function.
SUPPRESSED_HEALTH_CHECKS = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.differing_executors,
)

#: The laws drawn at large sizes, run with :attr:`StructureLaws.large_examples` examples.
LARGE_LAWS = ("test_large_members_and_batch_sized_operands",)


@contextmanager
def raises(kind: type[BaseException], match: str = "") -> Iterator[None]:
    """Assert that the block raises ``kind`` with a message matching ``match``."""
    try:
        yield
    except kind as error:
        if not re.search(match, str(error)):
            raise AssertionError(
                f"{kind.__name__} raised, but {str(error)!r} does not match {match!r}"
            ) from error
    else:
        raise AssertionError(f"{kind.__name__} not raised")


def _hypothesis_inner(law: Callable[..., Any]) -> Callable[..., Any] | None:
    """The undecorated ``(self, data)`` function of a law drawing from ``st.data()``.

    ``None`` for a plain law and for hypothesis tests with other arguments.
    """
    inner = getattr(getattr(law, "hypothesis", None), "inner_test", None)
    if inner is None or list(inspect.signature(inner).parameters) != ["self", "data"]:
        return None
    return inner


def _shared_storage(result: StructuredMatrix, inputs: Iterable[object]) -> list[str]:
    """Names of the stored tensors of ``result`` whose storage an input tensor also uses."""
    pointers = set()
    for item in inputs:
        tensors = item.tensors().values() if isinstance(item, StructuredMatrix) else [item]
        for tensor in tensors:
            if isinstance(tensor, Tensor) and tensor.untyped_storage().nbytes():
                pointers.add(tensor.untyped_storage().data_ptr())
    return [
        name
        for name, tensor in result.named_tensors()
        if tensor.untyped_storage().nbytes() and tensor.untyped_storage().data_ptr() in pointers
    ]


def _exactly_singular(mat: Tensor) -> bool:
    """Whether ``mat`` is singular by a certificate that rounding cannot fake.

    A zero row or column, a triangular matrix with a zero diagonal entry, or all rows
    (or all columns) summing exactly to zero.
    """
    zero = mat.eq(0)
    if bool(zero.all(0).any()) or bool(zero.all(1).any()):
        return True
    triangular = bool(mat.triu(1).eq(0).all()) or bool(mat.tril(-1).eq(0).all())
    if triangular and bool(mat.diagonal().eq(0).any()):
        return True
    rows = mat.double().tolist()
    columns = mat.double().mT.tolist()
    return any(all(math.fsum(line) == 0.0 for line in lines) for lines in (rows, columns))


@dataclass
class LawReport:
    """Outcome of :meth:`StructureLaws.check`.

    Attributes:
        structure: Name of the checked structure class.
        passed: The laws that hold.
        failed: The laws that fail, with the error of each.
    """

    structure: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every law holds."""
        return not self.failed

    def __str__(self) -> str:
        total = len(self.passed) + len(self.failed)
        lines = [f"{self.structure}: {len(self.passed)} of {total} laws hold"]
        for law, error in self.failed.items():
            first = error.strip().splitlines()[0] if error.strip() else ""
            lines.append(f"  FAILED {law}: {first}")
        return "\n".join(lines)


class StructureLaws:
    """The laws every structure satisfies, checked against dense float64 computation.

    Subclass it and set :attr:`structure`; override :meth:`project` if ``from_dense``
    is not the pattern projection, and the class attributes to change tolerances or
    sizes. A law that does not apply can be switched off by setting it to ``None`` in
    the subclass. See the module docstring for the list of laws.

    Class attributes:
        structure: The structure class under test.
        max_dim: Largest dimension the hypothesis laws draw.
        large_min_dim: Smallest dimension of the law at large sizes.
        large_max_dim: Largest dimension of the law at large sizes.
        large_examples: Examples of the law at large sizes (at least a twelfth of the
            profile's ``max_examples``).
        rtol: Relative tolerance of float64 agreement (relative to the largest entry).
        low_precision_tolerance: Allowed error in low precision, in unit roundoffs of the
            dtype, relative to the norm of the exact result.
        allocation_dims: Dimensions of the allocation check.
        other_structure: A structure to mix in the bad-operand law (``Dense``, or
            ``Diagonal`` when testing ``Dense``).
    """

    structure: ClassVar[type[StructuredMatrix]]
    max_dim: ClassVar[int] = MAX_DIM
    large_min_dim: ClassVar[int] = 131
    large_max_dim: ClassVar[int] = LARGE_MAX_DIM
    large_examples: ClassVar[int] = 2
    rtol: ClassVar[float] = 1e-10
    low_precision_tolerance: ClassVar[float] = 4.0
    allocation_dims: ClassVar[tuple[int, ...]] = (45, 64)
    other_structure: ClassVar[type[StructuredMatrix] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Give every subclass its own hypothesis tests: hypothesis expects one test
        # function to run with one kind of ``self`` only.
        # The suite ships the settings it needs: no deadline (an example builds and
        # multiplies matrices; its time varies with the machine), the health checks of
        # SUPPRESSED_HEALTH_CHECKS off, and few examples for the laws at large sizes.
        # Everything else (max_examples, database, ...) comes from the active profile.
        super().__init_subclass__(**kwargs)
        for name in cls.law_names():
            inner = _hypothesis_inner(getattr(cls, name))
            if inner is not None and name not in cls.__dict__:
                options: dict[str, Any] = {}
                if name in LARGE_LAWS:
                    options["max_examples"] = max(
                        cls.large_examples, settings.default.max_examples // 12
                    )
                law_settings = settings(
                    deadline=None, suppress_health_check=SUPPRESSED_HEALTH_CHECKS, **options
                )
                setattr(cls, name, law_settings(given(data=st.data())(inner)))

    # ------------------------------------------------------------ overridable
    def project(self, mat: Tensor) -> Tensor:
        """The reference projection of a dense ``d x d`` matrix onto the structure.

        The default is :func:`~structmat.testing.pattern_projection`. Override it with an
        independent dense computation for structures that project otherwise.
        """
        return pattern_projection(self.structure, mat)

    # ---------------------------------------------------------------- helpers
    def close(self, actual: Tensor, expected: Tensor, what: str = "") -> None:
        """Assert entrywise closeness within ``rtol`` relative to ``expected``'s magnitude."""
        scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
        if (
            actual.shape == expected.shape
            and actual.dtype == expected.dtype
            and actual.device == expected.device
        ):
            bound = self.rtol * scale + self.rtol * expected.abs()
            if bool(((actual - expected).abs() <= bound).all()):
                return  # the fast path; torch.testing explains any failure below
        torch.testing.assert_close(
            actual,
            expected,
            rtol=self.rtol,
            atol=self.rtol * scale,
            msg=lambda message: f"{self.structure.__name__} {what}: {message}",
        )

    def same(self, A: StructuredMatrix, expected: Tensor, what: str = "") -> None:
        """Assert that ``A`` represents ``expected``."""
        self.close(A.to_dense(), expected, what)

    def assert_members(self, results: dict[str, StructuredMatrix]) -> None:
        """Assert that every result is a member of the structure (closure)."""
        for what, result in results.items():
            assert type(result) is self.structure, (
                f"{what} returned a {type(result).__name__}, not a {self.structure.__name__}"
            )

    def draw_members(
        self, data: st.DataObject, count: int, invertible: bool = False
    ) -> tuple[int, list[StructuredMatrix]]:
        """Draw a dimension and ``count`` random members of that dimension."""
        dim = data.draw(dims(self.structure, self.max_dim), label="d")
        return dim, [
            random_member(self.structure, dim, data.draw(seeds), invertible=invertible)
            for _ in range(count)
        ]

    def draw_tensor(self, data: st.DataObject, shape: tuple[int, ...]) -> Tensor:
        """Draw a standard normal float64 tensor."""
        return random_tensor(shape, data.draw(seeds))

    def _other(self) -> type[StructuredMatrix]:
        if self.other_structure is not None:
            return self.other_structure
        return Diagonal if self.structure is Dense else Dense

    # ------------------------------------------------------- declared facts
    def test_declared_structure(self) -> None:
        """Declared facts are consistent: template, transpose structure, registry name."""
        cls = self.structure
        assert not cls.is_template(), f"{cls.__name__} is a template"
        transposed = cls.transpose_structure()
        assert issubclass(transposed, StructuredMatrix)
        assert cls.closed_under_transpose == (transposed is cls), (
            f"{cls.__name__}.closed_under_transpose is {cls.closed_under_transpose} but its "
            f"transpose structure is {transposed.__name__}"
        )
        if transposed is not Dense:
            assert transposed.transpose_structure() is cls, (
                f"the transpose structure of {transposed.__name__} is "
                f"{transposed.transpose_structure().__name__}, not {cls.__name__}"
            )
        if cls.name is not None and cls.name in available_structures():
            assert get_structure(cls.name) is cls, f"{cls.name!r} names another class"
        check_layout_determines_dimension(cls)

    @given(data=st.data())
    def test_storage_layout(self, data: st.DataObject) -> None:
        """Stored shapes are ``tensor_shapes(d)``; rebuild, ``clone`` and ``to`` work."""
        cls = self.structure
        dim, (A,) = self.draw_members(data, 1)
        layout = cls.tensor_shapes(dim)
        shapes = {name: tuple(t.shape) for name, t in A.named_tensors()}
        assert shapes == {name: tuple(s) for name, s in layout.items()}, (shapes, layout)
        assert A.shape == torch.Size([dim, dim])
        assert A.to_dense().shape == (dim, dim)
        assert cls.dim_from_shapes(shapes) == dim
        assert A.dtype == torch.float64 and A.device == torch.device("cpu")
        rebuilt = cls(**A.tensors())
        assert torch.equal(rebuilt.to_dense(), A.to_dense())
        copy = A.clone()
        assert type(copy) is cls, f"clone returned a {type(copy).__name__}"
        copy.mul_(2.0)
        assert torch.equal(rebuilt.to_dense(), A.to_dense()), "clone must not share storage"
        single = A.to(torch.float32)
        assert type(single) is cls and single.dtype == torch.float32
        torch.testing.assert_close(single.to_dense().double(), A.to_dense(), rtol=1e-6, atol=1e-6)

    # ------------------------------------------------------------ projection
    @given(data=st.data())
    def test_from_dense_is_the_projection(self, data: st.DataObject) -> None:
        """``from_dense`` is :meth:`project`, idempotent, linear, the identity on members."""
        cls = self.structure
        dim, (A,) = self.draw_members(data, 1)
        S = self.draw_tensor(data, (dim, dim))
        for mat in (S + S.T, S):
            P = cls.from_dense(mat)
            assert type(P) is cls
            self.same(P, self.project(mat), "from_dense")
            self.same(cls.from_dense(P.to_dense()), P.to_dense(), "from_dense twice")
        recovered = cls.from_dense(A.to_dense())
        for name, tensor in A.named_tensors():
            self.close(getattr(recovered, name), tensor, f"from_dense(A).{name}")
        R = self.draw_tensor(data, (dim, dim))
        expected = (2.0 * cls.from_dense(S) - 3.0 * cls.from_dense(R)).to_dense()
        self.same(cls.from_dense(2.0 * S - 3.0 * R), expected, "linearity of from_dense")

    # ------------------------------------------------------------- agreement
    @given(data=st.data())
    def test_arithmetic_matches_dense(self, data: st.DataObject) -> None:
        """``+``, ``-``, scalar ``*`` and ``/``, negation, ``@`` and transpose match dense."""
        _, (A, B) = self.draw_members(data, 2)
        c = data.draw(st.floats(-3, 3, allow_nan=False), label="c")
        self.check_arithmetic(A, B, c)

    def check_arithmetic(self, A: StructuredMatrix, B: StructuredMatrix, c: float) -> None:
        """The checks of :meth:`test_arithmetic_matches_dense` on given members."""
        a, b = A.to_dense(), B.to_dense()
        self.same(A + B, a + b, "A + B")
        self.same(A - B, a - b, "A - B")
        self.same(A.add(B, alpha=c), a + c * b, "A.add(B, alpha=c)")
        alpha = torch.tensor(c, dtype=A.dtype)
        self.same(A.add(B, alpha=alpha), a + c * b, "A.add(B, alpha=tensor(c))")
        self.same(c * A, c * a, "c * A")
        self.same(A * c, c * a, "A * c")
        self.same(A * torch.tensor(c, dtype=torch.float64), c * a, "A * tensor(c)")
        self.same(-A, -a, "-A")
        self.same(A / 2.0, a / 2, "A / 2")
        self.same(A @ B, a @ b, "A @ B")
        self.same(A.T, a.T, "A.T")
        self.same(A.transpose(), a.T, "A.transpose()")
        results = {
            "A + B": A + B,
            "A - B": A - B,
            "A.add(B, alpha)": A.add(B, alpha=c),
            "c * A": c * A,
            "-A": -A,
            "A @ B": A @ B,
        }
        self.assert_members(results)

    @given(data=st.data())
    def test_in_place_operations_match_dense(self, data: st.DataObject) -> None:
        """``add_``, ``mul_`` and ``diag_add_`` match dense and return ``self``."""
        _, (A, B) = self.draw_members(data, 2)
        a, b = A.to_dense().clone(), B.to_dense()
        alpha = data.draw(st.floats(-2, 2, allow_nan=False), label="alpha")
        assert A.add_(B, alpha=alpha) is A
        self.same(A, a + alpha * b, "add_")
        assert A.mul_(0.5) is A
        self.same(A, 0.5 * (a + alpha * b), "mul_")
        assert A.diag_add_(alpha) is A
        eye = torch.eye(a.shape[0], dtype=a.dtype)
        self.same(A, 0.5 * (a + alpha * b) + alpha * eye, "diag_add_")

    @given(data=st.data())
    def test_products_after_in_place_updates(self, data: st.DataObject) -> None:
        """Every product agrees with dense after each of ``add_``, ``mul_``, ``diag_add_``.

        Products are taken before the first update too, so a structure that caches
        anything derived from its tensors (a transform, a factorisation, ``A^T``) must
        notice the in-place change.
        """
        dim, (A, B) = self.draw_members(data, 2)
        n = data.draw(st.integers(1, 5), label="n")
        X = self.draw_tensor(data, (dim, n))
        self.check_products_after_updates(A, B, X)

    def check_products_after_updates(
        self, A: StructuredMatrix, B: StructuredMatrix, X: Tensor
    ) -> None:
        """The checks of :meth:`test_products_after_in_place_updates` on given members."""
        updates: dict[str, Callable[[], object]] = {
            "before any update": lambda: None,
            "add_": lambda: A.add_(B, alpha=-0.5),
            "mul_": lambda: A.mul_(1.5),
            "diag_add_": lambda: A.diag_add_(2.5),
        }
        b = B.to_dense()
        for update, run in updates.items():
            run()
            a = A.to_dense()
            what = f"{update}:" if update.startswith("before") else f"after {update}:"
            self.close(A @ X, a @ X, f"{what} A @ X")
            self.close(A.rmatmat(X), a.T @ X, f"{what} A.rmatmat(X)")
            self.close(X.T @ A, X.T @ a, f"{what} X^T @ A")
            self.close(A.T @ X, a.T @ X, f"{what} A.T @ X")
            self.same(A @ B, a @ b, f"{what} A @ B")
            self.close(A.diag(), a.diagonal(), f"{what} diag")
            self.close(A.frobenius_norm(), torch.linalg.matrix_norm(a), f"{what} frobenius_norm")
            Y = a.T @ X
            self.same(A.from_inner(X), self.project(Y @ Y.T), f"{what} from_inner(X)")
            self.same(A.from_inner(), self.project(a.T @ a), f"{what} from_inner()")

    @given(data=st.data())
    def test_products_with_tensors_match_dense(self, data: st.DataObject) -> None:
        """``A @ X``, ``X @ A``, ``A.rmatmat(X)``, ``A.T @ X`` match dense in every layout.

        ``X`` comes in every layout of :func:`~structmat.testing.layouts` (contiguous,
        transposed views such as ``grad.mT``, strided slices), and as vectors.
        """
        dim, (A,) = self.draw_members(data, 1)
        n = data.draw(st.integers(1, 5), label="n")
        X = self.draw_tensor(data, (dim, n))
        self.check_products(A, X)

    def check_products(self, A: StructuredMatrix, X: Tensor) -> None:
        """The checks of :meth:`test_products_with_tensors_match_dense` on given operands."""
        a = A.to_dense()
        for layout, operand in layouts(X).items():
            before = operand.clone()
            self.close(A @ operand, a @ X, f"A @ X ({layout})")
            self.close(A.rmatmat(operand), a.T @ X, f"A.rmatmat(X) ({layout})")
            self.close(A.T @ operand, a.T @ X, f"A.T @ X ({layout})")
            assert torch.equal(operand, before), f"a product changed X ({layout})"
        for layout, operand in layouts(X.T).items():
            self.close(operand @ A, X.T @ a, f"X^T @ A ({layout})")
        for layout, x in layouts(X[:, 0]).items():
            self.close(A @ x, a @ X[:, 0], f"A @ x ({layout})")
            self.close(x @ A, X[:, 0] @ a, f"x @ A ({layout})")
            self.close(A.rmatmat(x), a.T @ X[:, 0], f"A.rmatmat(x) ({layout})")

    @given(data=st.data())
    def test_reductions_match_dense(self, data: st.DataObject) -> None:
        """Diagonal, traces and norms match dense."""
        _, (A,) = self.draw_members(data, 1)
        a = A.to_dense()
        self.close(A.diag(), a.diagonal(), "diag")
        self.close(A.trace(), a.trace(), "trace")
        self.close(A.average_trace(), a.diagonal().mean(), "average_trace")
        self.close(A.frobenius_norm(), torch.linalg.matrix_norm(a), "frobenius_norm")
        self.close(A.infinity_vector_norm(), a.abs().max(), "infinity_vector_norm")

    @given(data=st.data())
    def test_projected_products_match_dense(self, data: st.DataObject) -> None:
        """``from_inner``, ``from_mat_inner`` and ``from_inner2`` project the dense products."""
        dim, (A,) = self.draw_members(data, 1)
        n = data.draw(st.integers(1, 6), label="n")
        X = self.draw_tensor(data, (dim, n))
        M = self.draw_tensor(data, (dim, dim))
        self.check_projected_products(A, X, M)

    def check_projected_products(self, A: StructuredMatrix, X: Tensor, M: Tensor) -> None:
        """The checks of :meth:`test_projected_products_match_dense`, in every layout."""
        cls = self.structure
        a = A.to_dense()
        Y = a.T @ X
        expected_inner, expected_mat_inner = self.project(Y @ Y.T), self.project(X @ X.T)
        for layout, operand in layouts(X).items():
            self.same(A.from_inner(operand), expected_inner, f"from_inner(X) ({layout})")
            self.same(
                cls.from_mat_inner(operand), expected_mat_inner, f"from_mat_inner(X) ({layout})"
            )
        self.same(A.from_inner(), self.project(a.T @ a), "from_inner()")
        self.same(A.from_inner2(X @ X.T), self.project(a.T @ X @ X.T @ a), "from_inner2(XX^T)")
        expected_sandwich = self.project(a.T @ M @ a)
        for layout, operand in layouts(M).items():
            self.same(A.from_inner2(operand), expected_sandwich, f"from_inner2(M) ({layout})")
        values = X[:, 0]
        with warnings.catch_warnings():  # from_inner_diagonal has a generic default
            warnings.simplefilter("ignore", DenseFallbackWarning)
            inner_diagonal = A.from_inner_diagonal(values)
        self.same(inner_diagonal, self.project(a.T @ torch.diag(values) @ a), "from_inner_diagonal")
        results = {
            "from_inner_diagonal(v)": inner_diagonal,
            "from_inner(X)": A.from_inner(X),
            "from_inner()": A.from_inner(),
            "from_mat_inner(X)": cls.from_mat_inner(X),
            "from_inner2(M)": A.from_inner2(M),
            "from_dense(M)": cls.from_dense(M),
        }
        self.assert_members(results)

    # ---------------------------------------------------------- large sizes
    @given(data=st.data())
    def test_large_members_and_batch_sized_operands(self, data: st.DataObject) -> None:
        """The agreement laws at a large ``d`` with a batch-sized operand.

        ``d`` is drawn above :attr:`large_min_dim` (kernels that switch route or chunk
        above ~130 are reached), ``X`` has :data:`~structmat.testing.BATCH_COLUMNS`
        columns (64 to 256, as an optimizer's batch; the projected products always
        with 256), in every layout. Checks arithmetic,
        products, projected products, the transpose, the inverse and products after
        in-place updates, as the small laws do; few examples (:attr:`large_examples`).
        """
        cls = self.structure
        dim = data.draw(large_dims(cls, self.large_min_dim, self.large_max_dim), label="d")
        n = data.draw(st.sampled_from(BATCH_COLUMNS), label="n")
        A, B = (random_member(cls, dim, data.draw(seeds)) for _ in range(2))
        X = self.draw_tensor(data, (dim, max(BATCH_COLUMNS)))
        M = self.draw_tensor(data, (dim, dim))
        self.check_arithmetic(A, B, 1.5)
        self.check_products(A, X[:, :n])
        self.check_projected_products(A, X, M)  # the largest batch
        self.check_transpose(A)
        self.check_inverse(random_member(cls, dim, data.draw(seeds), invertible=True))
        self.check_products_after_updates(A, B, X[:, :n])

    # --------------------------------------------------------------- storage
    def test_results_own_their_storage(self) -> None:
        """New members share no storage with the inputs they were computed from.

        ``from_dense(S)`` must not keep a view of ``S`` (SINGD goes on to modify the
        matrices it projects), nor ``from_mat_inner(X)``, ``from_inner``,
        ``from_inner2``, ``clone``, ``+``, scalar ``*``, ``@`` and ``inv`` views of
        their operands. (``A.T`` shares ``A``'s storage by design.)
        """
        for dim in (1, 5, 33):
            self._check_own_storage(dim)

    def _check_own_storage(self, dim: int) -> None:
        cls = self.structure
        A, B = (random_member(cls, dim, seed, invertible=True) for seed in (0, 1))
        S = random_tensor((dim, dim), seed=2)
        X = random_tensor((dim, 3), seed=3)
        runs: dict[str, tuple[Callable[[], StructuredMatrix], tuple[object, ...]]] = {
            "from_dense(S)": (lambda: cls.from_dense(S), (S,)),
            "from_mat_inner(X)": (lambda: cls.from_mat_inner(X), (X,)),
            "from_inner(X)": (lambda: A.from_inner(X), (A, X)),
            "from_inner()": (lambda: A.from_inner(), (A,)),
            "from_inner2(S)": (lambda: A.from_inner2(S), (A, S)),
            "clone": (lambda: A.clone(), (A,)),
            "A + B": (lambda: A + B, (A, B)),
            "2 * A": (lambda: 2.0 * A, (A,)),
            "A @ B": (lambda: A @ B, (A, B)),
        }
        if cls.closed_under_inverse:
            runs["inv"] = (lambda: A.inv(), (A,))
        symmetric = S + S.T  # from_dense of a symmetric matrix must not view it either
        runs["from_dense(S + S^T)"] = (lambda: cls.from_dense(symmetric), (symmetric,))
        for what, (run, inputs) in runs.items():
            result = run()
            shared = _shared_storage(result, inputs)
            assert not shared, (
                f"{cls.__name__} {what} at d = {dim}: the stored tensor(s) {shared} share "
                "storage with an input"
            )

    # ----------------------------------------------------------------- dtypes
    def test_every_operation_keeps_the_dtype(self) -> None:
        """Every operation on float32, bfloat16 and float16 members returns that dtype.

        Tensors, members and each stored tensor of a member (``A.T`` included) keep the
        dtype of the operands.
        """
        cls = self.structure
        for dtype in LOW_PRECISION:
            for dim in (1, 17):
                A, B = (random_member(cls, dim, s, dtype=dtype, invertible=True) for s in (0, 1))
                X = random_tensor((dim, 3), seed=2, dtype=dtype)
                M = random_tensor((dim, dim), seed=3, dtype=dtype)
                for what, run in self._operations(A, B, X, M, dtype=dtype).items():
                    result = run()
                    if isinstance(result, StructuredMatrix):
                        stored = {
                            name: t.dtype for name, t in result.named_tensors() if t.dtype != dtype
                        }
                        assert result.dtype == dtype and not stored, (
                            f"{cls.__name__} {what} of {dtype} operands stores "
                            f"{stored or result.dtype}"
                        )
                        result = result.to_dense()
                    assert isinstance(result, Tensor), f"{what} returned {type(result).__name__}"
                    assert result.dtype == dtype, (
                        f"{cls.__name__} {what} of {dtype} operands returned {result.dtype}"
                    )

    def test_mixed_dtype_operands_are_rejected(self) -> None:
        """A tensor operand of another dtype than the member raises ``TypeError``.

        The rule of :class:`~structmat.StructuredMatrix`: products do not promote (like
        :func:`torch.mm`), for a float32 member with a float64 operand and the other way
        round; the member is left unchanged. A scalar tensor with a dimension, which would
        promote an out-of-place result, is refused the same way; a 0-d one acts as a
        number, and in place the member keeps its dtype.
        """
        for member_dtype, operand_dtype in (
            (torch.float32, torch.float64),
            (torch.float64, torch.float32),
        ):
            self._check_mixed_dtypes(member_dtype, operand_dtype)

    def _check_mixed_dtypes(self, member_dtype: torch.dtype, operand_dtype: torch.dtype) -> None:
        cls = self.structure
        A = random_member(cls, 6, seed=0, dtype=member_dtype)
        before = A.to_dense().clone()
        X = random_tensor((6, 2), seed=1, dtype=operand_dtype)
        M = random_tensor((6, 6), seed=2, dtype=operand_dtype)
        operations: dict[str, Callable[[], object]] = {
            "A @ X": lambda: A @ X,
            "A @ x": lambda: A @ X[:, 0],
            "X^T @ A": lambda: X.T @ A,
            "A.rmatmat(X)": lambda: A.rmatmat(X),
            "A.from_inner(X)": lambda: A.from_inner(X),
            "A.from_inner2(M)": lambda: A.from_inner2(M),
        }
        for what, run in operations.items():
            try:
                run()
            except TypeError as error:
                assert "dtype" in str(error), f"{what}: {error}"
            else:
                raise AssertionError(
                    f"{cls.__name__} {what} with a {member_dtype} member and a "
                    f"{operand_dtype} operand did not raise TypeError"
                )
            assert torch.equal(A.to_dense(), before), f"{what} changed A"
        # a scalar tensor with a dimension would promote: refused; a 0-d one acts as a number
        one_element = torch.full((1,), 2.0, dtype=operand_dtype)
        for what, run in {
            "A * s": lambda: A * one_element,
            "A / s": lambda: A / one_element,
            "A.add(A, alpha=s)": lambda: A.add(A, alpha=one_element),
        }.items():
            with raises(TypeError, "dtype"):
                run()
            assert torch.equal(A.to_dense(), before), f"{what} changed A"
        zero_dim = torch.tensor(2.0, dtype=operand_dtype)
        assert (A * zero_dim).dtype == member_dtype
        assert A.add(A, alpha=zero_dim).dtype == member_dtype
        # in place the member keeps its dtype, as a tensor's in-place update does
        assert A.clone().mul_(one_element).dtype == member_dtype

    # ------------------------------------------------------------- transpose
    @given(data=st.data())
    def test_transpose_is_the_declared_structure(self, data: st.DataObject) -> None:
        """``A.T`` is a member of ``transpose_structure()`` and transposes back to ``A``.

        ``(A.T).T`` is a member of ``cls`` when the structure declares its transposes
        (``closed_under_transpose`` or ``transpose_name``); with neither, transposes are
        :class:`~structmat.Dense` and so are their transposes. ``A.T`` keeps the dtype.
        """
        _, (A,) = self.draw_members(data, 1)
        self.check_transpose(A)

    def check_transpose(self, A: StructuredMatrix) -> None:
        """The checks of :meth:`test_transpose_is_the_declared_structure` on a given member."""
        cls = self.structure
        transposed = A.T
        partner = cls.transpose_structure()
        assert type(transposed) is partner, (
            f"{cls.__name__}.T is a {type(transposed).__name__}, but the declared transpose "
            f"structure is {partner.__name__}"
        )
        assert transposed.dtype == A.dtype, f"A.T has dtype {transposed.dtype}, A {A.dtype}"
        self.same(transposed, A.to_dense().T, "A.T")
        back = transposed.T
        declared = cls.closed_under_transpose or cls.transpose_name is not None
        expected = cls if declared or cls is Dense else Dense
        assert type(back) is expected, (
            f"(A.T).T is a {type(back).__name__}, not a {expected.__name__}"
        )
        self.same(back, A.to_dense(), "(A.T).T")

    # ------------------------------------------------------------------- laws
    @given(data=st.data())
    def test_algebraic_laws(self, data: st.DataObject) -> None:
        """Transposes of products and sums, associativity, distributivity, identity, traces."""
        cls = self.structure
        dim, (A, B, C) = self.draw_members(data, 3)
        self.same((A @ B).T, (B.T @ A.T).to_dense(), "(AB)^T = B^T A^T")
        self.same((A + B).T, (A.T + B.T).to_dense(), "(A + B)^T = A^T + B^T")
        self.same((A @ B) @ C, (A @ (B @ C)).to_dense(), "(AB)C = A(BC)")
        self.same(A @ (B + C), (A @ B + A @ C).to_dense(), "A(B + C) = AB + AC")
        self.same((A + B) @ C, (A @ C + B @ C).to_dense(), "(A + B)C = AC + BC")
        eye = cls.eye(dim, dtype=A.dtype)
        self.same(A @ eye, A.to_dense(), "AI = A")
        self.same(eye @ A, A.to_dense(), "IA = A")
        self.close((2.0 * A - B).trace(), 2.0 * A.trace() - B.trace(), "tr(2A - B)")
        self.close(A.T.trace(), A.trace(), "tr(A^T) = tr(A)")
        self.close((A @ B).trace(), (B @ A).trace(), "tr(AB) = tr(BA)")

    # ---------------------------------------------------------------- inverse
    @given(data=st.data())
    def test_inverse(self, data: st.DataObject) -> None:
        """Invertible members invert within the structure; else ``inv`` raises ``TypeError``."""
        _, (A,) = self.draw_members(data, 1, invertible=True)
        self.check_inverse(A)

    def check_inverse(self, A: StructuredMatrix) -> None:
        """The checks of :meth:`test_inverse` on a given invertible member."""
        cls, dim = self.structure, A.shape[0]
        if not cls.closed_under_inverse:
            with raises(TypeError, "not closed under inversion"):
                A.inv()
            return
        A_inv = A.inv()
        assert type(A_inv) is cls, f"inv returned {type(A_inv).__name__}"
        self.same(A_inv, torch.linalg.inv(A.to_dense()), "inv")
        eye = torch.eye(dim, dtype=A.dtype)
        self.same(A @ A_inv, eye, "A A^-1 = I")
        self.same(A_inv @ A, eye, "A^-1 A = I")

    @given(data=st.data())
    def test_spectral_functions(self, data: st.DataObject) -> None:
        """Spectral functions of symmetric members stay in the structure, if declared."""
        _, (A,) = self.draw_members(data, 1)
        self.check_spectral_functions(A)

    def check_spectral_functions(self, A: StructuredMatrix) -> None:
        """The checks of :meth:`test_spectral_functions` on a given member."""
        cls = self.structure
        H = A.from_inner().diag_add_(1.0)  # symmetric positive definite member
        if not cls.closed_under_spectral_functions:
            with raises(TypeError, "closed_under_spectral_functions"):
                H.symmetric_eigen()
            return
        h = H.to_dense()
        values, compose = H.symmetric_eigen()
        assert values.shape == (h.shape[0],), f"{values.shape} eigenvalues"
        self.close(values.sort().values, torch.linalg.eigvalsh(h), "eigenvalues")
        rebuilt = compose(values)
        assert type(rebuilt) is cls, f"compose returned {type(rebuilt).__name__}"
        self.same(rebuilt, h, "compose(eigenvalues)")
        root = compose(values.sqrt())
        assert type(root) is cls, f"compose returned {type(root).__name__}"
        r = root.to_dense()
        self.close(r, r.T, "the square root is symmetric")
        self.close(r @ r, h, "the square root squared")

    def test_singular_inverse_raises(self) -> None:
        """Singular members, the zero matrix and non-zero ones, make ``inv`` raise.

        The non-zero singular members are those of :meth:`singular_members`: a zero
        diagonal entry, a nilpotent shift, and their products with a random invertible
        member (whose diagonals need not vanish). ``inv`` must raise
        :class:`~structmat.SingularMatrixError` for each and leave the member unchanged.
        """
        cls = self.structure
        if not cls.closed_under_inverse:
            return
        for dim in (1, 4, 33):
            with raises(SingularMatrixError, "singular"):
                cls.zeros(dim, dtype=torch.float64).inv()
        for dim in (4, 33):
            singular = self.singular_members(dim)
            assert singular, f"no non-zero singular {cls.__name__} member of size {dim} found"
            for what, member in singular.items():
                before = member.to_dense().clone()
                with raises(SingularMatrixError, "singular"):
                    member.inv()
                assert torch.equal(member.to_dense(), before), f"inv changed {what}"

    def singular_members(self, dim: int) -> dict[str, StructuredMatrix]:
        r"""Non-zero members of size ``dim`` whose dense matrix is exactly singular.

        Candidates are the projections of :math:`\operatorname{diag}(0, 1, \ldots, 1)`,
        :math:`\operatorname{diag}(1, \ldots, 1, 0)`, the lower and upper shifts
        (nilpotent) and :math:`I - Z` for the cyclic shift :math:`Z` and its transpose
        (rows summing to zero), and the products ``A @ P`` and ``P @ A`` of each with a random
        invertible member ``A``; kept are those that are not zero and exactly singular
        as stored: an exactly zero row or column, a triangular matrix with an exactly
        zero diagonal entry, or rows or columns whose exact sums (:func:`math.fsum`) all
        vanish (a rounded product that is only nearly singular is dropped).
        Override it to supply others.
        """
        cls = self.structure
        eye = torch.eye(dim, dtype=torch.float64)
        first, last = eye.clone(), eye.clone()
        first[0, 0] = 0.0
        last[-1, -1] = 0.0
        shift = torch.diag(torch.ones(dim - 1, dtype=torch.float64), -1)
        cyclic = shift.clone()
        cyclic[0, -1] = 1.0
        bases = {"diag(0, 1, ...)": first, "diag(..., 1, 0)": last, "shift": shift}
        bases.update({"shift^T": shift.T, "I - cyclic shift": eye - cyclic})
        bases["I - cyclic shift^T"] = eye - cyclic.T
        A = random_member(cls, dim, seed=dim, invertible=True)
        candidates: dict[str, StructuredMatrix] = {}
        for what, mat in bases.items():
            P = cls.from_dense(mat)
            candidates[f"P({what})"] = P
            candidates[f"A @ P({what})"] = A @ P
            candidates[f"P({what}) @ A"] = P @ A
        return {
            what: member
            for what, member in candidates.items()
            if bool(member.to_dense().ne(0).any()) and _exactly_singular(member.to_dense())
        }

    def test_zeros_and_eye(self) -> None:
        """``zeros`` and ``eye`` at every boundary dimension, with dtype and device."""
        cls = self.structure
        for dim in interesting_dims(cls, self.max_dim):
            zero = cls.zeros(dim, dtype=torch.float32)
            assert type(zero) is cls and zero.shape == torch.Size([dim, dim])
            assert zero.dtype == torch.float32 and zero.device == torch.device("cpu")
            assert torch.equal(zero.to_dense(), torch.zeros(dim, dim))
            eye = cls.eye(dim, dtype=torch.float64)
            assert torch.equal(eye.to_dense(), torch.eye(dim, dtype=torch.float64))

    def _draw_batch(
        self, data: st.DataObject, count: int
    ) -> tuple[list[StructuredMatrix], list[StructuredMatrix], Tensor, Tensor]:
        """Two lists of ``count`` random members of one drawn ``d``, ``X`` and scalars.

        Returns ``(firsts, seconds, X, factors)`` with ``X`` of shape ``(count, d, n)``
        and ``factors`` of shape ``(count,)``: the operands of the batch laws.
        """
        cls = self.structure
        dim = data.draw(dims(cls, self.max_dim), label="d")
        n = data.draw(st.integers(1, 5), label="n")
        firsts = [random_member(cls, dim, data.draw(seeds)) for _ in range(count)]
        seconds = [random_member(cls, dim, data.draw(seeds)) for _ in range(count)]
        return (
            firsts,
            seconds,
            self.draw_tensor(data, (count, dim, n)),
            self.draw_tensor(data, (count,)),
        )

    @given(data=st.data())
    def test_batched_operations_match_members(self, data: st.DataObject) -> None:
        """Under ``torch.vmap`` over stacked members, operations equal each member's.

        A structure that does not declare ``batches_under_vmap`` promises nothing here.
        """
        cls = self.structure
        if not cls.batches_under_vmap:
            return
        count = 3
        firsts, seconds, X, factors = self._draw_batch(data, count)

        def operations(
            first: dict[str, Tensor], second: dict[str, Tensor], x: Tensor, factor: Tensor
        ) -> dict[str, Tensor]:
            A, B = cls.from_tensors(first), cls.from_tensors(second)
            updated = A.clone().add_(B, alpha=factor).mul_(factor).diag_add_(-1.0)
            results = {
                "A @ X": A @ x,
                "A.rmatmat(X)": A.rmatmat(x),
                "average_trace": A.average_trace(),
                "infinity_vector_norm": A.infinity_vector_norm(),
            }
            for what, matrix in {
                "A @ B": A @ B,
                "from_inner(X)": A.from_inner(x),
                "from_inner()": A.from_inner(),
                "in-place updates": updated,
            }.items():
                results.update({f"{what} {k}": t for k, t in matrix.tensors().items()})
            return results

        def stack(members: list[StructuredMatrix]) -> dict[str, Tensor]:
            return {k: torch.stack([m.tensors()[k] for m in members]) for k in members[0].tensors()}

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            batched = torch.vmap(operations)(stack(firsts), stack(seconds), X, factors)
        for i in range(count):
            single = operations(firsts[i].tensors(), seconds[i].tensors(), X[i], factors[i])
            for what, expected in single.items():
                self.close(batched[what][i], expected, f"member {i} of a vmapped {what}")

    @given(data=st.data())
    def test_stacks_match_members(self, data: st.DataObject) -> None:
        """Every stack operation on a stack of members equals that operation on each member.

        Scalars come back one per member, scalar arguments go in one per member, and the
        tensor operands carry the batch dimension first; no warning is raised (no dense
        fallback). A structure that does not declare ``batches_natively`` promises
        nothing here.
        """
        cls = self.structure
        if not cls.batches_natively:
            return
        count = 3
        firsts, seconds, X, factors = self._draw_batch(data, count)
        vectors = self.draw_tensor(data, X.shape[:2])

        def operations(
            A: StructuredMatrix, B: StructuredMatrix, x: Tensor, v: Tensor, factor: Tensor
        ) -> dict[str, Any]:
            return {
                "A @ X": A @ x,
                "A @ v": A @ v,
                "X^T @ A": x.mT @ A,
                "A.rmatmat(X)": A.rmatmat(x),
                "diag": A.diag(),
                "trace": A.trace(),
                "average_trace": A.average_trace(),
                "infinity_vector_norm": A.infinity_vector_norm(),
                "frobenius_norm": A.frobenius_norm(),
                "to_dense": A.to_dense(),
                "A @ B": A @ B,
                "A + B": A + B,
                "A - B": A - B,
                "A.add(B, alpha=c)": A.add(B, alpha=factor),
                "c * A": A * factor,
                "A / c": A / factor,
                "A^T": A.T,
                "from_inner()": A.from_inner(),
                "in-place updates": A.clone().add_(B, alpha=factor).mul_(factor).diag_add_(factor),
            }

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stacked = operations(cls.stack(firsts), cls.stack(seconds), X, vectors, factors)
        for i in range(count):
            single = operations(firsts[i], seconds[i], X[i], vectors[i], factors[i])
            for what, expected in single.items():
                result = stacked[what]
                if isinstance(expected, StructuredMatrix):
                    assert result.batch_shape == (count,), what
                    result, expected = result.unbind()[i].to_dense(), expected.to_dense()
                else:
                    result = result[i]
                self.close(result, expected, f"member {i} of a stack's {what}")

    def test_stack_round_trip_and_errors(self) -> None:
        """``stack(members).unbind()`` returns the members; other operations raise on a stack.

        The operations outside :data:`~structmat.STACK_OPERATIONS` raise
        ``ValueError`` naming the stack operations before touching anything, per-member
        scalars of another dtype out of place ``TypeError``; a
        structure that does not batch natively refuses to stack (``TypeError``).
        """
        cls = self.structure
        dim = interesting_dims(cls, self.max_dim)[-1]
        members = [random_member(cls, dim, seed) for seed in range(3)]
        if not cls.batches_natively:
            with raises(TypeError, "batches_natively"):
                cls.stack(members)
            return
        stack = cls.stack(members)
        for member, back in zip(members, stack.unbind(), strict=True):
            assert torch.equal(member.to_dense(), back.to_dense())
        # half-precision traces and norms are reduced after scaling each member by its own
        # largest entry: a bfloat16 member of entries near 1e-30 beside one near 1e30 keeps
        # its trace and its norm
        magnitudes = {torch.float16: (300.0, 1.0, 1e-3), torch.bfloat16: (1e30, 1.0, 1e-30)}
        for dtype, scales in magnitudes.items():
            halves = [m.to(dtype) * s for m, s in zip(members, scales, strict=True)]
            for what in ("trace", "average_trace", "frobenius_norm"):
                stacked = getattr(cls.stack(halves), what)()
                expected = torch.stack([getattr(half, what)() for half in halves])
                # the float32 sums may differ in their last bits: one unit of the dtype
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(stacked, expected, rtol=eps, atol=0.0)
        X = random_tensor((dim, 2), seed=1)
        refused = [
            lambda: stack.from_inner(X.expand(3, dim, 2)),
            lambda: stack.from_inner2(X @ X.mT),
        ]
        if cls.closed_under_inverse:
            refused.append(stack.inv)
        before = {k: t.clone() for k, t in stack.tensors().items()}
        for call in refused:
            with raises(ValueError, "stack"):
                call()
        with raises(ValueError, "batch shape"):
            stack.mul_(torch.ones(2, dtype=stack.dtype))
        other_dtype = torch.float64 if stack.dtype != torch.float64 else torch.float32
        per_member = torch.ones(3, dtype=other_dtype)
        for call in (
            lambda: stack * per_member,
            lambda: stack.add(stack, alpha=per_member),
        ):
            with raises(TypeError, "dtype"):
                call()
        with raises(ValueError, "not aligned"):
            stack @ X
        with raises(ValueError, "member, not a stack"):
            members[0].unbind()
        for key, tensor in stack.tensors().items():
            assert torch.equal(tensor, before[key]), key

    # --------------------------------------------------------------- autograd
    def test_gradients(self) -> None:
        """``gradcheck`` through ``A @ X``, ``from_inner(X)``, ``from_inner2(M)`` and ``inv``."""
        cls = self.structure
        small = [d for d in interesting_dims(cls, self.max_dim) if d <= 12]
        for dim in sorted({small[0], small[-1]}):
            A = random_member(cls, dim, seed=dim, invertible=True)
            keys = list(A.tensors())
            inputs = [t.clone().requires_grad_(True) for t in A.tensors().values()]
            X = random_tensor((dim, 2), seed=1).requires_grad_(True)
            M = random_tensor((dim, dim), seed=2).requires_grad_(True)

            def build(tensors: tuple[Tensor, ...], keys: list[str] = keys) -> StructuredMatrix:
                return cls(**dict(zip(keys, tensors, strict=True)))

            def stored(matrix: StructuredMatrix) -> tuple[Tensor, ...]:
                return tuple(matrix.tensors().values())

            checks: dict[str, tuple[Callable[..., Any], tuple[Tensor, ...]]] = {
                "A @ X": (lambda *args: build(args[:-1]) @ args[-1], (*inputs, X)),
                "from_inner(X)": (
                    lambda *args: stored(build(args[:-1]).from_inner(args[-1])),
                    (*inputs, X),
                ),
                "from_inner2(M)": (
                    lambda *args: stored(build(args[:-1]).from_inner2(args[-1])),
                    (*inputs, M),
                ),
            }
            if cls.closed_under_inverse:
                checks["inv"] = (lambda *args: stored(build(args).inv()), tuple(inputs))
            for what, (function, arguments) in checks.items():
                assert torch.autograd.gradcheck(function, arguments, fast_mode=True), what

    # -------------------------------------------------------------- precision
    def test_low_precision_accuracy(self) -> None:
        """Every operation in float32, bfloat16 and float16 is within a few roundoffs.

        Inputs are rounded to the dtype first and the exact result is computed in float64
        from the rounded inputs, so what is left is the rounding of intermediates and of
        the result; it must stay below ``low_precision_tolerance`` unit roundoffs relative
        to the norm of the exact result (the invertible members have condition number at
        most 3).
        """
        cls = self.structure
        for dtype in LOW_PRECISION:
            eps = torch.finfo(dtype).eps
            for dim in (1, 17, 40):
                A, B = (random_member(cls, dim, s, dtype=dtype, invertible=True) for s in (3, 4))
                X = random_tensor((dim, 4), seed=5, dtype=dtype)
                XXT = (X.double() @ X.double().T).to(dtype)
                A64, B64, X64 = A.to(torch.float64), B.to(torch.float64), X.double()
                pairs = {
                    "A @ X": (A @ X, A64 @ X64),
                    "A.rmatmat(X)": (A.rmatmat(X), A64.rmatmat(X64)),
                    "A @ B": ((A @ B).to_dense(), (A64 @ B64).to_dense()),
                    "A + B": ((A + B).to_dense(), (A64 + B64).to_dense()),
                    "from_inner(X)": (A.from_inner(X).to_dense(), A64.from_inner(X64).to_dense()),
                    "from_inner()": (A.from_inner().to_dense(), A64.from_inner().to_dense()),
                    "from_inner2": (
                        A.from_inner2(XXT).to_dense(),
                        A64.from_inner2(XXT.double()).to_dense(),
                    ),
                    "from_mat_inner": (
                        cls.from_mat_inner(X).to_dense(),
                        cls.from_mat_inner(X64).to_dense(),
                    ),
                    "frobenius_norm": (A.frobenius_norm(), A64.frobenius_norm()),
                    "average_trace": (A.average_trace(), A64.average_trace()),
                }
                if cls.closed_under_inverse:
                    pairs["inv"] = (A.inv().to_dense(), A64.inv().to_dense())
                for what, (low, exact) in pairs.items():
                    assert low.dtype == dtype, f"{what} returned {low.dtype} for {dtype}"
                    error = float(torch.linalg.norm(low.double() - exact))
                    error /= 1.0 + float(torch.linalg.norm(exact))
                    assert error <= self.low_precision_tolerance * eps, (
                        f"{cls.__name__} {what} in {dtype} at d = {dim}: relative error "
                        f"{error:.2e} > {self.low_precision_tolerance} eps"
                    )

    def test_half_precision_reductions_do_not_overflow(self) -> None:
        r"""Norm and traces of large half-precision members are finite when representable.

        The member is scaled so that :math:`\|A\|_F` is an eighth of the largest finite
        number of the dtype (its squares, and in bfloat16 even their float32 values,
        overflow); :math:`\|A\|_F` and :math:`\operatorname{tr} A` must be finite and
        accurate. Then the diagonal is raised to a quarter of the largest number, so that
        the trace overflows but the average trace does not: it must be finite and
        accurate too.
        """
        cls = self.structure
        for dtype in HALF_PRECISION:
            info = torch.finfo(dtype)
            for dim in (1, 17, 40):
                A = random_member(cls, dim, seed=dim)
                A.mul_(info.max / 8 / float(torch.linalg.matrix_norm(A.to_dense())))
                low = A.to(dtype)
                exact = low.to(torch.float64).to_dense()
                norm = float(torch.linalg.matrix_norm(exact))
                diagonal = exact.diagonal()
                bound = 4 * info.eps
                checks = {
                    "frobenius_norm": (low.frobenius_norm(), norm, norm),
                    "trace": (low.trace(), float(diagonal.sum()), float(diagonal.abs().sum())),
                }
                raised = low.clone().mul_(1 / 64).diag_add_(info.max / 4)
                raised_diagonal = raised.to(torch.float64).to_dense().diagonal()
                checks["average_trace"] = (
                    raised.average_trace(),
                    float(raised_diagonal.mean()),
                    float(raised_diagonal.abs().mean()),
                )
                for what, (value, expected, scale) in checks.items():
                    assert value.dtype == dtype, f"{what} returned {value.dtype}"
                    assert bool(value.isfinite()), (
                        f"{cls.__name__}.{what} overflows in {dtype} at d = {dim}: {value} "
                        f"(exact {expected:.4g})"
                    )
                    assert abs(float(value) - expected) <= bound * scale, (
                        f"{cls.__name__}.{what} in {dtype} at d = {dim}: {float(value):.6g}, "
                        f"exact {expected:.6g}"
                    )

    # -------------------------------------------------------------- bad input
    def test_bad_operands_are_rejected(self) -> None:
        """Other structures, other sizes and non-scalars raise and leave ``A`` unchanged."""
        cls, other_cls = self.structure, self._other()
        A = random_member(cls, 5, seed=0)
        before = A.to_dense().clone()
        other = random_member(other_cls, 5, seed=1)
        for what, op in {
            "A + other": lambda: A + other,
            "A - other": lambda: A - other,
            "A @ other": lambda: A @ other,
            "A.add_(other)": lambda: A.add_(other),
        }.items():
            with raises(TypeError, f"{cls.__name__}.*{other_cls.__name__}"):
                op()
            assert torch.equal(A.to_dense(), before), f"{what} changed A"
        bigger = random_member(cls, 6, seed=2)
        for op in (lambda: A + bigger, lambda: A @ bigger, lambda: A.add_(bigger)):
            with raises(ValueError, r"\(5, 5\).*\(6, 6\)"):
                op()
        for op in (
            lambda: A @ torch.zeros(6, 2, dtype=torch.float64),
            lambda: A.rmatmat(torch.zeros(6, 2, dtype=torch.float64)),
            lambda: A.from_inner(torch.zeros(6, 2, dtype=torch.float64)),
        ):
            with raises(ValueError, r"\(5, 5\).*\(6, 2\)"):
                op()
        with raises(ValueError, r"from_inner2.*\(5, 5\).*\(6, 6\)"):
            A.from_inner2(torch.zeros(6, 6, dtype=torch.float64))
        with raises(TypeError, "from_inner2"):
            A.from_inner2([[1.0]])  # type: ignore[arg-type]
        with raises(TypeError, "scalar"):
            A.mul_("2")  # type: ignore[arg-type]
        with raises(TypeError, "scalar"):
            A.diag_add_(None)  # type: ignore[arg-type]
        assert torch.equal(A.to_dense(), before), "a rejected call changed A"

    def test_bad_storage_is_rejected(self) -> None:
        """The constructor names the tensor that is not a float tensor of the declared shape."""
        cls = self.structure
        dim = 5
        layout = cls.tensor_shapes(dim)
        good = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in layout.items()}
        cls(**good)
        for name, shape in layout.items():
            with raises(TypeError, name):
                cls(**{**good, name: [0.0] * max(1, math.prod(shape))})
            with raises(TypeError, f"{name}.*floating"):
                cls(**{**good, name: torch.zeros(shape, dtype=torch.int64)})
            with raises(ValueError, f"{name} must be a {len(shape)}-d tensor"):
                cls(**{**good, name: torch.zeros((*shape, 1), dtype=torch.float64)})
            if len(layout) > 1:
                with raises(ValueError, rf"(?s)(?=.*\b{name}\b)(?=.*dtype)"):
                    cls(**{**good, name: torch.zeros(shape, dtype=torch.float32)})
                if shape:
                    grown = (shape[0] + 1, *shape[1:])
                    shapes = {**{k: tuple(v) for k, v in layout.items()}, name: grown}
                    largest = sum(math.prod(v) for v in shapes.values()) + 2
                    if not any(
                        {k: tuple(v) for k, v in cls.tensor_shapes(d).items()} == shapes
                        for d in range(1, largest)
                    ):
                        # the message names the tensors that disagree with the layout the
                        # shapes suggest, and the whole layout
                        with raises(ValueError, "must have shape.*member stores"):
                            cls(**{**good, name: torch.zeros(grown, dtype=torch.float64)})

    def test_bad_dense_input_is_rejected(self) -> None:
        """``from_dense`` needs a non-empty square matrix; ``zeros`` a positive ``dim``."""
        cls = self.structure
        for bad in (torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 2, 2), torch.zeros(0, 0)):
            with raises(ValueError, "square"):
                cls.from_dense(bad)
        for dim in (0, -1):
            with raises(ValueError, "dim"):
                cls.zeros(dim)

    # ---------------------------------------------------------- structured
    def test_every_operation_is_structured(self) -> None:
        """No operation falls back to dense or allocates as much as a dense matrix.

        Every operation runs under :class:`~structmat.testing.LargestAllocation`; the
        largest new tensor must have fewer than ``d * d`` elements, or at most as many as
        the storage when the storage itself is that large (dense, triangular). The
        operand ``X`` has few columns: with ``n >= 8 d`` columns the triangular Toeplitz
        ``from_inner(X)`` forms ``X X^T`` by design, which is then at most an eighth of
        ``X`` (``tests/test_toeplitz_direct.py`` bounds such routes by the size of ``X``).
        """
        cls = self.structure
        for dim in self.allocation_dims:
            A, B = (random_member(cls, dim, seed, invertible=True) for seed in (0, 1))
            X = random_tensor((dim, 3), seed=2)
            M = random_tensor((dim, dim), seed=3)
            limit = max(self.structure.stored_numbers(dim), dim * dim - 1)
            operations = self._operations(A, B, X, M)
            for what, run in operations.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DenseFallbackWarning)
                    with LargestAllocation() as record:
                        run()
                fallbacks = [w for w in caught if issubclass(w.category, DenseFallbackWarning)]
                assert not fallbacks, f"{cls.__name__} {what} falls back to dense"
                assert record.largest <= limit, (
                    f"{cls.__name__} {what} at d = {dim} allocated {record.largest} elements "
                    f"in {record.op} (limit {limit})"
                )

    def _operations(
        self,
        A: StructuredMatrix,
        B: StructuredMatrix,
        X: Tensor,
        M: Tensor,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Callable[[], object]]:
        """Every public operation on ``A`` (and ``B``, ``X``, ``M``), as thunks."""
        cls, dim = self.structure, A.shape[0]
        operations: dict[str, Callable[[], object]] = {
            "A + B": lambda: A + B,
            "A - B": lambda: A - B,
            "A.add(B, alpha)": lambda: A.add(B, alpha=0.5),
            "c * A": lambda: 3.0 * A,
            "add_": lambda: A.clone().add_(B, alpha=0.5),
            "mul_": lambda: A.clone().mul_(2.0),
            "diag_add_": lambda: A.clone().diag_add_(2.0),
            "A @ B": lambda: A @ B,
            "A @ X": lambda: A @ X,
            "A.rmatmat(X)": lambda: A.rmatmat(X),
            "X^T @ A": lambda: X.T @ A,
            "A.T": lambda: A.T,
            "A.T.T": lambda: A.T.T,
            "A.T @ X": lambda: A.T @ X,
            "A.T @ B.T": lambda: A.T @ B.T,
            "A / 2": lambda: A / 2.0,
            "-A": lambda: -A,
            "clone": lambda: A.clone(),
            "diag": lambda: A.diag(),
            "trace": lambda: A.trace(),
            "average_trace": lambda: A.average_trace(),
            "frobenius_norm": lambda: A.frobenius_norm(),
            "infinity_vector_norm": lambda: A.infinity_vector_norm(),
            "from_inner(X)": lambda: A.from_inner(X),
            "from_inner()": lambda: A.from_inner(),
            "from_inner2(M)": lambda: A.from_inner2(M),
            "from_mat_inner(X)": lambda: cls.from_mat_inner(X),
            "from_dense(M)": lambda: cls.from_dense(M),
            "zeros": lambda: cls.zeros(dim, dtype=dtype),
            "eye": lambda: cls.eye(dim, dtype=dtype),
        }
        if cls.closed_under_inverse:
            operations["inv"] = lambda: A.inv()
        return operations

    # ----------------------------------------------------------------- runner
    @classmethod
    def law_names(cls) -> list[str]:
        """Names of the laws of this class (switched-off ones left out), in order."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names += [n for n in vars(klass) if n.startswith("test_") and n not in names]
        return [name for name in names if callable(getattr(cls, name, None))]

    def check(
        self,
        max_examples: int = 10,
        raise_on_failure: bool = True,
        laws: Iterable[str] | None = None,
    ) -> LawReport:
        """Run the laws, each hypothesis law with ``max_examples`` examples.

        Runs without pytest, with a fixed seed and no example database.

        Args:
            max_examples: Examples per hypothesis law.
            raise_on_failure: Raise ``AssertionError`` (with the report) if a law fails.
            laws: Names of the laws to run (default: all of :meth:`law_names`).

        Returns:
            The report: which laws hold and which fail, with their errors.

        Raises:
            ValueError: If ``laws`` names a law this class does not have.
        """
        names = self.law_names()
        if laws is not None:
            unknown = sorted(set(laws) - set(names))
            if unknown:
                raise ValueError(f"unknown laws {unknown}; the laws are {names}")
            names = [name for name in names if name in set(laws)]
        report = LawReport(self.structure.__name__)
        run_settings = settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            verbosity=Verbosity.quiet,
            suppress_health_check=list(HealthCheck),
        )
        for name in names:
            law = getattr(type(self), name)
            inner = _hypothesis_inner(law)
            try:
                if inner is None:
                    law(self)
                elif name in LARGE_LAWS:
                    few = run_settings.max_examples
                    few = max(1, min(few, self.large_examples))
                    settings(run_settings, max_examples=few)(given(data=st.data())(inner))(self)
                else:
                    run_settings(given(data=st.data())(inner))(self)
            except Exception as error:  # every failure is reported
                report.failed[name] = f"{type(error).__name__}: {error}"
            else:
                report.passed.append(name)
        if raise_on_failure and not report.ok:
            raise AssertionError(str(report))
        return report

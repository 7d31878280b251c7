"""Jacobian strategies for the implicit stages: the matrix ``A = a*I - dg/dy`` (times PETSc's scale) that
Newton solves with in the forward pass and, transposed, in the adjoint.

* ``matrix_free``: a shell whose product is a JVP and whose transpose product is a VJP, both on one graph
  kept per linearization point (:class:`~pnode._field.Linearization`); GMRES without preconditioner.
  Cost per Krylov iteration: one backward pass.
* ``batched``: the leading dimension of ``y0`` is a batch of independent samples, so ``dg/dy`` is
  block-diagonal.  Per-sample blocks come from one batched reverse pass per row
  (:meth:`~pnode._field.VectorField.jacobian_blocks`); the preconditioner is an exact batched
  LU of the blocks (``torch.linalg.lu_factor``), so with the default ``preonly`` Krylov method every linear
  solve is exact and Newton needs the iterations one sample needs, whatever the batch size.
* ``dense``: one block, the whole Jacobian (reverse-mode rows), exact LU: small states.
* ``aij`` / ``aij_batched``: the same rows (the whole rank-local Jacobian, or per-sample blocks)
  assembled in a PETSc AIJ matrix, GMRES with point-block Jacobi; PETSc's TSIRK (Gauss-Legendre, Radau
  IIA) builds its stage matrix over an assembled Jacobian and gets ``aij`` by default.

The shell strategies give PETSc a Python shell (``mult``, ``multTranspose``, ``scale``, ``duplicate``:
the methods the theta, ARKIMEX and DIRK forward and adjoint call).  Every strategy sets its KSP/PC before
PETSc reads the options database, so ``-ksp_type``, ``-pc_type``, ``-ksp_rtol``, ``-snes_*`` still
override them.
"""

from __future__ import annotations

import numpy as np
import torch

from ._failures import CallbackErrors, guarded
from ._field import VectorField
from ._petsc import PETSc
from .distributed import RankGroup
from .errors import InvalidArgumentError

DENSE_LIMIT = 64   # the default strategy is dense up to this many unknowns, matrix-free above


class _ZeroShell:
    """What ``duplicate`` returns: PETSc's ARKIMEX/DIRK adjoint duplicates the implicit Jacobian to hold
    the (absent) explicit part's Jacobian of a fully implicit problem; it is zero."""

    def zeroEntries(self, mat):  # noqa: N802 - PETSc's names
        pass

    def mult(self, mat, x, y):
        y.set(0.0)

    def multTranspose(self, mat, x, y):  # noqa: N802
        y.set(0.0)

    def multTransposeAdd(self, mat, x, y, z):  # noqa: N802
        y.copy(z)

    def multAdd(self, mat, x, y, z):  # noqa: N802
        y.copy(z)


class JacobianStrategy:
    """Base: holds the point, shift and scale of the current ``A`` and is the shell Mat's context.

    Chord Newton (``options['newton'] = 'chord'``): while :attr:`reuse` is on (the driver turns it on
    for forward steps, off for the adjoint), ``dg/dy`` is evaluated at the first Newton iteration of a
    step and kept for that step's remaining iterations and stages; a new shift (another stage
    coefficient, a retried step) only re-forms ``A = shift*I - dg/dy``.  Newton then converges linearly
    to the same residual tolerance.  The adjoint's transposed solves always get the exact Jacobian at
    each stage, so the gradient stays the discrete adjoint of the computed forward steps."""

    name = ""
    option_defaults: dict[str, str] = {}

    def __init__(self, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors):
        self.field = field
        self.errors = errors        # for guarded: under MPI a failure writes NaN instead of raising
        self.n = n
        self.shift = 0.0
        self.factor = 1.0
        self.tau = 0.0
        self.x = torch.zeros(n, dtype=torch.float64)
        self.matrix = self._create_matrix(n, group)
        self.reuse = False          # chord Newton in forward steps (set by the driver)
        self._kept = False          # dg/dy of the current step is held
        self._pristine = False      # A is exactly shift*I - dg/dy (PETSc has not scaled it since)
        self.fresh = False          # the latest update evaluated dg/dy at its own point
        self.differences = False    # chord's forward dg/dy may come from differences (strategies that can)
        self._exact_next = False    # ... except after a stalled or failed solve (until the next step)

    def _create_matrix(self, n: int, group: RankGroup) -> PETSc.Mat:
        """The Mat PETSc solves with: a Python shell whose context is this strategy."""
        # n rows on this rank; PETSc sums the ranks' rows into the global size (a distributed state)
        size = (n, PETSc.DECIDE)
        matrix = PETSc.Mat().createPython((size, size), self, comm=group.comm)
        matrix.setUp()
        return matrix

    @classmethod
    def build(cls, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors) -> JacobianStrategy:
        """The strategy for ``field`` with ``n`` unknowns on this rank (raises for unsuited states)."""
        return cls(field, n, group, errors)

    def new_step(self, exact: bool = False) -> None:
        """A step starts (``exact``: a stalled or failed solve goes on): the next :meth:`update`
        evaluates ``dg/dy`` again, with autograd if ``exact`` (until the next step starts)."""
        self._kept = False
        self._exact_next = exact

    @property
    def by_differences(self) -> bool:
        """The next evaluation may use differences: a forward chord step with nothing gone wrong in it."""
        return self.differences and self.reuse and not self._exact_next

    @property
    def holds_jacobian(self) -> bool:
        """Chord Newton may go on with the matrix as it is (no :meth:`update` needed)."""
        return self.reuse and self._kept and self._pristine

    def reused(self) -> None:
        """A Newton iteration goes on with the kept matrix (instead of an :meth:`update`)."""
        self.fresh = False
        self.field.stats.jacobian_reuses += 1

    # called from the IJacobian callback
    def update(self, tau: float, x: np.ndarray, shift: float) -> None:
        # a new shift is a retried step (smaller) or another stage coefficient: evaluate afresh
        if self.reuse and self._kept and shift == self.shift:
            self.fresh = False
            self.field.stats.jacobian_reuses += 1
            if not self._pristine:
                self.factor = 1.0
                self._form()
                self._pristine = True
            return
        self.tau, self.shift, self.factor = tau, shift, 1.0
        self.x.copy_(torch.from_numpy(x))
        self._evaluate()
        self._form()
        self._kept = self._pristine = self.fresh = True

    def _evaluate(self) -> None:
        """Evaluate ``dg/dy`` (or what stands for it) at ``(self.tau, self.x)``."""

    def _form(self) -> None:
        """Form ``A = shift*I - dg/dy`` (times ``factor``) from what :meth:`_evaluate` kept."""

    def configure(self, ksp) -> None:
        """Set the Krylov method and preconditioner (before PETSc reads the options database)."""

    def free(self) -> None:
        self.matrix.destroy()      # releases PETSc's reference to this context (no cycle left)

    # --- shell methods PETSc calls ---------------------------------------------------------------
    def scale(self, mat, alpha):
        self.factor *= alpha
        self._pristine = False

    def duplicate(self, mat, op):
        zero = PETSc.Mat().createPython(mat.getSizes(), _ZeroShell(), comm=mat.getComm())
        zero.setUp()
        return zero

    @guarded(output=2)
    def mult(self, mat, x, y):
        self._apply(x, y, transpose=False)

    @guarded(output=2)
    def multTranspose(self, mat, x, y):  # noqa: N802
        self._apply(x, y, transpose=True)

    def _apply(self, x, y, transpose: bool) -> None:
        v = torch.from_numpy(x.getArray(readonly=True))
        out = torch.from_numpy(y.getArray())
        out.copy_(self._product(v, transpose))
        if self.factor != 1.0:
            out.mul_(self.factor)
        y.stateIncrease()

    def _product(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        raise NotImplementedError


class MatrixFree(JacobianStrategy):
    """Newton-Krylov without a matrix: ``A v = a v - J v`` by JVP, ``A^T v = a v - J^T v`` by VJP.

    The adjoint's transposed solves use the same KSP, so its tolerance bounds the gradient's accuracy:
    the default ``ksp_rtol`` is tight (1e-10) for that reason."""

    name = "matrix_free"
    option_defaults = {"ksp_type": "gmres", "pc_type": "none", "ksp_rtol": "1e-10"}

    def __init__(self, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors):
        super().__init__(field, n, group, errors)
        self._linear = None

    def _evaluate(self) -> None:
        self._linear = None     # built at the first product: the graph at this point serves them all

    def _product(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        if self._linear is None:
            self._linear = self.field.linearize(self.tau, self.x)
        jv = self._linear.vjp(v) if transpose else self._linear.jvp(v)
        return self.shift * v - jv


class BlockDiagonal(JacobianStrategy):
    """``A`` held as per-sample blocks ``(B, d, d)``; an exact batched LU as the preconditioner."""

    name = "batched"
    option_defaults = {"ksp_type": "preonly"}

    def __init__(self, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors, n_blocks: int):
        super().__init__(field, n, group, errors)
        self.n_blocks = n_blocks
        self.d = n // n_blocks
        self.blocks: torch.Tensor | None = None
        self._jac: torch.Tensor | None = None        # dg/dy blocks at (tau, x)
        self._lu: tuple[torch.Tensor, torch.Tensor] | None = None
        self._inverse: np.ndarray | None = None      # chord Newton's forward solves (see forward_solve)
        self._eye = torch.eye(self.d, dtype=torch.float64)

    @classmethod
    def build(cls, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors) -> BlockDiagonal:
        layout = field.layout
        if layout.is_tuple or len(layout.shapes[0]) < 2:
            raise InvalidArgumentError(
                "options['jacobian']='batched' means the leading dimension of y0 is a batch of independent "
                f"samples, so y0 must be one tensor of shape (batch, ...); got shapes {list(layout.shapes)}. "
                "Use 'dense' or 'matrix_free' for other states")
        return cls(field, n, group, errors, n_blocks=layout.shapes[0][0])

    def _evaluate(self) -> None:
        blocks = (self.field.difference_blocks(self.tau, self.x, self.n_blocks) if self.by_differences
                  else None)
        self._jac = blocks if blocks is not None else self.field.jacobian_blocks(self.tau, self.x, self.n_blocks)

    def _form(self) -> None:
        self.blocks = self.shift * self._eye - self._jac
        self._lu = self._inverse = None

    def scale(self, mat, alpha):
        self.blocks = self.blocks * alpha   # kept in the blocks, so the LU sees it too
        self._lu = self._inverse = None
        self._pristine = False

    def forward_solve(self, r: np.ndarray, out: np.ndarray) -> bool:
        """``out = A^{-1} r`` by the blocks' explicit inverses, in chord Newton's forward iterations only
        (False otherwise): one inverse serves every iteration of a step, and its product is numpy's
        batched matmul (1 us against LU's 8 us per solve at d = 3, batch 4).  Newton's iterates converge
        to the same root whatever the linear solve's rounding; the adjoint's transposed solves, whose
        accuracy is the gradient's, keep the LU."""
        if not self.reuse:
            return False
        if self._inverse is None:
            # a singular block gives inf/nan, so Newton fails and PETSc reports it (no exception here)
            self._inverse = torch.linalg.inv_ex(self.blocks)[0].numpy()
        np.matmul(self._inverse, r.reshape(self.n_blocks, self.d, 1), out=out.reshape(self.n_blocks, self.d, 1))
        return True

    def configure(self, ksp) -> None:
        ksp.getPC().setType(PETSc.PC.Type.PYTHON)
        ksp.getPC().setPythonContext(_BlockLU(self))

    def _product(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        blocks = self.blocks.transpose(1, 2) if transpose else self.blocks
        return torch.bmm(blocks, v.view(self.n_blocks, self.d, 1)).view(-1)

    def _apply(self, x, y, transpose: bool) -> None:
        if self.d > 8:
            super()._apply(x, y, transpose)
            return
        # small blocks: numpy's batched matmul (the call, not the arithmetic, is the cost here)
        blocks = self.blocks.numpy()
        out = y.getArray()
        shape = (self.n_blocks, self.d, 1)
        np.matmul(blocks.transpose(0, 2, 1) if transpose else blocks, x.getArray(readonly=True).reshape(shape),
                  out=out.reshape(shape))
        if self.factor != 1.0:
            out *= self.factor
        y.stateIncrease()

    def exact_solve(self, r: np.ndarray, out: np.ndarray, transpose: bool) -> None:
        """``out = A^{-1} r`` (or ``A^{-T} r``) by LU with partial pivoting: LAPACK's batched ``gesv``
        through numpy for the small blocks (one call, 3x faster than torch's factor-then-solve at d = 3),
        torch's cached LU for larger ones."""
        if self.d <= 8:
            blocks = self.blocks.numpy()
            try:
                solved = np.linalg.solve(blocks.transpose(0, 2, 1) if transpose else blocks,
                                         r.reshape(self.n_blocks, self.d, 1))
            except np.linalg.LinAlgError:     # singular: NaN, so Newton fails and PETSc reports it
                solved = np.full((self.n_blocks, self.d, 1), np.nan)
            out[:] = solved.reshape(-1)
            return
        out[:] = self._block_solve(torch.from_numpy(r), transpose).numpy()

    def _block_solve(self, r: torch.Tensor, transpose: bool) -> torch.Tensor:
        if self._lu is None:
            # a singular block gives inf/nan, so Newton fails and PETSc reports it (no exception here)
            lu, pivots, _ = torch.linalg.lu_factor_ex(self.blocks)
            self._lu = (lu, pivots)
        rhs = r.view(self.n_blocks, self.d, 1)
        return torch.linalg.lu_solve(*self._lu, rhs, adjoint=transpose).view(-1)

    def getDiagonal(self, mat, d):  # noqa: N802 - lets -pc_type jacobi work too
        torch.from_numpy(d.getArray()).copy_(torch.diagonal(self.blocks, dim1=1, dim2=2).reshape(-1))
        d.stateIncrease()


class _BlockLU:
    """Python PC context: exact solves with the blocks' LU factors (and their transposes)."""

    def __init__(self, strategy: BlockDiagonal):
        self.strategy = strategy
        self.errors = strategy.errors   # for guarded

    @guarded(output=2)
    def apply(self, pc, x, y):
        self._solve(x, y, transpose=False)

    @guarded(output=2)
    def applyTranspose(self, pc, x, y):  # noqa: N802
        self._solve(x, y, transpose=True)

    def _solve(self, x, y, transpose: bool) -> None:
        out = y.getArray()
        if transpose or not self.strategy.forward_solve(x.getArray(readonly=True), out):
            self.strategy.exact_solve(x.getArray(readonly=True), out, transpose)
        y.stateIncrease()


class Dense(BlockDiagonal):
    """The whole Jacobian as one block (reverse-mode rows), exact LU: small single-process states."""

    name = "dense"

    @classmethod
    def build(cls, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors) -> Dense:
        if group.distributed:
            raise InvalidArgumentError("options['jacobian']='dense' needs a single-process state; use "
                                       "'matrix_free' or 'batched' with comm=")
        return cls(field, n, group, errors, n_blocks=1)


class Assembled(JacobianStrategy):
    """``A`` assembled in a PETSc AIJ matrix: the rank's whole Jacobian as dense rows.

    PETSc's TSIRK (Gauss-Legendre, Radau IIA) needs it: it builds its stage matrix as a MATKAIJ over the
    assembled IJacobian, which no Python shell can stand in for.  Rows come from
    :meth:`~pnode._field.VectorField.jacobian_blocks` (one batched reverse pass per row of a block);
    they are written through one CSR call whose pattern is fixed at construction.  Under MPI each rank
    assembles its own rows, its diagonal block: ranks hold independent shards of the batch.  The
    default solver is GMRES preconditioned with point-block Jacobi (on TSIRK's KAIJ matrix: the exact
    inverse of each unknown's ``s x s`` stage block)."""

    name = "aij"
    option_defaults = {"ksp_type": "gmres", "pc_type": "pbjacobi", "ksp_rtol": "1e-10"}

    def __init__(self, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors, n_blocks: int):
        self.n_blocks = n_blocks
        self.d = n // n_blocks
        super().__init__(field, n, group, errors)
        self._eye = torch.eye(self.d, dtype=torch.float64)

    @classmethod
    def build(cls, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors) -> Assembled:
        return cls(field, n, group, errors, n_blocks=1)

    def _create_matrix(self, n: int, group: RankGroup) -> PETSc.Mat:
        matrix = PETSc.Mat().createAIJ(((n, PETSc.DECIDE), (n, PETSc.DECIDE)), nnz=(self.d, 0), comm=group.comm)
        matrix.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
        matrix.setUp()
        start = matrix.getOwnershipRange()[0]
        # the CSR pattern of n_blocks diagonal blocks of size d (global column numbers)
        local_columns = np.arange(self.d, dtype=PETSc.IntType)
        self._row_starts = np.arange(0, n * self.d + 1, self.d, dtype=PETSc.IntType)
        self._columns = (start + (np.arange(n, dtype=PETSc.IntType) // self.d * self.d)[:, None]
                         + local_columns[None, :]).reshape(-1)
        return matrix

    def _evaluate(self) -> None:
        self._jac = self.field.jacobian_blocks(self.tau, self.x, self.n_blocks)

    def update(self, tau: float, x: np.ndarray, shift: float) -> None:
        self._pristine = False      # PETSc operates on an AIJ matrix directly (MatScale, MatShift)
        super().update(tau, x, shift)

    def _form(self) -> None:
        blocks = self.shift * self._eye - self._jac
        # row b*d + i of the matrix is row i of block b: the blocks, row-major, are the CSR values
        self.matrix.setValuesCSR(self._row_starts, self._columns, blocks.reshape(-1).numpy())
        self.matrix.assemble()


class AssembledBlocks(Assembled):
    """AIJ with block-diagonal sparsity: the leading dimension of ``y0`` is a batch of independent
    samples, so only the per-sample ``d x d`` blocks are stored (``d`` rows per reverse pass set)."""

    name = "aij_batched"

    @classmethod
    def build(cls, field: VectorField, n: int, group: RankGroup, errors: CallbackErrors) -> AssembledBlocks:
        layout = field.layout
        if layout.is_tuple or len(layout.shapes[0]) < 2:
            raise InvalidArgumentError(
                "options['jacobian']='aij_batched' means the leading dimension of y0 is a batch of independent "
                f"samples, so y0 must be one tensor of shape (batch, ...); got shapes {list(layout.shapes)}. "
                "Use 'aij' for other states")
        return cls(field, n, group, errors, n_blocks=layout.shapes[0][0])


# options['jacobian'] -> strategy class (each builds itself from the field and the state size)
STRATEGIES: dict[str, type[JacobianStrategy]] = {
    cls.name: cls for cls in (MatrixFree, BlockDiagonal, Dense, Assembled, AssembledBlocks)}
JACOBIAN_STRATEGIES = tuple(STRATEGIES)
# TS types that need an assembled Jacobian: TSIRK's MATKAIJ stage matrix wraps the AIJ IJacobian
ASSEMBLED_ONLY = frozenset({"irk"})


def make_strategy(name: str | None, field: VectorField, n: int, group: RankGroup,
                  errors: CallbackErrors, ts_type: str | None = None) -> JacobianStrategy:
    """Build the strategy ``options['jacobian']`` names.

    ``None`` picks ``aij`` for TS types that need an assembled matrix (``irk``), otherwise ``dense`` up to
    :data:`DENSE_LIMIT` unknowns and ``matrix_free`` above.

    Raises
    ------
    InvalidArgumentError
        A shell strategy was asked for with a TS type that needs an assembled matrix, or the state does
        not suit the strategy (see each strategy's ``build``).
    """
    if ts_type in ASSEMBLED_ONLY:
        if name is None:
            name = "aij"
        elif not issubclass(STRATEGIES[name], Assembled):
            raise InvalidArgumentError(
                f"options['jacobian']={name!r} cannot serve PETSc TS type {ts_type!r}: it builds its stage "
                "matrix over an assembled AIJ Jacobian, so it needs options['jacobian']='aij' (dense rows), or "
                "'aij_batched' when the leading dimension of y0 is a batch of independent samples; or leave "
                "options['jacobian'] unset")
        if group.distributed:
            # measured: PETSc 3.26's TSIRK (its own 'gauss' type too) crashes with SEGV in its first step
            # on 2 ranks, before calling any callback, with an MPIAIJ Jacobian and every PC tried
            raise InvalidArgumentError(
                f"PETSc TS type {ts_type!r} (Gauss-Legendre, Radau IIA) does not run on more than one rank in "
                "PETSc 3.26 (TSIRK crashes in its first parallel step); solve without comm=, or use a method of "
                "another family (trbdf2, sdirk2, arkimex4, dirkes324sal)")
    elif name is None:
        name = "dense" if n <= DENSE_LIMIT else "matrix_free"
    return STRATEGIES[name].build(field, n, group, errors)   # the name was checked by SolveOptions.parse

"""PETSc callbacks for ``dy/dt = g(tau, y)`` in RHS form (explicit Runge-Kutta, and the explicit half of
an IMEX split).

Forward: ``rhs`` evaluates ``g`` on a zero-copy view of PETSc's stage vector and writes into PETSc's
output vector.  Backward (TSAdjoint, RK): for each stage PETSc calls the Jacobian callbacks at the stage
state and then only ``multTranspose`` on the Jacobian shells, so the callbacks just record the point and
the shells compute vector-Jacobian products.  The state VJP ``J^T lam`` and the parameter VJP
``(dg/dtheta)^T lam`` at one point and cotangent come from one autograd pass: the state shell computes
both and keeps the parameter part for the parameter shell, keyed by the point and the cotangent's PETSc
state, so a change in PETSc's call order can only cost a recomputation (counted in
``stats.vjp_fallbacks``), never give a wrong gradient.
"""

from __future__ import annotations

from ._bridge import ParamLayout
from ._failures import CallbackErrors, guarded
from ._field import VectorField
from ._petsc import PETSc
from ._shells import ParamJacobian
from .distributed import RankGroup


class _StateVJP:
    """Python context of the shell Mat ``J = dg/dy``: ``multTranspose`` is a VJP."""

    def __init__(self, owner: RHSProblem):
        self.owner = owner

    def multTranspose(self, mat, x, y):  # noqa: N802 - PETSc's name
        self.owner.state_vjp(x, y)

    def mult(self, mat, x, y):
        raise NotImplementedError("pnode's explicit RK Jacobian shell only supports transpose products")


class RHSProblem:
    """The PETSc callbacks of one ODE system in RHS form (a :class:`~pnode._protocols.Problem`)."""

    option_defaults: dict[str, str] = {}

    def __init__(self, field: VectorField, n_local: int, params: ParamLayout, group: RankGroup,
                 errors: CallbackErrors, probe_columns: int = 0):
        self.field = field
        self.errors = errors
        self.params = params
        self._point: tuple[float, PETSc.Vec] | None = None
        self._point_p: tuple[float, PETSc.Vec] | None = None
        self._cached_param_vjp: tuple[tuple, list] | None = None
        n_global = group.total(n_local)
        self.J = PETSc.Mat().createPython(((n_local, n_global), (n_local, n_global)), _StateVJP(self),
                                          comm=group.comm)
        self.J.setUp()
        # probe_columns: the explicit half of an IMEX split shares the implicit half's parameter space
        self._param_shell = (ParamJacobian(self.param_vjp, n_local, n_global, params.size, group,
                                           probes=probe_columns) if params.size else None)
        self.Jp = self._param_shell.mat if self._param_shell else None
        self._work = self.J.createVecRight()

    # --- forward -------------------------------------------------------------------------------
    @guarded(output=3)
    def rhs(self, ts, t, X, F):
        self.field.evaluate_into(t, X.getArray(readonly=True), F.getArray())
        F.stateIncrease()  # written through a view: PETSc's cached norms must not survive

    # --- adjoint -------------------------------------------------------------------------------
    @guarded()
    def rhs_jacobian(self, ts, t, X, J, P):
        self._point = (t, X)

    @guarded()
    def rhs_jacobian_p(self, ts, t, X, Jp):
        self._point_p = (t, X)

    @staticmethod
    def _key(t: float, X, lam) -> tuple:
        return (t, X.handle, X.stateGet(), lam.handle, lam.stateGet())

    @guarded(output=1)
    def state_vjp(self, lam, out):
        t, X = self._point
        params = self.field.vjp(t, X.getArray(readonly=True), lam.getArray(readonly=True), out.getArray())
        out.stateIncrease()
        self._cached_param_vjp = (self._key(t, X, lam), params) if self.params.size else None

    @guarded(output=1)
    def param_vjp(self, lam, out):
        t, X = self._point_p
        cached = self._cached_param_vjp
        if cached is not None and cached[0] == self._key(t, X, lam):
            params = cached[1]
        else:
            self.field.stats.vjp_fallbacks += 1
            params = self.field.vjp(t, X.getArray(readonly=True), lam.getArray(readonly=True), None)
        self._cached_param_vjp = None
        array = out.getArray()
        self.params.write(array, params)
        array[self.params.size:] = 0.0
        out.stateIncrease()

    # --- wiring --------------------------------------------------------------------------------
    def restart(self) -> None:
        """Explicit steps carry nothing of pnode's between steps (PETSc's own first-same-as-last reuse is
        reset by the TS)."""

    def begin_step(self, step: int, tau: float, state) -> None:
        """Explicit steps hold no Jacobian between Newton iterations (there are none)."""

    def exact_jacobians(self, exact: bool) -> None:
        """Explicit steps need no stage Jacobian in the forward pass."""

    def take_iterations(self, ts) -> tuple[int, int] | None:
        return None

    def record_stages(self, record: bool | None) -> None:
        """Explicit stages are not recorded (``options['keep_graph']`` keeps their graphs instead)."""

    def adjoint_piece(self, step: int, n: int) -> int:
        return n

    def settle_adjoint(self, mu, force: bool = True) -> None:
        """Explicit steps' parameter VJPs come with their state VJPs: nothing is deferred."""

    def end_adjoint(self) -> None:
        pass

    def install(self, ts) -> None:
        ts.setRHSFunction(self.rhs, self._work)
        ts.setRHSJacobian(self.rhs_jacobian, self.J, self.J)
        if self.Jp is not None:
            ts.setRHSJacobianP(self.rhs_jacobian_p, self.Jp)

    def destroy(self) -> None:
        for obj in (self.J, self._work):
            obj.destroy()
        if self._param_shell is not None:
            self._param_shell.free()
        self._point = self._point_p = self._cached_param_vjp = None

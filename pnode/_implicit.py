"""PETSc callbacks for implicit and IMEX methods: the IFunction form ``F(t, u, u') = u' - g_im(t, u)``.

* IJacobian: ``dF/du + a dF/du' = a*I - dg_im/du``, a Jacobian strategy (:mod:`pnode._jacobian`) holds it.
* IJacobianP: ``dF/dtheta = -dg_im/dtheta``; the shared parameter shell (:mod:`pnode._shells`) whose
  transpose product is minus a parameter VJP.
* IMEX (ARKIMEX with a :class:`IMEXField`): ``g_ex`` goes through the RHS form (an
  :class:`~pnode._rhs.RHSProblem` on the explicit part), ``g_im`` through the IFunction; both terms'
  parameters receive gradients (PETSc sums the IJacobianP and RHSJacobianP contributions).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ._bridge import ParamLayout
from ._failures import CallbackErrors, guarded
from ._field import VectorField
from ._jacobian import make_strategy
from ._newton import WeightedNewtonTest
from ._options import SolveOptions
from ._rhs import RHSProblem
from ._shells import ParamJacobian
from .distributed import RankGroup
from .methods import Method


class IMEXField(nn.Module):
    """A vector field split as ``f(t, y) = f_implicit(t, y) + f_explicit(t, y)`` (both trainable).

    With an ARKIMEX method (``arkimex``, ``arkimexl2``, ``arkimex3/4/5``) the implicit term is solved
    implicitly and the explicit term stepped explicitly: put stiff, cheap terms (a diffusion stencil,
    linear damping) in ``implicit`` and the non-stiff learned part in ``explicit``.  With any other
    method the field is integrated as the sum ``f``.
    """

    def __init__(self, implicit: Callable, explicit: Callable):
        super().__init__()
        self.implicit = implicit
        self.explicit = explicit

    def f_implicit(self, t: torch.Tensor, y):
        return self.implicit(t, y)

    def f_explicit(self, t: torch.Tensor, y):
        return self.explicit(t, y)

    def forward(self, t: torch.Tensor, y):
        a, b = self.f_implicit(t, y), self.f_explicit(t, y)
        return tuple(x + z for x, z in zip(a, b)) if isinstance(a, tuple) else a + b


def is_split(func: object) -> bool:
    """``func`` exposes an IMEX split (``f_implicit`` and ``f_explicit``)."""
    return callable(getattr(func, "f_implicit", None)) and callable(getattr(func, "f_explicit", None))


class ImplicitProblem:
    """The PETSc callbacks of one ODE system in IFunction form (implicit and IMEX methods; a
    :class:`~pnode._protocols.Problem`)."""

    def __init__(self, field: VectorField, method: Method, n_local: int, params: ParamLayout, group: RankGroup,
                 errors: CallbackErrors, options: SolveOptions):
        self.field = field
        self.method = method
        self.errors = errors
        self.params = params
        self.options = options
        split = method.imex and is_split(field.func)
        self.implicit_field = field.part(field.func.f_implicit) if split else field
        self.explicit = (RHSProblem(field.part(field.func.f_explicit), n_local, params, group, errors)
                         if split else None)
        self.strategy = make_strategy(options.jacobian, self.implicit_field, n_local, group, errors,
                                      ts_type=method.ts_type)
        self.J = self.strategy.matrix
        self._newton_test: WeightedNewtonTest | None = None
        self.exact_jacobians(False)
        self._point_p: tuple[float, torch.Tensor] | None = None
        self._residual = self.J.createVecRight()
        self._param_shell = (ParamJacobian(self.param_vjp, n_local, self.J.getSize()[0], params.size, group)
                             if params.size else None)
        self.Jp = self._param_shell.mat if self._param_shell else None

    @property
    def option_defaults(self) -> dict[str, str]:
        defaults = dict(self.strategy.option_defaults)
        if self.options.theta is not None:
            defaults["ts_theta_theta"] = repr(self.options.theta)
        return defaults

    def install(self, ts) -> None:
        self._start_slope_state = None    # a Vec handle of this TS (see _stage_time)
        ts.setIFunction(self.ifunction, self._residual)
        ts.setIJacobian(self.ijacobian, self.J, self.J)
        if self.Jp is not None:
            ts.setIJacobianP(self.ijacobian_p, self.Jp)
        if self.explicit is not None:
            self.explicit.install(ts)
        elif self.method.imex:
            ts.setARKIMEXFullyImplicit(True)
        self.strategy.configure(ts.getSNES().getKSP())
        if self.options.newton == "chord":
            self._free_newton_test()
            self._newton_test = WeightedNewtonTest(ts, self.errors, self.strategy)
            ts.getSNES().setConvergenceTest(self._newton_test)

    def _free_newton_test(self) -> None:
        if self._newton_test is not None:
            self._newton_test.free()
            self._newton_test.ts = None
            self._newton_test = None

    def begin_step(self) -> None:
        """A forward step starts: chord Newton evaluates this step's Jacobian afresh."""
        self.strategy.new_step()

    def exact_jacobians(self, exact: bool) -> None:
        """The adjoint needs every stage's exact Jacobian; forward steps may reuse one per step (chord)."""
        self.strategy.reuse = self.options.newton == "chord" and not exact
        # the adjoint's parameter VJPs at a stage run on the graph of that stage's Jacobian
        self.implicit_field.keep_point_graph = exact
        if not exact:
            self.implicit_field.drop_point_graph()

    def destroy(self) -> None:
        self._free_newton_test()
        self.strategy.free()
        self._residual.destroy()
        if self._param_shell is not None:
            self._param_shell.free()
        if self.explicit is not None:
            self.explicit.destroy()
        self._point_p = None

    # --- forward -------------------------------------------------------------------------------
    def _stage_time(self, ts, t: float, X, Xdot) -> float:
        """PETSc's time ``t``, except in the start-slope solve of ARKIMEX/DIRK tableaux with an explicit
        first stage (``es*sal``, ``arkimex3/4/5`` made fully implicit).

        At a restarted step (every pnode solve starts with one, a checkpoint replay too) PETSc 3.26 solves
        ``F(t_n, y_n, ydot) = 0`` for the first stage's slope, but passes the stale ``stage_time`` of the
        TS's previous stage solve (0 in a new TS) instead of ``t_n``.  For a time-dependent ``f`` that
        made the first step of a reused solver (and of every replayed segment) differ from a new
        solver's.  That solve is recognisable: its unknown is the slope, so PETSc passes the SNES
        solution as ``Xdot`` (and always the same work Vec, the step's start state, as ``X``); the right
        time is the step's start, ``ts.getTime()``."""
        if self._start_slope_state is None and self.method.ts_type in ("arkimex", "dirk") \
                and self.explicit is None and Xdot.handle == ts.getSNES().getSolution().handle:
            self._start_slope_state = X.handle
        if self._start_slope_state is not None and X.handle == self._start_slope_state:
            return ts.getTime()
        return t

    @guarded(output=4)
    def ifunction(self, ts, t, X, Xdot, F):
        out = F.getArray()
        t = self._stage_time(ts, t, X, Xdot)
        self.implicit_field.evaluate_into(t, X.getArray(readonly=True), out)
        np.subtract(Xdot.getArray(readonly=True), out, out=out)
        F.stateIncrease()

    @guarded()
    def ijacobian(self, ts, t, X, Xdot, shift, A, P):
        self.strategy.update(self._stage_time(ts, t, X, Xdot), X.getArray(readonly=True), shift)

    # --- adjoint -------------------------------------------------------------------------------
    @guarded()
    def ijacobian_p(self, ts, t, X, Xdot, shift, Jp):
        self._point_p = (t, torch.from_numpy(X.getArray(readonly=True)).clone())

    @guarded(output=1)
    def param_vjp(self, lam, out):
        t, x = self._point_p
        grads = self.implicit_field.vjp(t, x.numpy(), lam.getArray(readonly=True), None)
        self.params.write(out.getArray(), grads, scale=-1.0)
        out.stateIncrease()

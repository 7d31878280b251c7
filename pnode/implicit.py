"""PETSc callbacks for implicit and IMEX methods: the IFunction form ``F(t, u, u') = u' - g_im(t, u)``.

* IJacobian: ``dF/du + a dF/du' = a*I - dg_im/du``, a Jacobian strategy (:mod:`pnode.jacobian`) holds it.
* IJacobianP: ``dF/dtheta = -dg_im/dtheta``; a shell whose transpose product is minus a parameter VJP.
* IMEX (ARKIMEX with a :class:`IMEXField`): ``g_ex`` goes through the RHS form (an
  :class:`~pnode.problem.RHSProblem` on the explicit part), ``g_im`` through the IFunction; both terms'
  parameters receive gradients (PETSc sums the IJacobianP and RHSJacobianP contributions).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ._petsc import PETSc
from .jacobian import make_strategy
from .methods import Method
from .options import SolveOptions
from .problem import CallbackErrors, RHSProblem, VectorField, _guarded, param_slices, write_param_grads


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


class _ParamJacobianShell:
    """Python context of the IJacobianP shell: ``multTranspose`` is ``-(dg_im/dtheta)^T lam``."""

    def __init__(self, owner: ImplicitProblem):
        self.owner = owner

    def multTranspose(self, mat, x, y):  # noqa: N802 - PETSc's name
        self.owner.param_vjp(x, y)


class ImplicitProblem:
    """The PETSc callbacks of one ODE system in IFunction form (implicit and IMEX methods)."""

    def __init__(self, field: VectorField, method: Method, n_local: int, n_params: int, comm,
                 errors: CallbackErrors, options: SolveOptions):
        self.field = field
        self.method = method
        self.errors = errors
        self.n_params = n_params
        self.options = options
        self.poison = comm.getSize() > 1   # see problem._guarded
        split = method.imex and is_split(field.func)
        self.implicit_field = field.part(field.func.f_implicit) if split else field
        self.explicit = (RHSProblem(field.part(field.func.f_explicit), n_local, n_params, comm, errors)
                         if split else None)
        self.strategy = make_strategy(options.jacobian, self.implicit_field, n_local, comm, errors)
        self.J = self.strategy.matrix
        self._slices = param_slices(field.params)
        self._point_p: tuple[float, torch.Tensor] | None = None
        self._residual = self.J.createVecRight()
        self.Jp = None
        if n_params:
            size = comm.getSize()
            n_global = self.J.getSize()[0]
            # parameters replicated: every rank owns a full copy of the parameter columns (as RHSProblem)
            self.Jp = PETSc.Mat().createPython(((n_local, n_global), (n_params, n_params * size)),
                                               _ParamJacobianShell(self), comm=comm)
            self.Jp.setUp()

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

    def destroy(self) -> None:
        self.strategy.free()
        for obj in (self.Jp, self._residual):
            if obj is not None:
                obj.destroy()
        if self.explicit is not None:
            self.explicit.destroy()

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

    @_guarded(output=4)
    def ifunction(self, ts, t, X, Xdot, F):
        out = F.getArray()
        t = self._stage_time(ts, t, X, Xdot)
        self.implicit_field.evaluate_into(t, X.getArray(readonly=True), out)
        np.subtract(Xdot.getArray(readonly=True), out, out=out)
        F.stateIncrease()

    @_guarded()
    def ijacobian(self, ts, t, X, Xdot, shift, A, P):
        self.strategy.update(self._stage_time(ts, t, X, Xdot), X.getArray(readonly=True), shift)

    # --- adjoint -------------------------------------------------------------------------------
    @_guarded()
    def ijacobian_p(self, ts, t, X, Xdot, shift, Jp):
        self._point_p = (t, torch.from_numpy(X.getArray(readonly=True)).clone())

    @_guarded(output=1)
    def param_vjp(self, lam, out):
        t, x = self._point_p
        grads = self.implicit_field.vjp(t, x.numpy(), lam.getArray(readonly=True), None)
        write_param_grads(out, self._slices, grads, scale=-1.0)

"""PETSc callbacks for ``dy/dt = f(t, y)`` with a PyTorch vector field (the RHS form used by explicit RK).

Forward: ``rhs`` evaluates ``f`` on a zero-copy view of PETSc's stage vector and writes into PETSc's
output vector.  Backward (TSAdjoint, RK): for each stage PETSc calls the Jacobian callbacks at the stage
state and then only ``multTranspose`` on the Jacobian shells, so the callbacks just record the point and
the shells compute vector-Jacobian products.  The state VJP ``J^T lam`` and the parameter VJP
``(df/dtheta)^T lam`` at one point and cotangent come from one autograd pass: the state shell computes
both and keeps the parameter part for the parameter shell, keyed by the point and the cotangent's PETSc
state, so a change in PETSc's call order can only cost a recomputation (counted in
``stats.vjp_fallbacks``), never give a wrong gradient.

Time direction: a decreasing ``t`` is integrated as ``tau = -t`` with ``g(tau, y) = -f(-tau, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._petsc import PETSc
from .bridge import StateLayout, vec_as_tensor
from .stats import SolveStats


class CallbackErrors:
    """Keeps the first exception raised inside a PETSc callback so the solver can re-raise it as itself
    (PETSc would otherwise report only error 101)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    def pop(self) -> BaseException | None:
        error, self.error = self.error, None
        return error


def _guarded(method):
    """Record any exception a callback raises before PETSc turns it into error 101."""

    def wrapper(self, *args):
        try:
            return method(self, *args)
        except BaseException as error:  # noqa: BLE001 - re-raised by the solver as itself
            self.errors.record(error)
            raise

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class VectorField:
    """``f`` with the bridge applied: flat float64 in, flat float64 out, time direction folded in."""

    def __init__(self, func: Callable, layout: StateLayout, params: Sequence[torch.Tensor],
                 time_dtype: torch.dtype, stats: SolveStats):
        self.func = func
        self.layout = layout
        self.params = list(params)
        self.time_dtype = time_dtype
        self.stats = stats
        self.sign = 1.0

    def time(self, tau: float) -> torch.Tensor:
        return torch.tensor(self.sign * tau, dtype=self.time_dtype)

    def evaluate_into(self, tau: float, x: torch.Tensor, out: torch.Tensor) -> None:
        """out <- g(tau, x) for flat float64 ``x`` and ``out``, without autograd."""
        self.stats.rhs_evals += 1
        with torch.no_grad():
            parts = self.layout.check_output(self.func(self.time(tau), self.layout.unflatten(x)))
            self.layout.write(out, parts)
            if self.sign < 0:
                out.neg_()

    def evaluate(self, tau: float, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        self.evaluate_into(tau, x, out)
        return out

    def vjp(self, tau: float, x: torch.Tensor, cotangent: torch.Tensor,
            want_state: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """(J^T c, (dg/dtheta)^T c) at (tau, x) from one autograd pass; ``c`` flat float64."""
        self.stats.vjp_evals += 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(want_state)
            parts = self.layout.check_output(self.func(self.time(tau), self.layout.unflatten(xg)))
            cot = self.layout.split(cotangent * self.sign if self.sign < 0 else cotangent)
            pairs = [(p, c) for p, c in zip(parts, cot) if p.requires_grad]
            inputs = ([xg] if want_state else []) + self.params
            if not pairs or not inputs:
                grads = [None] * len(inputs)
            else:
                grads = list(torch.autograd.grad([p for p, _ in pairs], inputs,
                                                 grad_outputs=[c for _, c in pairs], allow_unused=True))
        state = grads.pop(0) if want_state else None
        return state, grads


class _StateVJP:
    """Python context of the shell Mat ``J = dg/dy``: ``multTranspose`` is a VJP."""

    def __init__(self, owner: RHSProblem):
        self.owner = owner

    def multTranspose(self, mat, x, y):  # noqa: N802 - PETSc's name
        self.owner.state_vjp(x, y)

    def mult(self, mat, x, y):
        raise NotImplementedError("pnode's explicit RK Jacobian shell only supports transpose products")


class _ParamVJP:
    """Python context of the shell Mat ``Jp = dg/dtheta``."""

    def __init__(self, owner: RHSProblem):
        self.owner = owner

    def multTranspose(self, mat, x, y):  # noqa: N802
        self.owner.param_vjp(x, y)

    def mult(self, mat, x, y):
        raise NotImplementedError("pnode's parameter Jacobian shell only supports transpose products")


class RHSProblem:
    """The PETSc callbacks of one ODE system in RHS form (explicit methods)."""

    def __init__(self, field: VectorField, n_local: int, n_params: int, comm, errors: CallbackErrors):
        self.field = field
        self.errors = errors
        self.n_params = n_params
        self._point: tuple[float, PETSc.Vec] | None = None
        self._cached_param_vjp: tuple[tuple, list] | None = None
        n_global = comm.tompi4py().allreduce(n_local) if comm.getSize() > 1 else n_local
        self.J = PETSc.Mat().createPython(((n_local, n_global), (n_local, n_global)), _StateVJP(self), comm=comm)
        self.J.setUp()
        # Parameters are replicated: every rank owns a full copy of the parameter columns, so the
        # parameter adjoint stays rank-local and is reduced once after the backward sweep.
        size = comm.getSize()
        self.Jp = None
        if n_params:
            self.Jp = PETSc.Mat().createPython(((n_local, n_global), (n_params, n_params * size)),
                                               _ParamVJP(self), comm=comm)
            self.Jp.setUp()

    # --- forward -------------------------------------------------------------------------------
    @_guarded
    def rhs(self, ts, t, X, F):
        out = vec_as_tensor(F, readonly=False)
        self.field.evaluate_into(t, vec_as_tensor(X), out)
        F.stateIncrease()  # written through a tensor view: PETSc's cached norms must not survive

    # --- adjoint -------------------------------------------------------------------------------
    @_guarded
    def rhs_jacobian(self, ts, t, X, J, P):
        self._point = (t, X)

    @_guarded
    def rhs_jacobian_p(self, ts, t, X, Jp):
        self._point_p = (t, X)

    @staticmethod
    def _key(t: float, X, lam) -> tuple:
        return (t, X.handle, X.stateGet(), lam.handle, lam.stateGet())

    @_guarded
    def state_vjp(self, lam, out):
        t, X = self._point
        state, params = self.field.vjp(t, vec_as_tensor(X), vec_as_tensor(lam))
        target = vec_as_tensor(out, readonly=False)
        if state is None:
            target.zero_()
        else:
            target.copy_(state)
        out.stateIncrease()
        self._cached_param_vjp = (self._key(t, X, lam), params) if self.n_params else None

    @_guarded
    def param_vjp(self, lam, out):
        t, X = self._point_p
        cached = self._cached_param_vjp
        if cached is not None and cached[0] == self._key(t, X, lam):
            params = cached[1]
        else:
            self.field.stats.vjp_fallbacks += 1
            _, params = self.field.vjp(t, vec_as_tensor(X), vec_as_tensor(lam), want_state=False)
        self._cached_param_vjp = None
        target = vec_as_tensor(out, readonly=False)
        offset = 0
        for p, g in zip(self.field.params, params):
            n = p.numel()
            if g is None:
                target[offset:offset + n].zero_()
            else:
                target[offset:offset + n].copy_(g.reshape(-1))
            offset += n
        out.stateIncrease()


def flat_param_size(params: Sequence[torch.Tensor]) -> int:
    return sum(math.prod(p.shape) for p in params)

"""Public API: :func:`odeint` (torchdiffeq's signature and semantics) and the reusable :class:`ODESolver`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._petsc import check_scalar_type
from .autograd import OdeintFunction
from .bridge import PETSC_DTYPE, StateLayout
from .distributed import check_consistent, is_distributed, petsc_comm
from .errors import InvalidArgumentError
from .methods import DEFAULT_METHOD, Method, get_method, require_adjoint
from .options import SolveOptions
from .problem import VectorField
from .solver import ForwardRecord, TSDriver
from .stats import SolveStats
from .timegrid import check_times

State = torch.Tensor | tuple[torch.Tensor, ...]


class ODESolver:
    """A reusable neural-ODE solver: build once, call every training iteration.

    ``ODESolver(func, method="dopri5", rtol=1e-7, atol=1e-9, options=None, adjoint_params=None,
    comm=None)(y0, t)`` returns what :func:`odeint` returns.  PETSc objects are built on the first call
    and reused while the state's shapes and dtype stay the same.  After every call :attr:`stats` holds
    the solve's statistics and :attr:`step_times` its accepted step times.

    ``comm`` (an mpi4py communicator or a PETSc.Comm) distributes the solve: every rank passes its shard
    of the batch as ``y0`` (uneven shards allowed) and gets its shard of the output; all ranks take the
    same steps.  The gradient each rank receives for the parameters and for ``t`` is the gradient of the
    **sum of all ranks' losses** (one allreduce per backward pass); ``dL/dy0`` is the rank's own shard.
    Every rank must make the same calls; a failure on one rank raises on all (see pnode.distributed).
    """

    def __init__(self, func: Callable, *, method: str | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 options: Mapping | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
                 comm=None):
        check_scalar_type()
        if not callable(func):
            raise InvalidArgumentError(f"func must be callable as func(t, y), got {type(func).__name__}")
        self.func = func
        self.method: Method = get_method(DEFAULT_METHOD if method is None else method)
        self.rtol, self.atol = _tolerance(rtol, "rtol"), _tolerance(atol, "atol")
        self.options = SolveOptions.parse(options)
        self._adjoint_params = None if adjoint_params is None else tuple(adjoint_params)
        for i, p in enumerate(self._adjoint_params or ()):
            if not isinstance(p, torch.Tensor):
                raise InvalidArgumentError(f"adjoint_params[{i}] must be a tensor, got {type(p).__name__}")
        self.comm = petsc_comm(comm)
        self._mpi = self.comm.tompi4py() if is_distributed(self.comm) else None
        self.stats = SolveStats()
        self._driver: TSDriver | None = None
        self._driver_key = None
        self._last_record: ForwardRecord | None = None

    # ------------------------------------------------------------------ public
    def __call__(self, y0: State, t: torch.Tensor) -> State:
        if self._mpi is None:
            layout, taus, sign, params, needs_grad = self._check_call(y0, t)
            rebuild = self._needs_rebuild(layout, params, t.dtype)
        else:
            layout, taus, sign, params, needs_grad, rebuild = self._check_call_everywhere(y0, t)
        session = _Session(self, layout, taus, sign, params, t.dtype, rebuild)
        y0_flat = layout.flatten(y0, differentiable=needs_grad)
        if needs_grad:
            outputs = OdeintFunction.apply(session, t, y0_flat, *params)
        else:
            outputs, _ = session.solve(y0_flat, keep_trajectory=False)
        return layout.unflatten(outputs)

    def _check_call(self, y0: State, t: torch.Tensor):
        layout = StateLayout.of(y0)
        taus, sign = check_times(t)
        params = self._params()
        parts = tuple(y0) if layout.is_tuple else (y0,)
        needs_grad = torch.is_grad_enabled() and (
            t.requires_grad or any(p.requires_grad for p in parts) or any(p.requires_grad for p in params))
        if needs_grad:
            require_adjoint(self.method)
        return layout, taus, sign, params, needs_grad

    def _check_call_everywhere(self, y0: State, t: torch.Tensor):
        """The distributed form of :meth:`_check_call`: one collective in which every rank learns whether
        any rank's arguments are invalid, whether the output times and the gradient request agree, and
        whether any rank must rebuild its PETSc objects (building them is collective)."""
        error, checked, rebuild, facts = None, None, False, {}
        try:
            checked = self._check_call(y0, t)
            layout, taus, sign, params, needs_grad = checked
            rebuild = self._needs_rebuild(layout, params, t.dtype)
            facts = {"t": taus * sign, "whether a gradient is needed (requires_grad, torch.no_grad)": needs_grad,
                     "the list of parameter shapes": [tuple(p.shape) for p in params]}
        except Exception as caught:  # noqa: BLE001 - raised on every rank by check_consistent
            error = caught
        gathered = check_consistent(self._mpi, error, agree=facts, gather=rebuild)
        return (*checked, any(gathered))

    @property
    def step_times(self) -> torch.Tensor:
        """Accepted step boundaries of the latest forward solve, in the user's time (t[0] first)."""
        if self._last_record is None:
            return torch.empty(0, dtype=torch.float64)
        return torch.from_numpy(self._last_record.step_times * self._last_sign)

    def close(self) -> None:
        """Free the PETSc objects now (they are also freed when the solver is garbage collected)."""
        if self._driver is not None:
            self._driver.destroy()
            self._driver = None

    # ------------------------------------------------------------------ internals
    def _params(self) -> list[torch.Tensor]:
        if self._adjoint_params is not None:
            return [p for p in self._adjoint_params if p.requires_grad]
        if isinstance(self.func, nn.Module):
            return [p for p in self.func.parameters() if p.requires_grad]
        if torch.is_grad_enabled():
            raise InvalidArgumentError(
                "func is not an nn.Module, so pnode cannot see which tensors it depends on; pass "
                "adjoint_params=(tensors...) (or adjoint_params=() if it has none), or run under "
                "torch.no_grad() for a forward-only solve")
        return []

    def _needs_rebuild(self, layout: StateLayout, params: list[torch.Tensor], time_dtype: torch.dtype) -> bool:
        return self._driver is None or self._key(layout, params, time_dtype) != self._driver_key

    @staticmethod
    def _key(layout: StateLayout, params: list[torch.Tensor], time_dtype: torch.dtype) -> tuple:
        return (layout.shapes, layout.dtype, tuple((p.shape, p.dtype) for p in params), time_dtype)

    def driver(self, layout: StateLayout, params: list[torch.Tensor], time_dtype: torch.dtype,
               rebuild: bool) -> TSDriver:
        """The TS driver for this problem shape; ``rebuild`` must be the same on every rank (building
        PETSc objects on a parallel communicator is collective)."""
        if rebuild:
            self.close()
            field = VectorField(self.func, layout, params, time_dtype, self.stats)
            self._driver = TSDriver(field, self.method, layout.size, self.options, self.rtol, self.atol,
                                    self.comm, self.stats)
            self._driver_key = self._key(layout, params, time_dtype)
        else:
            self._driver.field.params = list(params)
        return self._driver

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _Session:
    """One call of an :class:`ODESolver`: everything the forward and backward passes share."""

    def __init__(self, solver: ODESolver, layout: StateLayout, taus: np.ndarray, sign: float,
                 params: list[torch.Tensor], time_dtype: torch.dtype, rebuild: bool):
        self.solver = solver
        self.layout = layout
        self.taus = taus
        self.sign = sign
        self.params = params
        self.driver = solver.driver(layout, params, time_dtype, rebuild)
        self.driver.field.sign = sign

    def solve(self, y0_flat: torch.Tensor, keep_trajectory: bool) -> tuple[torch.Tensor, ForwardRecord]:
        stats = self.solver.stats
        stats.reset_forward(self.driver.running.name, self.driver.ts.getType())
        start = time.perf_counter()
        outputs = torch.empty(len(self.taus), y0_flat.numel(), dtype=PETSC_DTYPE)
        self.driver.field.sign = self.sign
        record = self.driver.forward(y0_flat, self.taus, outputs, keep_trajectory=keep_trajectory)
        stats.forward_time = time.perf_counter() - start
        self.solver._last_record, self.solver._last_sign = record, self.sign
        return outputs, record

    def adjoint(self, record: ForwardRecord, grad_outputs: torch.Tensor):
        start = time.perf_counter()
        self.driver.field.sign = self.sign
        self.driver.field.params = self.params
        grad_y0, grad_p = self.driver.backward(record, self.taus, grad_outputs)
        grads = []
        offset = 0
        for p in self.params:
            n = p.numel()
            grads.append(grad_p[offset:offset + n].view(p.shape).to(p.dtype))
            offset += n
        self.solver.stats.backward_time = time.perf_counter() - start
        return grad_y0, grads

    def time_gradient(self, outputs: torch.Tensor, grad_outputs: torch.Tensor,
                      grad_y0: torch.Tensor) -> torch.Tensor:
        """dL/dt_i = g_i . f(t_i, y_i) for i >= 1 and dL/dt_0 = -(dL/dy0 - g_0) . f(t_0, y_0): the exact
        derivatives of the ODE's solution (torchdiffeq's convention); the discrete solution's differ by
        the integration error."""
        driver = self.driver
        f = [driver.local_call(driver.field.evaluate, float(tau), outputs[i]) for i, tau in enumerate(self.taus)]
        local = np.array([float(torch.dot(f[i], grad_outputs[i] if i else grad_y0 - grad_outputs[0]))
                          for i in range(len(self.taus))])
        # f is signed by the time direction; the dot products are local shards of global sums
        dots = driver.global_sum(local, what="the time gradient") * self.sign
        dots[0] = -dots[0]
        return torch.from_numpy(dots)


def odeint(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7, atol: float = 1e-9,
           method: str | None = None, options: Mapping | None = None,
           adjoint_params: Sequence[torch.Tensor] | None = None, comm=None) -> State:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` with PETSc and return ``y`` at every time of ``t``.

    torchdiffeq's signature and semantics: ``t`` is strictly increasing or decreasing; the result has
    shape ``(len(t), *y0.shape)`` (a tuple of such tensors when ``y0`` is a tuple).  Gradients reach
    ``y0``, the parameters of ``func`` (an ``nn.Module``; or ``adjoint_params``) and ``t`` through PETSc's
    discrete adjoint, exact for the discrete solution.  See :class:`ODESolver` to reuse PETSc objects
    across calls and read statistics, and for ``comm=`` (MPI: each rank passes its batch shard).
    """
    solver = ODESolver(func, method=method, rtol=rtol, atol=atol, options=options,
                       adjoint_params=adjoint_params, comm=comm)
    global _LAST_STATS
    _LAST_STATS = solver.stats
    return solver(y0, t)


odeint_adjoint = odeint
_LAST_STATS: SolveStats | None = None


def last_stats() -> SolveStats | None:
    """Statistics of the latest :func:`odeint` call (its backward pass included, once run)."""
    return _LAST_STATS


def _tolerance(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}") from None
    if not number > 0 or not np.isfinite(number):
        raise InvalidArgumentError(f"{name} must be a positive finite number, got {value!r}")
    return number

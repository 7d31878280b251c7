"""Public API: :func:`odeint` (torchdiffeq's signature and semantics) and the reusable :class:`ODESolver`.

Data flows one way: a call checks its arguments once into an immutable
:class:`~pnode._spec.SolveSpec`, picks (or builds) the driver for that problem shape, and hands both to
the autograd function, which calls the driver forward and, on ``backward()``, backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._autograd import OdeintFunction
from ._bridge import ParamLayout, StateLayout
from ._driver import Driver, Lease
from ._options import SolveOptions
from ._petsc import check_scalar_type
from ._spec import SolveSpec
from ._timegrid import check_times
from .distributed import RankGroup
from .errors import InvalidArgumentError
from .methods import DEFAULT_METHOD, Method, get_method, require_adjoint
from .stats import SolveStats

State = torch.Tensor | tuple[torch.Tensor, ...]


class ODESolver:
    """A reusable neural-ODE solver: build once, call every training iteration.

    ``ODESolver(func, ...)(y0, t)`` returns what :func:`odeint` returns.  PETSc objects are built on the
    first call and reused while the state's shapes and dtype stay the same.

    Parameters
    ----------
    func : callable
        The vector field ``func(t, y) -> dy/dt`` (``y`` a tensor or a tuple of tensors, as ``y0``).  An
        ``nn.Module`` has its parameters differentiated; for other callables list the tensors it
        depends on in ``adjoint_params``.  A :class:`pnode.IMEXField` splits it into a stiff implicit
        and an explicit part for the ARKIMEX methods.
    method : str, optional
        An integrator name from :func:`pnode.available_methods` (default ``"dopri5"``).
    rtol, atol : float
        Relative and absolute tolerances of adaptive methods.
    options : dict, optional
        ``step_size``, ``first_step``, ``max_num_steps``, ``checkpoints``, ``jacobian``, ``theta`` and
        ``petsc`` (a dict of raw PETSc options; the command line wins over it).
    adjoint_params : sequence of tensors, optional
        The tensors ``func`` depends on that receive gradients (default: ``func.parameters()``).
    comm : mpi4py communicator or PETSc.Comm, optional
        Distributes the solve: every rank passes its shard of the batch as ``y0`` (uneven shards
        allowed) and gets its shard of the output; all ranks take the same steps.  The gradient each
        rank receives for the parameters and for ``t`` is the gradient of the **sum of all ranks'
        losses** (one allreduce per backward pass); ``dL/dy0`` is the rank's own shard.  Every rank
        must make the same calls; a failure on one rank raises on all.

    Attributes
    ----------
    stats : SolveStats
        Statistics of the latest call (its backward pass included, once run).
    step_times : torch.Tensor
        Accepted step times of the latest forward solve.

    Raises
    ------
    InvalidArgumentError
        For a malformed argument (the message names it and the fix); :class:`UnknownMethodError` for an
        unknown ``method``.

    Examples
    --------
    >>> import torch, pnode
    >>> func = torch.nn.Linear(2, 2).double()
    >>> solver = pnode.ODESolver(lambda t, y: func(y), method="rk4", options={"step_size": 0.1},
    ...                          adjoint_params=tuple(func.parameters()))
    >>> ys = solver(torch.ones(3, 2, dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0]))
    >>> ys.shape
    torch.Size([3, 3, 2])
    >>> ys.sum().backward()
    >>> solver.stats.steps
    10
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
        self.group = RankGroup(comm)
        self.stats = SolveStats()
        self._driver: Driver | None = None
        self._lease: Lease | None = None     # this solver's claim on its driver
        self._driver_key = None
        self._step_times = np.zeros(0)
        self._hidden_params: bool | None = None    # a plain func's dependence on unseen tensors

    # ------------------------------------------------------------------ public
    def __call__(self, y0: State, t: torch.Tensor) -> State:
        self.group.seconds = 0.0      # communication time of this call (stats.communication_time)
        spec, rebuild = self._spec_everywhere(y0, t) if self.group.distributed else self._spec_here(y0, t)
        driver = self._driver_for(spec, rebuild)
        y0_flat = spec.layout.flatten(y0, differentiable=spec.needs_grad)
        if spec.needs_grad:
            # the graph's own lease keeps the driver for backward(), even if this solver goes first
            outputs = OdeintFunction.apply(driver, spec, Lease(driver), t, y0_flat, *spec.params)
        else:
            outputs, record = driver.forward(spec, y0_flat)
            record.release()
        self._step_times = driver.last_step_times * spec.sign
        return spec.layout.unflatten(outputs)

    @property
    def step_times(self) -> torch.Tensor:
        """Accepted step boundaries of the latest forward solve, in the user's time (t[0] first)."""
        return torch.from_numpy(self._step_times.copy())

    def close(self) -> None:
        """Free the PETSc objects now; outputs not yet differentiated can then no longer be.

        Without ``close()`` they are freed when the solver is deleted and no output's graph needs them."""
        if self._driver is not None:
            self._driver.close()
        self._release()

    def _release(self) -> None:
        """Give up this solver's claim on its driver (freed once no graph holds one either)."""
        lease, self._lease, self._driver, self._driver_key = self._lease, None, None, None
        if lease is not None:
            lease.release()

    # ------------------------------------------------------------------ internals
    def _spec(self, y0: State, t: torch.Tensor) -> SolveSpec:
        layout = StateLayout.of(y0)
        taus, sign = check_times(t)
        params = tuple(self._params(y0, t))
        parts = tuple(y0) if layout.is_tuple else (y0,)
        needs_grad = torch.is_grad_enabled() and (
            t.requires_grad or any(p.requires_grad for p in parts) or any(p.requires_grad for p in params))
        if needs_grad:
            require_adjoint(self.method)
        return SolveSpec(layout, ParamLayout.of(params), params, taus, sign, layout.dtype, needs_grad)

    def _spec_here(self, y0: State, t: torch.Tensor) -> tuple[SolveSpec, bool]:
        spec = self._spec(y0, t)
        return spec, self._driver is None or spec.shape_key != self._driver_key

    def _spec_everywhere(self, y0: State, t: torch.Tensor) -> tuple[SolveSpec, bool]:
        """The distributed form of :meth:`_spec_here`: one collective in which every rank learns whether
        any rank's arguments are invalid, whether the output times and the gradient request agree, and
        whether any rank must rebuild its PETSc objects (building them is collective)."""
        error, spec, rebuild, facts = None, None, False, {}
        try:
            spec, rebuild = self._spec_here(y0, t)
            facts = {"t": spec.taus * spec.sign,
                     "whether a gradient is needed (requires_grad, torch.no_grad)": spec.needs_grad,
                     "the list of parameter shapes": [tuple(s) for s in spec.param_layout.shapes]}
        except Exception as caught:  # noqa: BLE001 - raised on every rank by check_consistent
            error = caught
        gathered = self.group.check_consistent(error, agree=facts, gather=rebuild)
        return spec, any(gathered)

    def _params(self, y0: State, t: torch.Tensor) -> list[torch.Tensor]:
        if self._adjoint_params is not None:
            return [p for p in self._adjoint_params if p.requires_grad]
        if isinstance(self.func, nn.Module):
            return [p for p in self.func.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and self._has_hidden_params(y0, t):
            raise InvalidArgumentError(
                "func is not an nn.Module and its output requires grad through tensors pnode cannot see; "
                "pass them as adjoint_params=(tensors...), make func an nn.Module, or run under "
                "torch.no_grad() for a forward-only solve")
        return []

    def _has_hidden_params(self, y0: State, t: torch.Tensor) -> bool:
        """Does a plain function depend on tensors that require grad?  One evaluation on a detached
        state tells (its result then requires grad only through them); the answer is kept per solver."""
        if self._hidden_params is None:
            state = tuple(p.detach() for p in y0) if isinstance(y0, (tuple, list)) else y0.detach()
            dtype = state[0].dtype if isinstance(state, tuple) else state.dtype
            with torch.enable_grad():
                out = self.func(t.detach()[0].to(dtype), state)
            parts = out if isinstance(out, (tuple, list)) else (out,)
            self._hidden_params = any(isinstance(p, torch.Tensor) and p.requires_grad for p in parts)
        return self._hidden_params

    def _driver_for(self, spec: SolveSpec, rebuild: bool) -> Driver:
        """The driver for this problem shape; ``rebuild`` must be the same on every rank (building PETSc
        objects on a parallel communicator is collective)."""
        if rebuild:
            self._release()       # graphs of earlier calls keep the old driver for their backward()
            self._driver = Driver(self.func, self.method, self.options, self.rtol, self.atol, self.group,
                                  self.stats, spec)
            self._lease = Lease(self._driver)
            self._driver_key = spec.shape_key
        return self._driver

    def __del__(self):
        try:
            self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def odeint(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7, atol: float = 1e-9,
           method: str | None = None, options: Mapping | None = None,
           adjoint_params: Sequence[torch.Tensor] | None = None, comm=None) -> State:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` with PETSc and return ``y`` at every time of ``t``.

    torchdiffeq's signature and semantics.  Gradients reach ``y0``, the parameters of ``func`` (an
    ``nn.Module``; or ``adjoint_params``) and ``t`` through PETSc's discrete adjoint, exact for the
    discrete solution.  Each call builds its PETSc objects and frees them when its graph is freed (or at
    once without gradients); :class:`ODESolver` reuses them across calls.

    Parameters
    ----------
    func : callable
        ``func(t, y) -> dy/dt``, ``y`` shaped like ``y0``.
    y0 : torch.Tensor or tuple of torch.Tensor
        Initial state (a tuple state returns a tuple).
    t : torch.Tensor
        1-D, strictly increasing or strictly decreasing output times; ``t[0]`` is the initial time.
    rtol, atol : float
        Tolerances of adaptive methods.
    method : str, optional
        Integrator name (default ``"dopri5"``; see :func:`pnode.method_table`).
    options : dict, optional
        See :class:`ODESolver`.
    adjoint_params : sequence of tensors, optional
        Tensors ``func`` depends on that receive gradients (default: ``func.parameters()``).
    comm : optional
        MPI communicator of a distributed solve (see :class:`ODESolver`).

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        ``y`` at every time of ``t``, shape ``(len(t), *y0.shape)``.

    Raises
    ------
    InvalidArgumentError
        A malformed argument; the message names it and the fix.
    SolverError
        PETSc stopped before the last time (with its reason and the time); subclasses
        :class:`NonFiniteError`, :class:`MaxStepsError`, :class:`StepSizeUnderflowError`.

    Examples
    --------
    >>> import torch, pnode
    >>> t = torch.linspace(0, 1, 5, dtype=torch.float64)
    >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    >>> ys = pnode.odeint(lambda t, y: -y, y0, t, adjoint_params=())
    >>> round(ys[-1].item(), 6)           # exp(-1)
    0.367879
    >>> ys[-1].backward()
    >>> round(y0.grad.item(), 6)
    0.367879
    """
    solver = ODESolver(func, method=method, rtol=rtol, atol=atol, options=options,
                       adjoint_params=adjoint_params, comm=comm)
    global _LAST_STATS
    _LAST_STATS = solver.stats
    try:
        return solver(y0, t)
    finally:
        # a graph (if a gradient may follow) holds its own lease: its PETSc objects go when it goes
        solver._release()


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

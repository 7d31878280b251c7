"""Public API: :func:`odeint` (torchdiffeq's signature and semantics) and the reusable :class:`ODESolver`.

Data flows one way: a call checks its arguments once into an immutable
:class:`~pnode._spec.SolveSpec`, picks (or builds) the driver for that problem shape, and hands both to
the autograd function, which calls the driver forward and, on ``backward()``, backward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import _adams
from ._autograd import NoAdjoint, OdeintFunction
from ._bridge import ParamLayout, StateLayout
from ._driver import Driver, Lease
from ._events import EventGradient, EventSpec
from ._norms import identify as identify_norm
from ._options import SolveOptions
from ._petsc import check_scalar_type
from ._scipy import solve_with_scipy
from ._spec import SolveSpec
from ._stepping import StepCallbacks
from ._timegrid import check_times
from .distributed import RankGroup
from .errors import InvalidArgumentError, SolverError
from .methods import DEFAULT_METHOD, Method, get_method, no_adjoint_message
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
                 adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                 adjoint_method: str | None = None, adjoint_options: Mapping | None = None, comm=None):
        check_scalar_type()
        if not callable(func):
            raise InvalidArgumentError(f"func must be callable as func(t, y), got {type(func).__name__}")
        self.func = func
        self.method: Method = get_method(DEFAULT_METHOD if method is None else method)
        self.rtol, self.atol = _tolerance(rtol, "rtol"), _tolerance(atol, "atol")
        self.options = SolveOptions.parse(options).with_adjoint(
            self.method.name, None if adjoint_rtol is None else _tolerance(adjoint_rtol, "adjoint_rtol"),
            None if adjoint_atol is None else _tolerance(adjoint_atol, "adjoint_atol"), adjoint_method,
            adjoint_options)
        if self.options.solver is not None and self.method.ts_type != "scipy":
            raise InvalidArgumentError(f"options['solver'] names scipy's method for method='scipy_solver'; "
                                       f"method={self.method.name!r} integrates with PETSc: remove it")
        if self.method.form == "torch":
            _adams.check_options(self.method.name, self.options)
        elif self.options.max_order is not None or self.options.max_iters is not None:
            raise InvalidArgumentError(f"options['max_order'] and options['max_iters'] set torchdiffeq's Adams "
                                       f"methods (explicit_adams, implicit_adams); method={self.method.name!r} has "
                                       "neither: remove them")
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
        self._found_params: list[torch.Tensor] | None = None    # a plain func's tensors, from its graph
        self._event_horizon = False

    # ------------------------------------------------------------------ public
    def __call__(self, y0: State, t: torch.Tensor, *, event_fn: Callable | None = None):
        """Solve from ``y0`` over ``t``; see :func:`odeint` (also for ``event_fn``)."""
        return self._call(y0, t, event_fn, horizon=False)

    def _call(self, y0: State, t: torch.Tensor, event_fn: Callable | None, horizon: bool):
        """``horizon``: an event solve that stops at ``t[1]`` when no event comes first (then the event
        time returned is ``None``)."""
        self.group.seconds = 0.0      # communication time of this call (stats.communication_time)
        self._event_horizon = horizon
        args = (y0, t, event_fn)
        if self.method.ts_type == "scipy":
            return self._solve_with_scipy(y0, t, event_fn)
        if self.method.form == "torch":
            return self._solve_with_adams(y0, t, event_fn, horizon)
        spec, rebuild = self._spec_everywhere(*args) if self.group.distributed else self._spec_here(*args)
        driver = self._driver_for(spec, rebuild)
        y0_flat = spec.layout.flatten(y0, differentiable=spec.needs_grad)
        if spec.needs_grad and not self.method.adjoint:
            # a forward-only method: solve, and let backward() say why there is no gradient
            outputs, record = driver.forward(spec.without_gradient(), y0_flat.detach())
            record.release()
            outputs = NoAdjoint.apply(no_adjoint_message(self.method), outputs, t, y0_flat, *spec.params)
        elif spec.needs_grad:
            # the graph's own lease keeps the driver for backward(), even if this solver goes first
            outputs = OdeintFunction.apply(driver, spec, Lease(driver), t, y0_flat, *spec.params)
        else:
            outputs, record = driver.forward(spec, y0_flat)
            record.release()
        self._step_times = driver.last_step_times * spec.sign
        if spec.event is None:
            return spec.layout.unflatten(outputs)
        if driver.last_event_index is None:      # the horizon came first
            return None, spec.layout.unflatten(outputs)
        event_t = torch.tensor(driver.last_taus[-1] * spec.sign, dtype=t.dtype)
        if torch.is_grad_enabled():
            event_t, y_event = EventGradient.apply(self.func, spec.event, driver.last_event_index, spec.layout,
                                                   event_t, outputs[-1], *spec.event.params)
            outputs = torch.stack([outputs[0], y_event])
        return event_t, spec.layout.unflatten(outputs)

    @property
    def distributed(self) -> bool:
        """Whether this solver's ``comm`` spans more than one rank."""
        return self.group.distributed

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
    def _solve_with_scipy(self, y0: State, t: torch.Tensor, event_fn: Callable | None):
        if event_fn is not None or self.group.distributed:
            raise InvalidArgumentError("method='scipy_solver' supports neither event_fn nor comm=: use a PETSc method")
        hooks = [name for name in StepCallbacks.FORWARD + StepCallbacks.ADJOINT if hasattr(self.func, name)]
        if hooks:
            warnings.warn(f"{', '.join(hooks)} on func are never called by method='scipy_solver' (scipy offers no "
                          "step hooks)", stacklevel=3)
        spec = self._spec(y0, t, None)
        y0_flat = spec.layout.flatten(y0)
        outputs = solve_with_scipy(self.func, spec, y0_flat, self.rtol, self.atol, self.options.solver,
                                   self.options.min_step, self.options.max_step)
        self.stats.reset_forward(self.method.name, f"scipy {self.options.solver or 'RK45'}")
        if spec.needs_grad:
            outputs = NoAdjoint.apply(no_adjoint_message(self.method), outputs, t, spec.layout.flatten(
                y0, differentiable=True), *spec.params)
        return spec.layout.unflatten(outputs)

    def _solve_with_adams(self, y0: State, t: torch.Tensor, event_fn: Callable | None, horizon: bool):
        if self.group.distributed:
            raise InvalidArgumentError(f"method={self.method.name!r} runs in plain torch on each process, outside "
                                       "PETSc, so comm= cannot distribute it: call it without comm= on each rank's "
                                       "shard and reduce the gradients with pnode.distributed.allreduce_gradients, "
                                       "or use a PETSc method (e.g. rk4 with options={'step_size': h})")
        spec = self._spec(y0, t, None)
        result, self._step_times = _adams.solve(self.func, self.method.name, spec, self.options, self.rtol,
                                                self.atol, self.stats, y0, t, event_fn, horizon)
        if event_fn is None:
            return spec.layout.unflatten(result)
        event_t, outputs = result
        return (None if event_t is None else event_t.to(t.dtype)), spec.layout.unflatten(outputs)

    def _spec(self, y0: State, t: torch.Tensor, event_fn: Callable | None) -> SolveSpec:
        layout = StateLayout.of(y0)
        taus, sign = check_times(t)
        event = None
        if event_fn is not None:
            if len(taus) != 2:
                raise InvalidArgumentError(
                    f"with event_fn, t must hold two times [t0, t1] (t1 only sets the direction; the solve ends "
                    f"at the event), got {len(taus)}; or use pnode.odeint_event(func, y0, t0, event_fn=...)")
            if self.group.distributed:
                raise InvalidArgumentError("event_fn is not supported in distributed solves (comm=) yet")
            event = EventSpec.of(event_fn, t[0], y0, layout, horizon=self._event_horizon)
        params = tuple(self._params(y0, t))
        parts = tuple(y0) if layout.is_tuple else (y0,)
        needs_grad = torch.is_grad_enabled() and (
            t.requires_grad or any(p.requires_grad for p in parts) or any(p.requires_grad for p in params))
        return SolveSpec(layout, ParamLayout.of(params), params, taus, sign, layout.dtype, needs_grad, event)

    def _spec_here(self, y0: State, t: torch.Tensor, event_fn: Callable | None) -> tuple[SolveSpec, bool]:
        spec = self._spec(y0, t, event_fn)
        return spec, self._driver is None or spec.shape_key != self._driver_key

    def _spec_everywhere(self, y0: State, t: torch.Tensor, event_fn: Callable | None) -> tuple[SolveSpec, bool]:
        """The distributed form of :meth:`_spec_here`: one collective in which every rank learns whether
        any rank's arguments are invalid, whether the output times and the gradient request agree, and
        whether any rank must rebuild its PETSc objects (building them is collective)."""
        error, spec, rebuild, facts = None, None, False, {}
        try:
            spec, rebuild = self._spec_here(y0, t, event_fn)
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
        if not torch.is_grad_enabled():
            return []
        if self._found_params is None:
            self._found_params = _leaves_reached(self.func, y0, t)
        return [p for p in self._found_params if p.requires_grad]

    def _driver_for(self, spec: SolveSpec, rebuild: bool) -> Driver:
        """The driver for this problem shape; ``rebuild`` must be the same on every rank (building PETSc
        objects on a parallel communicator is collective)."""
        if rebuild:
            self._release()       # graphs of earlier calls keep the old driver for their backward()
            options, rtol, atol = self.options, self.rtol, self.atol
            if options.norm is not None and self.method.adaptive:
                if self.group.distributed:
                    raise InvalidArgumentError("options['norm'] is not supported with comm= (it is probed on the "
                                               "local state): drop it, or use -ts_adapt_wnormtype")
                norm = identify_norm(options.norm, spec.layout)
                rtol, atol = norm.tolerances(rtol, atol)
                options = replace(options, norm_type=norm.kind)
            self._driver = Driver(self.func, self.method, options, rtol, atol, self.group, self.stats, spec)
            self._lease = Lease(self._driver)
            self._driver_key = spec.shape_key
        return self._driver

    def __del__(self):
        try:
            self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def odeint(func: Callable, y0: State, t: torch.Tensor, *, rtol: float = 1e-7, atol: float = 1e-9,
           method: str | None = None, options: Mapping | None = None, event_fn: Callable | None = None,
           adjoint_params: Sequence[torch.Tensor] | None = None, adjoint_rtol: float | None = None,
           adjoint_atol: float | None = None, adjoint_method: str | None = None,
           adjoint_options: Mapping | None = None, comm=None):
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
    event_fn : callable, optional
        ``event_fn(t, y) -> Tensor``: solve until it crosses zero (the first of its values to do so),
        torchdiffeq's event mode; ``t`` then holds ``[t0, t1]`` with ``t1`` only giving the direction.
        Gradients flow through the event time (implicit function theorem; see :func:`odeint_event`).
    adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options :
        torchdiffeq's adjoint settings, with their meaning for a discrete adjoint: the adjoint of the
        forward steps has no integration error to control, so ``adjoint_method`` must be ``None`` or
        ``method``, the tolerances set the relative/absolute tolerance of the transposed linear solves
        of implicit methods (explicit methods have none), and ``adjoint_options`` may only hold
        ``norm`` (there is no adjoint step-size control for it to steer).
    comm : optional
        MPI communicator of a distributed solve (see :class:`ODESolver`).

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        ``y`` at every time of ``t``, shape ``(len(t), *y0.shape)``.  With ``event_fn``: the tuple
        ``(event_t, y)`` with ``y`` at ``t0`` and at the event, shape ``(2, *y0.shape)``.

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
                       adjoint_params=adjoint_params, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                       adjoint_method=adjoint_method, adjoint_options=adjoint_options, comm=comm)
    global _LAST_STATS
    _LAST_STATS = solver.stats
    try:
        return solver(y0, t, event_fn=event_fn)
    finally:
        # a graph (if a gradient may follow) holds its own lease: its PETSc objects go when it goes
        solver._release()


odeint_adjoint = odeint


def odeint_with_jumps(func: Callable, y0: State, t: torch.Tensor, *, event_fn: Callable, jump: Callable,
                      max_events: int = 1000, **kwargs) -> tuple[State, torch.Tensor]:
    """Solve over ``t`` with non-terminal events: each time ``event_fn(t, y)`` crosses zero the state
    jumps to ``jump(t_e, y_e)`` and the solve goes on (a bouncing ball, a dosing schedule).

    Each stretch between events is a pnode event solve that stops at the next event or the next output
    time, whichever comes first (one reused :class:`ODESolver`); the jumps are plain torch, so
    gradients flow through every event time (implicit function theorem), every jump and every stretch's
    discrete adjoint by ordinary autograd.

    Parameters
    ----------
    func, y0, t :
        As for :func:`odeint` (``t`` strictly monotone; output at every time of ``t``).
    event_fn : callable
        ``event_fn(t, y) -> Tensor``; an event is where one of its values crosses zero.  A crossing that
        starts exactly at zero (e.g. right after a jump onto the surface) is not an event.
    jump : callable
        ``jump(t_e, y_e) -> y`` (same shapes as ``y0``), differentiable.
    max_events : int
        More events than this between ``t[0]`` and ``t[-1]`` raise :class:`SolverError` (Zeno behaviour).
    **kwargs :
        ``method``, ``rtol``, ``atol``, ``options``, ``adjoint_params`` as for :class:`ODESolver`.

    Returns
    -------
    (State, torch.Tensor)
        ``y`` at every time of ``t`` (shape ``(len(t), *y0.shape)``) and the event times, in order.

    Examples
    --------
    >>> import torch, pnode
    >>> ball = lambda t, y: torch.stack([y[1], torch.full_like(y[0], -9.81)])   # (height, velocity)
    >>> t = torch.linspace(0, 3, 4, dtype=torch.float64)
    >>> ys, bounces = pnode.odeint_with_jumps(ball, torch.tensor([5.0, 0.0], dtype=torch.float64), t,
    ...     event_fn=lambda t, y: y[0], jump=lambda t, y: torch.stack([y[0], -0.8 * y[1]]), adjoint_params=())
    >>> [round(b, 3) for b in bounces.tolist()]        # sqrt(2 h / g), then + 2 e sqrt(2 h / g)
    [1.01, 2.625]
    """
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise InvalidArgumentError(f"max_events must be a positive int, got {max_events!r}")
    if not callable(jump):
        raise InvalidArgumentError(f"jump must be callable as jump(t_e, y_e) -> y, got {type(jump).__name__}")
    check_times(t)
    solver = ODESolver(func, **kwargs)
    is_tuple = isinstance(y0, (tuple, list))

    def last(ys):
        return tuple(part[-1] for part in ys) if is_tuple else ys[-1]

    outputs, events = [y0], []
    now, state, i = t[0], y0, 1
    try:
        while i < len(t):
            event_t, ys = solver._call(state, torch.stack([now, t[i]]), event_fn, horizon=True)
            if event_t is None:                  # reached the output time first
                now, state, i = t[i], last(ys), i + 1
                outputs.append(state)
                continue
            events.append(event_t)
            if len(events) > max_events:
                raise SolverError(f"more than max_events={max_events} events before t={float(t[-1]):.6g} (the "
                                  f"last at t={float(event_t):.6g}): the events accumulate; raise max_events or "
                                  "check event_fn and jump", reason="MAX_EVENTS", time=float(event_t))
            now, state = event_t.to(t.dtype), jump(event_t, last(ys))
    finally:
        solver._release()
    ys = tuple(torch.stack([o[k] for o in outputs]) for k in range(len(y0))) if is_tuple else torch.stack(outputs)
    return ys, torch.stack(events) if events else torch.zeros(0, dtype=t.dtype)


def odeint_event(func: Callable, y0: State, t0: torch.Tensor, *, event_fn: Callable, reverse_time: bool = False,
                 odeint_interface: Callable = odeint, **kwargs):
    """Solve from ``t0`` until ``event_fn(t, y)`` crosses zero; torchdiffeq's ``odeint_event``.

    Parameters
    ----------
    func, y0 :
        As for :func:`odeint`.
    t0 : torch.Tensor
        The initial time (0-dim or one element); may require grad.
    event_fn : callable
        ``event_fn(t, y) -> Tensor``; the solve stops where the first of its values crosses zero
        (PETSc's TSEvent locates it to ``|event_fn| <= 1e-12``, ``-ts_event_tol`` overrides).
        An ``nn.Module`` has its parameters differentiated.
    reverse_time : bool
        Integrate towards decreasing time.
    odeint_interface : callable
        :func:`odeint` (or a function with its signature).
    **kwargs :
        Passed on (``method``, ``rtol``, ``atol``, ``options``, ...).

    Returns
    -------
    (torch.Tensor, torch.Tensor or tuple)
        The event time and the solution at ``t0`` and at the event (shape ``(2, *y0.shape)``), both
        differentiable w.r.t. ``y0``, ``t0`` and the parameters of ``func`` and ``event_fn``: the discrete
        adjoint differentiates the solution at the event time and the implicit function theorem adds the
        event time's dependence.

    Examples
    --------
    >>> import torch, pnode
    >>> y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    >>> t_e, ys = pnode.odeint_event(lambda t, y: -y, y0, torch.tensor(0.0, dtype=torch.float64),
    ...                              event_fn=lambda t, y: y[0] - 0.5, adjoint_params=())
    >>> round(t_e.item(), 6)            # log(2)
    0.693147
    >>> t_e.backward()                  # d t_e / d y0 = 1 / y0
    >>> round(y0.grad.item(), 5)
    1.0
    """
    if not isinstance(t0, torch.Tensor) or t0.numel() != 1:
        raise InvalidArgumentError(f"t0 must be a one-element tensor (the initial time), got {t0!r}")
    start = t0.reshape(1)
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

_LAST_STATS: SolveStats | None = None


def last_stats() -> SolveStats | None:
    """Statistics of the latest :func:`odeint` call (its backward pass included, once run)."""
    return _LAST_STATS


def _leaves_reached(func: Callable, y0: State, t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors requiring grad that a plain function (not an ``nn.Module``) depends on: one evaluation
    on a detached state, then the leaves of its autograd graph (torchdiffeq's ``odeint`` differentiates
    them too).  A tensor computed outside ``func`` from them is reached through its own graph."""
    state = tuple(p.detach() for p in y0) if isinstance(y0, (tuple, list)) else y0.detach()
    dtype = state[0].dtype if isinstance(state, tuple) else state.dtype
    times = t.detach().to(dtype)
    # just inside the span: a func discontinuous at t[0] (options['perturb']) is not evaluated there
    probe = torch.nextafter(times[0], times[1]) if len(times) > 1 else times[0]
    with torch.enable_grad():
        out = func(probe, state)
    parts = out if isinstance(out, (tuple, list)) else (out,)
    leaves, seen = [], set()
    stack = [p.grad_fn for p in parts if isinstance(p, torch.Tensor) and p.grad_fn is not None]
    stack += [p for p in parts if isinstance(p, torch.Tensor) and p.requires_grad and p.grad_fn is None]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):           # the output is itself a leaf
            if id(node) not in seen:
                seen.add(id(node))
                leaves.append(node)
            continue
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)    # AccumulateGrad: a leaf tensor
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _tolerance(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}") from None
    if not number > 0 or not np.isfinite(number):
        raise InvalidArgumentError(f"{name} must be a positive finite number, got {value!r}")
    return number

"""torchdiffeq's Adams methods, ``explicit_adams`` and ``implicit_adams``, run by pnode in plain torch.

PETSc 3.26 has no Adams TS type (its multistep families are BDF and the general linear GLEE/GLLE;
CVODE's Adams methods are reachable only through TSSUNDIALS, which this build lacks and which has no
TSAdjoint either), so these two methods are integrated here, on the fixed grid torchdiffeq uses, and
never reach PETSc.  The scheme is torchdiffeq's:

* a fixed grid: the output times, ``options["step_size"]`` (steps of ``h`` from ``t[0]``, the last one
  shortened to end at ``t[-1]``) or ``options["grid_constructor"]``; outputs between grid points are
  interpolated (``options["interp"]``: ``"linear"``, the default, or ``"cubic"`` Hermite), because the
  Adams coefficients assume equal steps and inserting the output times into the grid would break them;
* at every step the slope ``f_n = f(t_n, y_n)`` joins a history of at most ``max_order - 1`` slopes
  (default ``max_order = 12``); while fewer than three are known the step is Kutta's 3/8-rule RK4, then
  Adams-Bashforth with as many slopes as are known (order 3 rising to ``max_order - 1``);
* ``implicit_adams`` corrects each Adams-Bashforth prediction with the Adams-Moulton formula one order
  higher, by at most ``options["max_iters"]`` (default 4) fixed-point iterations stopped when the
  change of the increment is within ``rtol``/``atol`` (max norm); a step whose iteration does not
  converge warns and drops the oldest slope from the history.  The corrector's slope at ``t_{n+1}`` is
  not kept: the next step evaluates ``f(t_{n+1}, y_{n+1})`` afresh, as torchdiffeq does.

The coefficients are computed exactly (rational arithmetic) from their definition, the integral over
one step of the Lagrange polynomial through the slopes.

Gradients are exact for this discrete scheme (a discrete adjoint): each step is an autograd node whose
backward re-evaluates the step with autograd on (the forward pass runs without a graph) and returns its
vector-Jacobian product, so the backward pass evaluates ``func`` at the forward's stage times, calls
``callback_step_adjoint`` once per step, and holds every step's state and slope (memory grows with the
number of steps, as PETSc's stored trajectory does) but never more than one step's graph of ``func``.
``options["keep_graph"] = True`` instead keeps the whole autograd graph of the forward pass (no
re-evaluation; memory grows with the number of steps times ``func``'s activations).  Decisions that
are not differentiable (how many corrector iterations ran, whether a slope was dropped) are recorded
in the forward pass and replayed, so the backward pass differentiates exactly the steps that were taken.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ._bridge import PETSC_DTYPE, _shape_error
from ._options import SolveOptions
from ._spec import SolveSpec
from ._stepping import StepCallbacks
from ._timegrid import same_time_tolerance
from .errors import InvalidArgumentError, MaxStepsError
from .stats import SolveStats

MAX_ORDER = 12           # torchdiffeq's largest max_order
START_SLOPES = 3         # fewer known slopes than this: the step is RK4
MAX_ITERS = 4            # corrector iterations of implicit_adams (torchdiffeq's default)

# options that steer PETSc or an adaptive controller: meaningless for a fixed-grid scheme run in torch
_NOT_FOR_ADAMS = ("petsc", "checkpoints", "jacobian", "theta", "first_step", "min_step", "max_step", "safety",
                  "ifactor", "dfactor", "step_t", "jump_t", "solver")


# ---------------------------------------------------------------------------------------------- coefficients
def _integrate_lagrange(nodes: Sequence[int]) -> tuple[Fraction, ...]:
    """``∫_0^1 l_j(s) ds`` for the Lagrange basis ``l_j`` through ``nodes`` (step units, ``t_n`` at 0)."""
    weights = []
    for j, node in enumerate(nodes):
        poly = [Fraction(1)]            # coefficients, lowest degree first
        for i, other in enumerate(nodes):
            if i == j:
                continue
            scale = Fraction(1, node - other)
            shifted = [Fraction(0)] * (len(poly) + 1)
            for d, c in enumerate(poly):          # poly * (s - other) / (node - other)
                shifted[d + 1] += c * scale
                shifted[d] -= c * other * scale
            poly = shifted
        weights.append(sum(c / (d + 1) for d, c in enumerate(poly)))
    return tuple(weights)


@functools.cache
def bashforth(k: int) -> tuple[Fraction, ...]:
    """Weights of the ``k``-step Adams-Bashforth formula ``y_{n+1} = y_n + h sum_j b_j f_{n-j}``
    (``j = 0..k-1``; order ``k``)."""
    return _integrate_lagrange([-j for j in range(k)])


@functools.cache
def moulton(k: int) -> tuple[Fraction, ...]:
    """Weights of the Adams-Moulton formula through ``k`` slopes, ``y_{n+1} = y_n + h (m_0 f_{n+1} +
    sum_j m_{j+1} f_{n-j})`` (``j = 0..k-2``; order ``k``)."""
    return _integrate_lagrange([1 - j for j in range(k)])


# ---------------------------------------------------------------------------------------------- the scheme
@dataclass(frozen=True)
class AdamsScheme:
    """One Adams method with its settings (``implicit`` adds the Adams-Moulton corrector)."""

    implicit: bool
    max_order: int = MAX_ORDER
    max_iters: int = MAX_ITERS
    rtol: float = 1e-7
    atol: float = 1e-9

    @classmethod
    def of(cls, name: str, options: SolveOptions, rtol: float, atol: float) -> AdamsScheme:
        return cls(name != "explicit_adams", MAX_ORDER if options.max_order is None else options.max_order,
                   MAX_ITERS if options.max_iters is None else options.max_iters, rtol, atol)

    @functools.cached_property
    def _weights(self) -> tuple[list[list[float]], list[list[float]]]:
        top = self.max_order
        return ([[float(w) for w in bashforth(k)] for k in range(top + 1)],
                [[float(w) for w in moulton(k)] for k in range(top + 2)])

    @property
    def history(self) -> int:
        """How many slopes a step uses at most."""
        return max(self.max_order - 1, 1)

    def step(self, field: _Field, t0: torch.Tensor, t1: torch.Tensor, y: torch.Tensor,
             history: Sequence[torch.Tensor], decision: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from ``(t0, y)`` to ``t1`` given the earlier slopes (newest first); returns
        ``(y1, f0)``.  ``decision`` records the corrector's iteration count and convergence on the first
        call and is replayed on later calls (the backward pass's re-evaluation)."""
        dt = t1 - t0
        f0 = field(t0, y, nudge=1)
        slopes = (f0, *history)
        k = min(len(slopes), self.max_order - 1)
        if k < START_SLOPES:
            decision.setdefault("converged", True)
            return y + _rk38(field, t0, dt, t1, y, f0), f0
        bash, moul = self._weights
        dy = dt * _combine(bash[k], slopes)
        if not self.implicit:
            decision.setdefault("converged", True)
            return y + dy, f0
        weights = moul[k + 1]
        known = dt * _combine(weights[1:], slopes)
        replay = "iterations" in decision
        iterations = decision["iterations"] if replay else self.max_iters
        converged = False
        for i in range(iterations):
            previous = dy
            dy = dt * weights[0] * field(t1, y + dy, nudge=-1) + known
            if not replay:
                converged = self._converged(previous, dy)
                if converged:
                    iterations = i + 1
                    break
        if not replay:
            decision["iterations"], decision["converged"] = iterations, converged
        return y + dy, f0

    def _converged(self, previous: torch.Tensor, new: torch.Tensor) -> bool:
        with torch.no_grad():
            scale = self.atol + self.rtol * torch.maximum(previous.abs(), new.abs())
            return bool(((previous - new).abs() / scale).max() < 1) if new.numel() else True


def _combine(weights: Sequence[float], slopes: Sequence[torch.Tensor]) -> torch.Tensor:
    total = weights[0] * slopes[0]
    for w, s in zip(weights[1:], slopes[1:]):
        total = total + w * s
    return total


def _rk38(field: _Field, t0, dt, t1, y, k1):
    """Kutta's 3/8 rule (the RK4 torchdiffeq starts its Adams methods with), first slope given."""
    third = dt / 3
    k2 = field(t0 + third, y + third * k1)
    k3 = field(t0 + 2 * third, y + dt * (k2 - k1 / 3))
    k4 = field(t1, y + dt * (k1 - k2 + k3), nudge=-1)
    return (k1 + 3 * (k2 + k3) + k4) * (dt / 8)


class _Field:
    """``g(tau, y) = sign * func(sign * tau, y)`` on flat float64 states, in the user's layout and dtype
    (pnode's dtype policy: integrate in float64, evaluate ``func`` in the state's dtype)."""

    def __init__(self, func: Callable, spec: SolveSpec, perturb: bool, stats: SolveStats):
        self.func, self.layout, self.sign = func, spec.layout, spec.sign
        self.time_dtype, self.perturb, self.stats = spec.time_dtype, perturb, stats

    def user_time(self, tau: torch.Tensor, nudge: int = 0) -> torch.Tensor:
        t = (self.sign * tau).to(self.time_dtype)
        if nudge and self.perturb:
            # one ulp into the step (torchdiffeq's perturb), with the gradient of the unmoved time
            moved = torch.nextafter(t.detach(), t.detach() + nudge * self.sign)
            t = t + (moved - t.detach())
        return t

    def __call__(self, tau: torch.Tensor, y: torch.Tensor, nudge: int = 0) -> torch.Tensor:
        self.stats.rhs_evals += 1
        layout = self.layout
        parts = layout.check_output(self.func(self.user_time(tau, nudge), layout.unflatten(y)))
        for i, ((_, _, shape), part) in enumerate(zip(layout.slices, parts)):
            if tuple(part.shape) != shape:
                raise _shape_error(layout._where(i, "func"), part.shape, shape)
        flat = torch.cat([p.reshape(-1).to("cpu", PETSC_DTYPE) for p in parts])
        return flat if self.sign > 0 else -flat


class _Recomputed(torch.autograd.Function):
    """``compute(*tensors)`` run without a graph; its backward re-runs it with autograd and returns the
    vector-Jacobian product (for ``tensors`` and the parameters ``params``).  ``on_backward(grads)`` is
    called first (``callback_step_adjoint``)."""

    @staticmethod
    def forward(ctx, compute, on_backward, count, *args):
        tensors, params = args[:count], args[count:]
        ctx.compute, ctx.on_backward, ctx.params = compute, on_backward, params
        ctx.save_for_backward(*tensors)
        return compute(*tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        if ctx.on_backward is not None:
            ctx.on_backward(grads)
        tensors = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(x.requires_grad) for x in tensors]
            outputs = ctx.compute(*inputs)
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            wrt = [x for x in (*inputs, *ctx.params) if x.requires_grad]
            found = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True,
                                             retain_graph=True) if pairs and wrt else ())
        out = [next(found, None) if x.requires_grad else None for x in (*inputs, *ctx.params)]
        return (None, None, None, *out)


# ---------------------------------------------------------------------------------------------- checks
def check_options(method: str, options: SolveOptions) -> None:
    """Options of the Adams methods are torchdiffeq's fixed-grid ones; PETSc's and the adaptive
    controller's are refused (they would have no effect)."""
    defaults = SolveOptions()
    given = [name for name in _NOT_FOR_ADAMS if getattr(options, name) != getattr(defaults, name)]
    if given:
        raise InvalidArgumentError(
            f"options {', '.join(map(repr, given))} have no meaning for method={method!r}: the Adams methods run on "
            "a fixed grid in plain torch, not in PETSc (options: step_size, grid_constructor, interp, perturb, "
            "max_order, max_iters, max_num_steps, keep_graph)")
    if options.step_size is not None and options.grid_constructor is not None:
        raise InvalidArgumentError("options['step_size'] and options['grid_constructor'] are mutually exclusive "
                                   f"for method={method!r} (as in torchdiffeq): give one")
    if options.max_order is not None and options.max_order <= START_SLOPES:
        warnings.warn(f"options['max_order']={options.max_order} is below {START_SLOPES + 1}: every step of "
                      f"{method!r} is then the RK4 start (as in torchdiffeq)", stacklevel=3)
    if options.max_iters is not None and method == "explicit_adams":
        raise InvalidArgumentError("options['max_iters'] sets the corrector iterations of implicit_adams; "
                                   "explicit_adams has no corrector: remove it")


# ---------------------------------------------------------------------------------------------- the solve
class AdamsSolve:
    """One call of an Adams method: grid, steps, outputs (see the module docstring)."""

    def __init__(self, func: Callable, method: str, spec: SolveSpec, options: SolveOptions, rtol: float,
                 atol: float, stats: SolveStats):
        self.func, self.method, self.spec, self.options, self.stats = func, method, spec, options, stats
        self.scheme = AdamsScheme.of(method, options, rtol, atol)
        self.field = _Field(func, spec, options.perturb, stats)
        self.callbacks = StepCallbacks.of(func, adaptive=False)
        self.graph = spec.needs_grad and torch.is_grad_enabled()
        self.history: list[torch.Tensor] = []
        self.unconverged = 0
        self.step_times: list[float] = []

    # --- grids ------------------------------------------------------------------------------
    def grid(self, taus: torch.Tensor, t: torch.Tensor, y0) -> torch.Tensor:
        """Step boundaries (integration time, float64, differentiable w.r.t. ``t`` where they come from it)."""
        options, sign = self.options, self.spec.sign
        if options.grid_constructor is not None:
            made = options.grid_constructor(self.func, y0, t)
            if not isinstance(made, torch.Tensor) or made.dim() != 1 or made.numel() < 2:
                raise InvalidArgumentError("options['grid_constructor'] must return a 1-D tensor of at least two "
                                           f"times, got {made!r}")
            grid = sign * made.to("cpu", torch.float64)
            values = grid.detach().numpy()
            if not np.all(np.diff(values) > 0):
                raise InvalidArgumentError("options['grid_constructor'] returned times that are not strictly "
                                           "monotone in the direction of t")
            ends = (float(taus[0].detach()), float(taus[-1].detach()))
            if abs(values[0] - ends[0]) > same_time_tolerance(ends[0]) or \
                    abs(values[-1] - ends[1]) > same_time_tolerance(ends[1]):
                raise InvalidArgumentError(f"options['grid_constructor'] must return a grid from t[0]={sign * ends[0]} "
                                           f"to t[-1]={sign * ends[1]}, got {sign * values[0]} .. {sign * values[-1]}")
            return torch.cat([taus[:1], grid[1:-1], taus[-1:]])
        if options.step_size is None:
            return taus
        h = options.step_size
        span = float((taus[-1] - taus[0]).detach())
        count = math.ceil(span / h + 1)      # torchdiffeq's grid: steps of h, the last one ends at t[-1]
        inner = taus[0] + h * torch.arange(1, count - 1, dtype=torch.float64)
        if count > 2 and float((taus[-1] - inner[-1]).detach()) < 1e-9 * h:
            inner = inner[:-1]               # a rounding-sized last step merges into the one before
        return torch.cat([taus[:1], inner, taus[-1:]])

    # --- steps ------------------------------------------------------------------------------
    def advance(self, t0: torch.Tensor, t1: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; updates the slope history.  Returns ``(y1, f0)``."""
        if self.callbacks is not None:
            self._call_hook("callback_step", self.field.user_time(t0.detach()), self.spec.layout.unflatten(y.detach()),
                            self.spec.sign * (t1 - t0).detach())
        history = self.history[:self.scheme.history - 1]
        decision: dict = {}
        scheme, field = self.scheme, self.field

        def compute(t0_, t1_, y_, *slopes):
            return scheme.step(field, t0_, t1_, y_, slopes, decision)

        if self.graph and not self.options.keep_graph:
            y1, f0 = _Recomputed.apply(compute, self._adjoint_hook(t0, t1), 3 + len(history), t0, t1, y, *history,
                                       *self.spec.params)
        elif self.graph:
            y1, f0 = compute(t0, t1, y, *history)
            hook = self._adjoint_hook(t0, t1, counting=False)
            if hook is not None:
                y1, f0 = _AdjointHook.apply(hook, y1, f0)
        else:
            with torch.no_grad():
                y1, f0 = compute(t0, t1, y, *history)
        self.history = [f0, *history]
        if not decision["converged"]:
            self.unconverged += 1
            self.history.pop()           # torchdiffeq drops the oldest slope after a failed iteration
        self.step_times.append(float(t1.detach()))
        self.stats.steps += 1
        return y1, f0

    def _call_hook(self, name: str, *args) -> None:
        hook = self.callbacks.hooks.get(name)
        if hook is not None:
            hook(*args)

    def _adjoint_hook(self, t0: torch.Tensor, t1: torch.Tensor, counting: bool = True):
        """What a step's backward does first: count itself (``counting``, the re-evaluating backward) and
        call ``callback_step_adjoint``; ``None`` when there is nothing to do."""
        calls = self.callbacks is not None and "callback_step_adjoint" in self.callbacks.hooks
        if not calls and not counting:
            return None
        layout, sign, field, stats = self.spec.layout, self.spec.sign, self.field, self.stats
        t_end, back = field.user_time(t1.detach()), sign * (t0 - t1).detach()

        def hook(grads):
            if counting:
                stats.vjp_evals += 1
                stats.recomputed_steps += 1
            if calls:
                lam = grads[0] if grads[0] is not None else torch.zeros(layout.size, dtype=torch.float64)
                self._call_hook("callback_step_adjoint", t_end, layout.unflatten(lam.detach()), back)

        return hook

    def slope_at_end(self, t1: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """``f(t1, y1)`` for cubic interpolation (one-sided with ``perturb``), re-evaluated on backward."""
        field = self.field

        def compute(t1_, y1_):
            return (field(t1_, y1_, nudge=-1),)

        if self.graph and not self.options.keep_graph:
            return _Recomputed.apply(compute, None, 2, t1, y1, *self.spec.params)[0]
        return compute(t1, y1)[0]

    def interpolant(self, t0, t1, y0, y1, f0) -> Callable[[torch.Tensor], torch.Tensor]:
        """The dense output on ``[t0, t1]`` (torchdiffeq's: linear, or cubic Hermite with the end slopes)."""
        if self.options.interp == "cubic":
            f1 = self.slope_at_end(t1, y1)
            dt = t1 - t0

            def cubic(tau):
                s = (tau - t0) / dt
                return ((1 + 2 * s) * (1 - s) ** 2 * y0 + s * (1 - s) ** 2 * dt * f0 + s * s * (3 - 2 * s) * y1
                        + s * s * (s - 1) * dt * f1)
            return cubic

        def linear(tau):
            return y0 + (tau - t0) / (t1 - t0) * (y1 - y0)
        return linear

    # --- outputs ----------------------------------------------------------------------------
    def solve(self, y0: torch.Tensor, t: torch.Tensor, y0_user) -> torch.Tensor:
        """``(len(t), N)`` float64 outputs at the output times."""
        taus = self.spec.sign * t.to("cpu", torch.float64)
        outputs = [y0]
        if len(taus) == 1:
            return torch.stack(outputs)
        grid = self.grid(taus, t, y0_user)
        self._check_steps(len(grid) - 1, float(grid[0].detach()))
        points = grid.detach().numpy()
        targets = taus.detach().numpy()
        self.step_times = [float(points[0])]
        y, j = y0, 1
        for n in range(len(grid) - 1):
            t0, t1 = grid[n], grid[n + 1]
            y1, f0 = self.advance(t0, t1, y)
            interpolate = None
            while j < len(targets) and targets[j] <= points[n + 1] + same_time_tolerance(points[n + 1]):
                interpolate = interpolate or self.interpolant(t0, t1, y, y1, f0)
                out = interpolate(taus[j])
                if abs(targets[j] - points[n + 1]) <= same_time_tolerance(targets[j]):
                    # on a grid point: the scheme value itself, differentiated as the interpolant is (its
                    # derivative in the output time is the interpolant's slope)
                    out = out + (y1 - out).detach()
                outputs.append(out)
                j += 1
            y = y1
        self._warn_unconverged()
        return torch.stack(outputs)

    def solve_until_event(self, y0: torch.Tensor, t: torch.Tensor, event_fn: Callable, horizon: bool):
        """Steps of ``step_size`` from ``t[0]`` until an event function crosses zero (or ``t[1]`` with
        ``horizon``); returns ``(event time or None, (2, N) outputs)``."""
        h = self.options.step_size
        if h is None:
            raise InvalidArgumentError(f"method {self.method!r} steps on a fixed grid: with event_fn give its step "
                                       "as options={'step_size': h}")
        if not callable(event_fn):
            raise InvalidArgumentError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
        taus = self.spec.sign * t.to("cpu", torch.float64)
        layout, field = self.spec.layout, self.field

        def values(tau, y) -> torch.Tensor:
            found = event_fn(field.user_time(tau), layout.unflatten(y))
            if not isinstance(found, torch.Tensor) or found.numel() < 1:
                raise InvalidArgumentError("event_fn must return a tensor (one value per event function), got "
                                           f"{type(found).__name__}")
            return found.reshape(-1).to(PETSC_DTYPE)

        with torch.no_grad():
            reference = torch.sign(values(taus[0], y0))
        self.step_times = [float(taus[0].detach())]
        end = float(taus[1].detach()) if horizon else math.inf
        y, n = y0, 0
        while True:
            t0 = taus[0] + n * h
            t1 = taus[0] + (n + 1) * h
            last = horizon and float(t1.detach()) >= end - same_time_tolerance(end)
            if last:
                t1 = taus[1]
            y1, f0 = self.advance(t0, t1, y)
            with torch.no_grad():
                now = torch.sign(values(t1, y1))
            crossed = (reference != 0) & (now != reference)
            if bool(crossed.any()):
                event_t, y_event = self._locate(values, crossed, reference, t0, t1, y, y1, f0)
                self._warn_unconverged()
                return self.spec.sign * event_t, torch.stack([y0, y_event])
            if last:
                self._warn_unconverged()
                return None, torch.stack([y0, y1])
            reference = torch.where(reference == 0, now, reference)
            y, n = y1, n + 1
            self._check_steps(n + 1, float(taus[0].detach()))

    def _locate(self, values, crossed, reference, t0, t1, y0, y1, f0):
        """The earliest zero of a crossed event function on the step's interpolant (bisection), made
        differentiable by the implicit function theorem: ``t_e = t* - (c - c.detach()) / (dc/dt)`` has the
        value ``t*`` and the derivative ``-(dc/dtheta) / (dc/dt)`` at fixed time."""
        interpolate = self.interpolant(t0, t1, y0, y1, f0)
        lo_end, hi_end = float(t0.detach()), float(t1.detach())
        best, index = None, None
        with torch.no_grad():
            for i in torch.nonzero(crossed).reshape(-1).tolist():
                lo, hi = lo_end, hi_end
                for _ in range(200):
                    if hi - lo <= 2 * same_time_tolerance(hi):
                        break
                    mid = 0.5 * (lo + hi)
                    tau = torch.tensor(mid, dtype=torch.float64)
                    if torch.sign(values(tau, interpolate(tau))[i]) == reference[i]:
                        lo = mid
                    else:
                        hi = mid
                # the last time before the crossing (within the bisection's resolution): the event state
                # keeps the initial sign, so a solve restarted there after a jump does not see the same
                # crossing again
                root = lo
                if best is None or root < best:
                    best, index = root, i
        root = torch.tensor(best, dtype=torch.float64)
        if not torch.is_grad_enabled():
            return root, interpolate(root)
        with torch.enable_grad():
            # dc/dt along the interpolant (a graph of its own: the coefficients' graphs are not traversed)
            probe = root.clone().requires_grad_()
            along = values(probe, interpolate(probe))[index]
            slope = torch.autograd.grad(along, probe)[0] if along.requires_grad else torch.zeros(())
        crossing = values(root, interpolate(root))[index]
        if crossing.requires_grad:
            if slope == 0:
                raise InvalidArgumentError("event_fn is tangent to the trajectory at the event (dc/dt = 0): the "
                                           "event time has no derivative there")
            root = root - (crossing - crossing.detach()) / slope.detach()
        return root, interpolate(root)

    # --- bookkeeping ------------------------------------------------------------------------
    def _check_steps(self, steps: int, tau: float) -> None:
        if steps > self.options.max_num_steps:
            raise MaxStepsError(f"method {self.method!r} needs {steps} steps, more than options['max_num_steps']="
                                f"{self.options.max_num_steps}; raise it or use a larger step",
                                reason="MAX_STEPS", time=self.spec.sign * tau)

    def _warn_unconverged(self) -> None:
        if self.unconverged:
            warnings.warn(f"implicit_adams: the corrector's functional iteration did not converge in "
                          f"{self.unconverged} step(s) within max_iters={self.scheme.max_iters}; the solution may be "
                          "inaccurate (smaller steps, or a larger options['max_iters'])", stacklevel=7)


class _AdjointHook(torch.autograd.Function):
    """Identity on a step's outputs whose backward calls ``callback_step_adjoint`` (``keep_graph`` mode)."""

    @staticmethod
    def forward(ctx, hook, y1, f0):
        ctx.hook = hook
        return y1.clone(), f0.clone()

    @staticmethod
    def backward(ctx, grad_y1, grad_f0):
        ctx.hook((grad_y1, grad_f0))
        return None, grad_y1, grad_f0


def solve(func: Callable, method: str, spec: SolveSpec, options: SolveOptions, rtol: float, atol: float,
          stats: SolveStats, y0, t: torch.Tensor, event_fn: Callable | None = None, horizon: bool = False):
    """Run an Adams method; returns ``((len(t), N) outputs, step times)`` or, with ``event_fn``,
    ``((event time or None, (2, N) outputs), step times)`` (user time, float64)."""
    start = time.perf_counter()
    stats.reset_forward(method, "none (plain torch, not PETSc)")
    y0_flat = spec.layout.flatten(y0, differentiable=spec.needs_grad)
    run = AdamsSolve(func, method, spec, options, rtol, atol, stats)
    if event_fn is None:
        result = run.solve(y0_flat, t, y0)
    else:
        if len(t) != 2:
            raise InvalidArgumentError(
                f"with event_fn, t must hold two times [t0, t1] (t1 only sets the direction; the solve ends at the "
                f"event), got {len(t)}; or use pnode.odeint_event(func, y0, t0, event_fn=...)")
        result = run.solve_until_event(y0_flat, t, event_fn, horizon)
    stats.peak_stored_states = len(run.step_times) if run.graph else 0
    stats.forward_time = time.perf_counter() - start
    return result, spec.sign * np.asarray(run.step_times)

"""Local regularization from the adaptive solver's own error estimate.

Pal, Edelman & Rackauckas (2023), "Locally regularized neural differential equations": after a forward
solve, pick a time ``s`` in the span, take one extra step of the adaptive method's embedded Runge-Kutta
pair from the solution at ``s`` with the step size the solver used there, and penalise the weighted RMS
norm of the pair's error estimate (the number the step-size controller compares with 1) times the step
size.  Dynamics that the solver can integrate with fewer, longer steps are rewarded, so a model trained
with this term costs fewer function evaluations at prediction.

Two public functions:

* :func:`embedded_error_estimate` -- the controller's scaled error of one embedded step, differentiable;
* :func:`local_error_regularizer` -- samples the time(s) from a finished :class:`pnode.ODESolver` solve
  and returns ``mean(|h| * embedded_error_estimate(...))``, the term to add to the loss.

The tableaux below are written from the published pairs (Heun-Euler; Bogacki & Shampine 1989;
Fehlberg 1969; Dormand & Prince 1980; Bogacki & Shampine 1996) in PETSc's convention: ``b`` propagates
the solution, ``b_embedded`` is the lower-order companion, and the error estimate is their difference.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction as F

import torch

from . import METHODS, InvalidArgumentError, ODESolver

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class EmbeddedPair:
    """An explicit Runge-Kutta tableau with an embedded lower-order solution.

    Attributes
    ----------
    tableau: PETSc's ``TSRKType`` name (``"5dp"``, ...).
    order, embedded_order: orders of the propagated and of the embedded solution.
    a: strictly lower-triangular stage matrix, one tuple per stage.
    b, b_embedded: weights of the propagated and of the embedded solution.
    """

    tableau: str
    order: int
    embedded_order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_embedded: tuple[float, ...]

    @property
    def c(self) -> tuple[float, ...]:
        return tuple(sum(row) for row in self.a)

    @property
    def stages(self) -> int:
        return len(self.b)


def _pair(tableau: str, order: int, embedded_order: int, a_rows, b, b_embedded) -> EmbeddedPair:
    stages = len(b)
    a = tuple(tuple(float(x) for x in row) + (0.0,) * (stages - len(row)) for row in [()] + list(a_rows))
    return EmbeddedPair(tableau, order, embedded_order, a, tuple(float(x) for x in b),
                        tuple(float(x) for x in b_embedded))


# keyed by PETSc's tableau name; a method name reaches its pair through pnode.METHODS
EMBEDDED_PAIRS: dict[str, EmbeddedPair] = {p.tableau: p for p in (
    # Heun's method (explicit trapezoid) with forward Euler embedded
    _pair("2a", 2, 1, [[1]], [F(1, 2), F(1, 2)], [1, 0]),
    # Bogacki-Shampine 3(2), FSAL: the fourth stage is f at the new solution
    _pair("3bs", 3, 2,
          [[F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
          [F(2, 9), F(1, 3), F(4, 9), 0],
          [F(7, 24), F(1, 4), F(1, 3), F(1, 8)]),
    # Fehlberg 5(4): six stages, fifth order propagated (as PETSc's 5f)
    _pair("5f", 5, 4,
          [[F(1, 4)],
           [F(3, 32), F(9, 32)],
           [F(1932, 2197), F(-7200, 2197), F(7296, 2197)],
           [F(439, 216), -8, F(3680, 513), F(-845, 4104)],
           [F(-8, 27), 2, F(-3544, 2565), F(1859, 4104), F(-11, 40)]],
          [F(16, 135), 0, F(6656, 12825), F(28561, 56430), F(-9, 50), F(2, 55)],
          [F(25, 216), 0, F(1408, 2565), F(2197, 4104), F(-1, 5), 0]),
    # Dormand-Prince 5(4), FSAL
    _pair("5dp", 5, 4,
          [[F(1, 5)],
           [F(3, 40), F(9, 40)],
           [F(44, 45), F(-56, 15), F(32, 9)],
           [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
           [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
           [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)]],
          [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0],
          [F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)]),
    # Bogacki-Shampine 5(4), FSAL, eight stages (the 1996 pair's first embedded estimator)
    _pair("5bs", 5, 4,
          [[F(1, 6)],
           [F(2, 27), F(4, 27)],
           [F(183, 1372), F(-162, 343), F(1053, 1372)],
           [F(68, 297), F(-4, 11), F(42, 143), F(1960, 3861)],
           [F(597, 22528), F(81, 352), F(63099, 585728), F(58653, 366080), F(4617, 20480)],
           [F(174197, 959244), F(-30942, 79937), F(8152137, 19744439), F(666106, 1039181),
            F(-29421, 29068), F(482048, 414219)],
           [F(587, 8064), 0, F(4440339, 15491840), F(24353, 124800), F(387, 44800), F(2152, 5985),
            F(7267, 94080)]],
          [F(587, 8064), 0, F(4440339, 15491840), F(24353, 124800), F(387, 44800), F(2152, 5985),
           F(7267, 94080), 0],
          [F(2479, 34992), 0, F(123, 416), F(612941, 3411720), F(43, 1440), F(2272, 6561), F(79937, 1113912),
           F(3293, 556956)]),
)}

MODES = ("unbiased", "biased")


def supported_methods() -> list[str]:
    """Method names (see :func:`pnode.method_table`) whose embedded pair pnode can step with autograd."""
    return sorted(name for name, row in METHODS.items()
                  if row.adaptive and row.ts_type == "rk" and row.tableau in EMBEDDED_PAIRS)


def embedded_pair(method: str) -> EmbeddedPair:
    """The embedded pair of an adaptive explicit Runge-Kutta ``method``.

    Raises
    ------
    InvalidArgumentError
        The method is unknown, has no embedded estimate (fixed-step or implicit), or its pair (Verner
        6(5)-8(7)) is not tabulated here; the message lists the methods that work.
    """
    row = METHODS.get(method.strip().lower()) if isinstance(method, str) else None
    if row is None or not row.adaptive or row.ts_type != "rk" or row.tableau not in EMBEDDED_PAIRS:
        why = ("is not a method name" if row is None else
               "steps on a fixed grid (no embedded error estimate)" if not row.adaptive else
               "is implicit (its error estimate needs nonlinear stage solves)" if row.ts_type != "rk" else
               "has no embedded pair tabulated in pnode.regularization")
        raise InvalidArgumentError(
            f"method {method!r} {why}; local error regularization needs an adaptive explicit Runge-Kutta "
            f"pair, one of: {', '.join(supported_methods())}")
    return EMBEDDED_PAIRS[row.tableau]


def _as_parts(y: State) -> tuple[tuple[torch.Tensor, ...], bool]:
    if isinstance(y, torch.Tensor):
        return (y,), False
    if isinstance(y, (tuple, list)) and y and all(isinstance(p, torch.Tensor) for p in y):
        return tuple(y), True
    raise InvalidArgumentError(f"y must be a tensor or a tuple of tensors, got {type(y).__name__}")


def _embedded_step(func: Callable, t: torch.Tensor, y: State, dt: float, pair: EmbeddedPair):
    """One step of ``pair`` from ``(t, y)``: the propagated and the embedded solution (tuples of parts)."""
    parts, is_tuple = _as_parts(y)

    def f(time, state):
        out = func(time, state if is_tuple else state[0])
        out_parts, _ = _as_parts(out)
        if len(out_parts) != len(state) or any(o.shape != s.shape for o, s in zip(out_parts, state)):
            raise InvalidArgumentError("func(t, y) must return a tensor (or tuple) shaped like y, got shapes "
                                       f"{[tuple(o.shape) for o in out_parts]} for y {[tuple(s.shape) for s in state]}")
        return out_parts

    slopes = []
    for i, row in enumerate(pair.a):
        stage = tuple(p + sum((dt * a) * k[j] for a, k in zip(row[:i], slopes) if a != 0.0)
                      if i else p for j, p in enumerate(parts))
        slopes.append(f(t + pair.c[i] * dt, stage))

    def combine(weights):
        return tuple(p + sum((dt * w) * k[j] for w, k in zip(weights, slopes) if w != 0.0)
                     for j, p in enumerate(parts))

    return combine(pair.b), combine(pair.b_embedded)


def embedded_error_estimate(func: Callable, t: float | torch.Tensor, y: State, dt: float, *,
                            method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9) -> torch.Tensor:
    """The scaled local error estimate of one embedded Runge-Kutta step, as PETSc's controller measures it.

    From ``(t, y)`` one step of size ``dt`` gives the propagated solution ``u`` and the embedded one
    ``v``; the estimate is the weighted RMS norm

        E = sqrt( mean_i ( (u_i - v_i) / (atol + rtol * max(|u_i|, |v_i|)) )**2 )

    over every entry of the state (all batch members and tuple parts together), which is PETSc's
    ``TSErrorWeightedNorm`` (2-norm) that its ``basic`` adaptor accepts when ``E <= 1``.

    Parameters
    ----------
    func : callable
        The vector field ``func(t, y)``; its parameters receive gradients through ``E``.
    t : float or 0-dim tensor
        Start time of the step (not differentiated).
    y : Tensor or tuple of Tensors
        State at ``t``.  Used as given: detach it first to hold it constant.
    dt : float
        Step size (negative for backward-in-time solves); a plain number, so never differentiated.
    method : str
        An adaptive explicit Runge-Kutta method: ``rk2a``, ``bosh3``/``rk3bs``, ``rk5f``,
        ``dopri5``/``rk5dp``, ``rk5bs``.
    rtol, atol : float
        The tolerances that scale the error, as given to the solver.

    Returns
    -------
    Tensor
        0-dim tensor ``E`` in the state's dtype, differentiable w.r.t. everything ``func`` and ``y`` depend on.

    Raises
    ------
    InvalidArgumentError
        Unknown or non-adaptive method, non-finite or zero ``dt``, negative tolerances, or a malformed state.

    Examples
    --------
    >>> import torch, pnode
    >>> func = lambda t, y: -2.0 * y
    >>> e = pnode.embedded_error_estimate(func, 0.0, torch.ones(3, dtype=torch.float64), 0.1,
    ...                                   method="bosh3", rtol=0.0, atol=1.0)
    >>> float(e) < 1e-3
    True
    """
    pair = embedded_pair(method)
    dt = _step(dt)
    rtol, atol = _tolerance(rtol, "rtol"), _tolerance(atol, "atol")
    parts, _ = _as_parts(y)
    # func gets t in the state's dtype, as pnode's solves pass it
    time = torch.as_tensor(t.detach() if isinstance(t, torch.Tensor) else float(t), dtype=parts[0].dtype)
    high, low = _embedded_step(func, time, y, dt, pair)
    squares, count = 0.0, 0
    for u, v in zip(high, low):
        scale = atol + rtol * torch.maximum(u.abs(), v.abs())
        # as PETSc: entries with a zero tolerance (atol = 0 and u = v = 0) are left out of the mean
        weighted = torch.where(scale > 0, (u - v) / torch.where(scale > 0, scale, 1.0), 0.0)
        squares = squares + weighted.square().sum()
        count += int((scale > 0).sum())
    if count == 0 or float(squares.detach()) == 0.0:
        return squares * 0.0 if isinstance(squares, torch.Tensor) else torch.zeros((), dtype=high[0].dtype)
    return torch.sqrt(squares / count)


@dataclass(frozen=True)
class LocalErrorSample:
    """Where :func:`local_error_regularizer` evaluated the error: time, step size, and the estimate ``E``
    (without the factor ``|step|``), as plain numbers."""

    time: float
    step: float
    estimate: float


# A second solver per user solver, for the no-grad re-solves to sampled times: calling the user's own
# solver again would overwrite its step times, statistics and the trajectory its backward pass needs.
_RESOLVERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _resolver(solver: ODESolver) -> ODESolver:
    cached = _RESOLVERS.get(solver)
    if cached is None or cached.func is not solver.func:
        cached = ODESolver(solver.func, method=solver.method.name, rtol=solver.rtol, atol=solver.atol,
                           adjoint_params=())
        _RESOLVERS[solver] = cached
    return cached


def local_error_regularizer(solver: ODESolver, t: torch.Tensor, ys: State, *, mode: str = "unbiased",
                            samples: int = 1, generator: torch.Generator | None = None,
                            return_samples: bool = False):
    """The local error regularizer of Pal, Edelman & Rackauckas (2023) for the solve that produced ``ys``.

    Call it right after ``ys = solver(y0, t)``; add ``weight * reg`` to the loss.  For each of
    ``samples`` draws it picks a time ``s`` and the accepted step ``h`` of that solve through ``s``,
    takes the state ``y(s)``, and returns the mean of ``|h| * E(s, y(s), h)``, ``E`` being
    :func:`embedded_error_estimate` with the solver's method and tolerances.

    * ``mode="unbiased"``: ``s`` uniform in the span ``[t[0], t[-1])``; ``h`` is the accepted step that
      contains ``s`` (so the extra step starts inside a step of the solve, with that step's size).
    * ``mode="biased"``: ``s`` one of the accepted step start times, chosen uniformly; ``h`` that step.
      Biased towards regions with many short steps, which is where the cost is.

    What is held constant (no gradient flows through it), as in the reference implementation:

    * the state ``y(s)``: when ``s`` is an output time it is ``ys`` there, detached; otherwise it comes
      from a re-solve under ``torch.no_grad()`` from the last output time before ``s`` to ``s``, with
      the same method and tolerances (a separate cached solver, so ``solver.stats``, ``step_times`` and
      the pending backward pass are untouched).  ``y(s)`` is therefore accurate to the solver's
      tolerance, not bitwise the solve's internal state at ``s``;
    * the step size ``h`` and the time ``s`` (plain numbers from ``solver.step_times``).

    The gradient is thus w.r.t. the parameters of ``solver.func`` only, through the stages of the extra
    step and the error's scaling ``atol + rtol * max(|u|, |v|)``.

    Parameters
    ----------
    solver : pnode.ODESolver
        The solver whose latest call returned ``ys``; it supplies ``func``, the method (an adaptive
        explicit Runge-Kutta pair, see :func:`embedded_error_estimate`), ``rtol``, ``atol`` and the
        accepted step times.  Single-process solvers only.
    t : Tensor
        The output times of that call.
    ys : Tensor or tuple of Tensors
        Its output, shaped ``(len(t), *state_shape)``.
    mode : {"unbiased", "biased"}
        How the time is sampled.
    samples : int
        Number of sampled times averaged (default 1, as in the paper).
    generator : torch.Generator, optional
        Source of randomness for the sampled times (default: torch's global generator).
    return_samples : bool
        Also return the list of :class:`LocalErrorSample` (time, step, estimate).

    Returns
    -------
    Tensor or (Tensor, list of LocalErrorSample)
        The 0-dim regularizer, differentiable w.r.t. the parameters of ``solver.func``.

    Raises
    ------
    InvalidArgumentError
        ``solver`` is not a single-process ``pnode.ODESolver`` that has solved, ``t``/``ys`` do not match
        its latest solve, unknown ``mode``, ``samples < 1``, or a method without an embedded pair.

    Notes
    -----
    pnode's output times are step boundaries (never interpolated), so on a dense output grid many
    accepted steps are the grid spacing rather than the adaptor's choice; there ``E`` is small
    (``E ~ |h|**(p+1)``, ``p`` the embedded order) and the weight must be larger for the same effect.
    The re-solve to an unbiased sample costs at most one output interval of a no-grad solve; the extra
    step costs one evaluation of ``func`` per stage (7 for dopri5) plus their backward pass.

    Examples
    --------
    >>> import torch, pnode
    >>> func = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    >>> solver = pnode.ODESolver(lambda t, y: func(y), method="dopri5", rtol=1e-5, atol=1e-7,
    ...                          adjoint_params=tuple(func.parameters()))
    >>> t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    >>> ys = solver(torch.ones(8, 2, dtype=torch.float64), t)
    >>> reg = pnode.local_error_regularizer(solver, t, ys, generator=torch.Generator().manual_seed(0))
    >>> loss = ys.square().mean() + 0.1 * reg
    >>> loss.backward()
    """
    if not isinstance(solver, ODESolver):
        raise InvalidArgumentError(
            f"solver must be the pnode.ODESolver that produced ys (its step times are needed), got "
            f"{type(solver).__name__}; replace odeint(func, y0, t, ...) by solver = pnode.ODESolver(func, ...) "
            "and ys = solver(y0, t)")
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InvalidArgumentError(f"samples must be a positive int, got {samples!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if solver.distributed:
        raise InvalidArgumentError("local_error_regularizer supports single-process solvers only (comm=None): "
                                   "the sampled time and the error norm would have to agree across ranks")
    # what PETSc actually ran (command-line options may override the Python choice)
    method = solver.stats.method or solver.method.name
    embedded_pair(method)   # a clear error before any work
    steps = solver.step_times.to(torch.float64)
    if steps.numel() < 2:
        raise InvalidArgumentError("solver has no accepted steps yet: call ys = solver(y0, t) first")
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() < 2:
        raise InvalidArgumentError("t must be the 1-D tensor of output times passed to solver(y0, t)")
    times = t.detach().to(torch.float64)
    if abs(float(times[0] - steps[0])) > 1e-12 * max(1.0, abs(float(steps[0]))) or \
            abs(float(times[-1] - steps[-1])) > 1e-9 * max(1.0, abs(float(steps[-1]))):
        raise InvalidArgumentError(
            f"t spans [{float(times[0]):g}, {float(times[-1]):g}] but the solver's latest solve spans "
            f"[{float(steps[0]):g}, {float(steps[-1]):g}]: pass the t and ys of the solver's latest call")
    parts, is_tuple = _as_parts(ys)
    if any(p.shape[:1] != (len(times),) for p in parts):
        raise InvalidArgumentError(f"ys must have len(t) = {len(times)} rows (ys = solver(y0, t)), got shapes "
                                   f"{[tuple(p.shape) for p in parts]}")

    # work in increasing time tau = sign * time, so backward-in-time solves need no special case
    sign = 1.0 if float(times[-1]) > float(times[0]) else -1.0
    tau_steps, tau_out = sign * steps, sign * times
    total, drawn = 0.0, []
    for _ in range(samples):
        if mode == "biased":
            k = int(torch.randint(0, len(tau_steps) - 1, (1,), generator=generator))
            tau = float(tau_steps[k])
        else:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            tau = float(tau_out[0] + u * (tau_out[-1] - tau_out[0]))
            k = int(torch.searchsorted(tau_steps, torch.tensor(tau, dtype=torch.float64), right=True)) - 1
            k = min(max(k, 0), len(tau_steps) - 2)
        h = sign * float(tau_steps[k + 1] - tau_steps[k])
        state = _state_at(solver, times, tau_out, parts, is_tuple, sign, tau)
        time = torch.tensor(sign * tau, dtype=parts[0].dtype)   # func gets t in the state's dtype, as in solves
        estimate = embedded_error_estimate(solver.func, time, state, h, method=method,
                                           rtol=solver.rtol, atol=solver.atol)
        total = total + abs(h) * estimate
        drawn.append(LocalErrorSample(sign * tau, h, float(estimate.detach())))
    value = total / samples
    return (value, drawn) if return_samples else value


def _state_at(solver, times, tau_out, parts, is_tuple, sign, tau):
    """The state at ``tau`` (increasing time) held constant: an output row, or a no-grad re-solve from
    the last output row at or before it."""
    i = int(torch.searchsorted(tau_out, torch.tensor(tau, dtype=torch.float64), right=True)) - 1
    i = min(max(i, 0), len(tau_out) - 1)
    start = tuple(p[i].detach() for p in parts)
    if abs(float(tau_out[i]) - tau) <= 1e-14 * max(1.0, abs(tau)):
        return start if is_tuple else start[0]
    span = torch.tensor([float(times[i]), sign * tau], dtype=times.dtype)
    with torch.no_grad():
        out = _resolver(solver)(start if is_tuple else start[0], span)
    return tuple(o[-1] for o in out) if is_tuple else out[-1]


def _step(dt) -> float:
    try:
        value = float(dt)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"dt must be a number (the step size), got {type(dt).__name__}") from None
    if value == 0.0 or value != value or abs(value) == float("inf"):
        raise InvalidArgumentError(f"dt must be a finite non-zero step size, got {dt!r}")
    return value


def _tolerance(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a non-negative number, got {value!r}") from None
    if not number >= 0.0 or number == float("inf"):
        raise InvalidArgumentError(f"{name} must be a non-negative finite number, got {value!r}")
    return number

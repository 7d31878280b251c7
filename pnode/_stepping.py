"""Step control and the bookkeeping of one pass over the time grid.

* :class:`Pass`: the state of one forward pass or replay (the loop state, in one object): the step plan
  or the output times to land on, where outputs go, the step number at each output time, and the
  accepted step times.
* Step control: :meth:`Pass.next_step` lands adaptive steps on the output times (stretching by at most
  1%) or follows a plan of recorded step times; :func:`first_step` is the initial step heuristic.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ._timegrid import constructed_grid, fixed_step_times, same_time_tolerance
from .errors import NonFiniteError

LAND_STRETCH = 1.01    # a step within 1% of an output time is stretched to land on it


class Pass:
    """One pass over the time grid.

    ``taus``: increasing output times; ``outputs``: a ``(len(taus), N)`` tensor filled at each output
    time (``None`` for replays, which do not capture); ``plan``: step boundaries to follow exactly
    (fixed steps, replays) or ``None`` (the adaptor chooses, landing on output times)."""

    def __init__(self, taus: np.ndarray | None, outputs: torch.Tensor | None, plan: np.ndarray | None,
                 event=None):
        self.taus = taus
        self.outputs = outputs
        self.plan = plan
        self.event = event               # terminal event functions (an EventSpec) or None
        self.event_index: int | None = None
        self.landmarks: tuple[float, ...] = ()   # step_t / jump_t: adaptive steps land on them too
        self.capturing = outputs is not None
        # options['min_step'] (adaptive solves): a step never shrinks below it to land on an output time;
        # it steps past, and the outputs it passes are interpolated (their indices kept in ``interpolated``)
        self.min_step: float | None = None
        self.interpolated: list[int] = []
        self.step_start: tuple[float, torch.Tensor] | None = None   # (tau_n, y_n) of the step being taken
        self.next_output = 1
        self.output_steps = [0]
        self.step_times = [float(taus[0])] if taus is not None else []

    # --- step control (pre-step) ------------------------------------------------------------
    def next_step(self, step: int, tau: float, proposed: float) -> float | None:
        """The step to take from ``tau`` at step number ``step``, or ``None`` to keep PETSc's proposal."""
        if self.plan is not None:
            return float(self.plan[step + 1] - self.plan[step])
        target = self.taus[self.next_output]
        if self.landmarks:
            ahead = [m for m in self.landmarks if m > tau + same_time_tolerance(tau)]
            target = min(target, ahead[0]) if ahead else target
        remaining = float(target - tau)
        min_step = self.min_step
        if tau + LAND_STRETCH * proposed >= target:
            if min_step is not None and remaining < min_step and self.next_output < len(self.taus) - 1:
                return None          # step past this output time (it is interpolated), as torchdiffeq does
            return remaining
        if min_step is not None and remaining - proposed < min_step <= remaining / 2:
            return remaining / 2     # leave no stub shorter than min_step before the output time
        return None

    def passed_outputs(self, tau: float) -> list[int]:
        """Output times strictly inside the step that just ended at ``tau`` (``min_step`` stepped past them)."""
        found, i = [], self.next_output
        while i < len(self.taus) and self.taus[i] < tau - same_time_tolerance(tau):
            found.append(i)
            i += 1
        return found

    # --- bookkeeping (post-step) --------------------------------------------------------------
    def at_output(self, tau: float) -> bool:
        target = self.taus[self.next_output]
        return abs(tau - target) <= same_time_tolerance(target)

    def record_output(self, step: int, solution: torch.Tensor) -> bool:
        """Store the solution at the current output time; True once the last one is stored."""
        self.outputs[self.next_output].copy_(solution)
        self.output_steps.append(step)
        self.next_output += 1
        return self.next_output == len(self.taus)

    @property
    def finished(self) -> bool:
        return self.next_output >= len(self.taus)


def fixed_grid(grid_constructor, func: Callable, spec, y0: torch.Tensor, taus: np.ndarray,
               step: float | None) -> np.ndarray:
    """Step boundaries of a fixed-grid solve: ``options['grid_constructor']``'s, or steps of ``step``
    (one per output interval without one), output times inserted."""
    if grid_constructor is None:
        return fixed_step_times(taus, step)
    t_user = torch.from_numpy(taus * spec.sign).to(spec.time_dtype)
    grid = grid_constructor(func, spec.layout.unflatten(y0), t_user)
    return constructed_grid(grid, float(taus[0]), float(taus[-1]), taus, spec.sign)


def plan_output_steps(plan: np.ndarray, taus: np.ndarray) -> list[int]:
    """The step number of each output time in a step plan that contains them all."""
    return [int(i) for i in np.searchsorted(plan, taus)]


def first_step(evaluate: Callable[[float, torch.Tensor], torch.Tensor],
               rms: Callable[..., list[float]], y0: torch.Tensor, taus: np.ndarray, order: int,
               rtol: float, atol: float, sign: float = 1.0) -> float:
    """Initial step of an adaptive solve: Hairer & Wanner's heuristic (II.4), as torchdiffeq and SciPy
    use, capped by the first output interval.  ``evaluate(tau, y)`` is the vector field (rank-local) and
    ``rms(*xs)`` the root-mean-square of each (distributed) tensor in one reduction."""
    span = float(taus[1] - taus[0])
    scale = atol + rtol * y0.abs()
    f0 = evaluate(float(taus[0]), y0)
    d0, d1 = rms(y0 / scale, f0 / scale)
    if not (math.isfinite(d0) and math.isfinite(d1)):     # global sums: every rank raises alike
        t0 = sign * float(taus[0])
        raise NonFiniteError(
            f"the {'initial state' if not math.isfinite(d0) else 'vector field at the initial state'} is NaN or "
            "Inf; check y0 and the model (e.g. for overflow)", reason="NONFINITE", time=t0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = evaluate(float(taus[0]) + h0, y0 + h0 * f0)
    (d2,) = rms((f1 - f0) / scale)
    d2 /= h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, span)


def rms_all(group_sum: Callable[[np.ndarray], np.ndarray], *xs: torch.Tensor) -> list[float]:
    """Root-mean-square of each tensor, its squares and count summed by ``group_sum`` (all ranks)."""
    sums = group_sum(np.array([float(torch.dot(x, x)) for x in xs] + [xs[0].numel()]))
    return [math.sqrt(v / max(sums[-1], 1.0)) for v in sums[:-1]]


class StepCallbacks:
    """torchdiffeq's step hooks on ``func``: ``callback_step(t0, y0, dt)`` for every step attempt, then
    ``callback_accept_step`` or ``callback_reject_step`` (adaptive methods), and the ``*_adjoint``
    variants for each step of the backward pass (which accepts every step; its ``y0`` is the adjoint
    state ``dL/dy`` there).

    PETSc has no hook per attempt, so the attempts are recognised from the (time, step) pairs the
    vector field is evaluated at, and the hooks are called, in attempt order, when the step completes."""

    FORWARD = ("callback_step", "callback_accept_step", "callback_reject_step")
    ADJOINT = ("callback_step_adjoint", "callback_accept_step_adjoint", "callback_reject_step_adjoint")

    def __init__(self, hooks: dict[str, Callable]):
        self.hooks = hooks
        self.attempts: list[tuple[float, float]] = []
        self.adjoint_step: tuple[float, float] | None = None

    @classmethod
    def of(cls, func: object, adaptive: bool) -> StepCallbacks | None:
        hooks = {name: getattr(func, name) for name in cls.FORWARD + cls.ADJOINT if callable(getattr(func, name, None))}
        if not adaptive:
            ignored = [name for name in hooks if "accept" in name or "reject" in name]
            if ignored:
                warnings.warn(f"{', '.join(ignored)} on func are never called: a fixed-grid method accepts every "
                              "step (only callback_step and callback_step_adjoint are)", stacklevel=5)
        return cls(hooks) if hooks else None

    def _call(self, name: str, *args) -> None:
        hook = self.hooks.get(name)
        if hook is not None:
            hook(*args)

    def saw(self, now: float, dt: float) -> None:
        """A forward evaluation inside the attempt of step ``dt`` from ``now``."""
        if not self.attempts or self.attempts[-1] != (now, dt):
            self.attempts.append((now, dt))

    def step_done(self, start_state, sign: float, adaptive: bool) -> None:
        attempts, self.attempts = self.attempts, []
        for i, (now, dt) in enumerate(attempts):
            t0, h = torch.tensor(sign * now), torch.tensor(sign * dt)
            self._call("callback_step", t0, start_state, h)
            if adaptive:
                self._call("callback_accept_step" if i == len(attempts) - 1 else "callback_reject_step",
                           t0, start_state, h)

    def saw_adjoint(self, now: float, dt: float, sign: float, adjoint_state: Callable) -> None:
        """An adjoint evaluation in the backward step ``dt`` from ``now``; a new pair is a new step."""
        if self.adjoint_step != (now, dt):
            self.adjoint_step = (now, dt)
            t0, h, lam = torch.tensor(sign * now), torch.tensor(sign * dt), adjoint_state()
            self._call("callback_step_adjoint", t0, lam, h)
            self._call("callback_accept_step_adjoint", t0, lam, h)

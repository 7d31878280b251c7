"""Step control and the bookkeeping of one pass over the time grid.

* :class:`Pass`: the state of one forward pass or replay (the loop state, in one object): the step plan
  or the output times to land on, where outputs go, the step number at each output time, and the
  accepted step times.
* Step control: :meth:`Pass.next_step` lands adaptive steps on the output times (stretching by at most
  1%) or follows a plan of recorded step times; :func:`first_step` is the initial step heuristic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ._timegrid import same_time_tolerance

LAND_STRETCH = 1.01    # a step within 1% of an output time is stretched to land on it


class Pass:
    """One pass over the time grid.

    ``taus``: increasing output times; ``outputs``: a ``(len(taus), N)`` tensor filled at each output
    time (``None`` for replays, which do not capture); ``plan``: step boundaries to follow exactly
    (fixed steps, replays) or ``None`` (the adaptor chooses, landing on output times)."""

    def __init__(self, taus: np.ndarray, outputs: torch.Tensor | None, plan: np.ndarray | None):
        self.taus = taus
        self.outputs = outputs
        self.plan = plan
        self.capturing = outputs is not None
        self.next_output = 1
        self.output_steps = [0]
        self.step_times = [float(taus[0])] if taus is not None else []

    # --- step control (pre-step) ------------------------------------------------------------
    def next_step(self, step: int, tau: float, proposed: float) -> float | None:
        """The step to take from ``tau`` at step number ``step``, or ``None`` to keep PETSc's proposal."""
        if self.plan is not None:
            return float(self.plan[step + 1] - self.plan[step])
        target = self.taus[self.next_output]
        if tau + LAND_STRETCH * proposed >= target:
            return float(target - tau)
        return None

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


def plan_output_steps(plan: np.ndarray, taus: np.ndarray) -> list[int]:
    """The step number of each output time in a step plan that contains them all."""
    return [int(i) for i in np.searchsorted(plan, taus)]


def first_step(evaluate: Callable[[float, torch.Tensor], torch.Tensor],
               rms: Callable[..., list[float]], y0: torch.Tensor, taus: np.ndarray, order: int,
               rtol: float, atol: float) -> float:
    """Initial step of an adaptive solve: Hairer & Wanner's heuristic (II.4), as torchdiffeq and SciPy
    use, capped by the first output interval.  ``evaluate(tau, y)`` is the vector field (rank-local) and
    ``rms(*xs)`` the root-mean-square of each (distributed) tensor in one reduction."""
    span = float(taus[1] - taus[0])
    scale = atol + rtol * y0.abs()
    f0 = evaluate(float(taus[0]), y0)
    d0, d1 = rms(y0 / scale, f0 / scale)
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

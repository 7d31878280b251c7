"""Validation of output times and construction of fixed step grids."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InvalidArgumentError

# Two times closer than this many ulps of their magnitude are the same time (rounding, not a step).
_SAME_TIME_ULPS = 64


def same_time_tolerance(scale: float) -> float:
    return _SAME_TIME_ULPS * np.finfo(np.float64).eps * max(1.0, abs(scale))


def check_times(t: torch.Tensor) -> tuple[np.ndarray, float]:
    """Validate ``t`` and return it as increasing float64 ``tau = sign * t`` plus the sign."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"t must be a 1-D torch.Tensor of output times, got {type(t).__name__}")
    if t.dim() != 1 or t.numel() < 1:
        raise InvalidArgumentError(f"t must be a non-empty 1-D tensor of output times, got shape {tuple(t.shape)}")
    if t.device.type == "meta":
        raise InvalidArgumentError(
            "t is on the 'meta' device (shape only, no values); pass the output times as a real tensor, "
            "e.g. torch.linspace(0, 1, 10)")
    if not t.is_floating_point():
        raise InvalidArgumentError(f"t must be a floating-point tensor, got dtype {t.dtype}; use t.double()")
    times = t.detach().to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(times)):
        raise InvalidArgumentError("t contains NaN or Inf; output times must be finite")
    if times.size == 1:
        return times, 1.0
    steps = np.diff(times)
    if np.all(steps > 0):
        return times, 1.0
    if np.all(steps < 0):
        return -times, -1.0
    bad = int(np.argmax(steps <= 0) if steps[0] > 0 else np.argmax(steps >= 0))
    raise InvalidArgumentError(
        f"t must be strictly increasing or strictly decreasing; t[{bad}]={times[bad]!r} and "
        f"t[{bad + 1}]={times[bad + 1]!r} break the order (repeated times are not allowed either)")


def fixed_step_times(taus: np.ndarray, step_size: float | None) -> np.ndarray:
    """Step boundaries of a fixed-step solve over increasing output times ``taus``.

    Without ``step_size`` one step per output interval (torchdiffeq's fixed-grid convention).  With it,
    steps of ``step_size`` from ``taus[0]`` with every output time inserted as a step boundary (so outputs
    are exact scheme values, never interpolated); a grid point within rounding of an output time merges
    into it.
    """
    if step_size is None or taus.size < 2:
        return taus.copy()
    t0, t_end = float(taus[0]), float(taus[-1])
    n_grid = math.floor((t_end - t0) / step_size + 1e-9)
    grid = t0 + step_size * np.arange(1, n_grid + 1, dtype=np.float64)
    merged = np.union1d(grid[grid < t_end], taus)
    # merge points closer than a tiny fraction of a step into the output time next to them
    keep = np.ones(merged.size, dtype=bool)
    is_output = np.isin(merged, taus)
    gap = 1e-9 * step_size
    for i in range(1, merged.size):
        if merged[i] - merged[i - 1] < gap:
            keep[i if not is_output[i] else i - 1] = False
    return merged[keep]


def constructed_grid(grid, t0: float, t_end: float, taus: np.ndarray, sign: float) -> np.ndarray:
    """A user's step grid (``options['grid_constructor']``, user time) as increasing integration times
    with the output times inserted; it must run from ``t[0]`` to ``t[-1]``."""
    if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
        raise InvalidArgumentError("options['grid_constructor'] must return a 1-D tensor of at least two times, got "
                                   f"{grid!r}")
    values = sign * grid.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.diff(values) > 0):
        raise InvalidArgumentError("options['grid_constructor'] returned times that are not strictly monotone in the "
                                   "direction of t")
    if abs(values[0] - t0) > same_time_tolerance(t0) or abs(values[-1] - t_end) > same_time_tolerance(t_end):
        raise InvalidArgumentError(f"options['grid_constructor'] must return a grid from t[0]={sign * t0} to "
                                   f"t[-1]={sign * t_end}, got {sign * values[0]} .. {sign * values[-1]}")
    merged = np.union1d(values[1:-1], taus)
    keep = np.ones(merged.size, dtype=bool)
    is_output = np.isin(merged, taus)
    for i in range(1, merged.size):
        if merged[i] - merged[i - 1] <= same_time_tolerance(merged[i]):
            keep[i if not is_output[i] else i - 1] = False
    return merged[keep]

"""``options["norm"]``: torchdiffeq's error norm of the step-size controller, on PETSc's adaptor.

torchdiffeq accepts a step when ``norm(err / tol) <= 1`` (``tol = atol + rtol * max(|y0|, |y1|)``) for any
Python callable ``norm``.  PETSc's TSAdapt computes its own weighted norm of the same ratio, the RMS
(``-ts_adapt_wnormtype 2``) or the max norm (``infinity``), with a tolerance per component, and offers no
hook for a Python norm (petsc4py 3.26 has no TSAdapt object).  Every norm of the forms

* ``sqrt(sum_i (a_i x_i)^2)`` (torchdiffeq's default RMS: ``a_i = 1/sqrt(n)``; any scale, any subset of
  the state, e.g. one tensor of a tuple state), or
* ``max_i a_i |x_i|`` (the max norm, scaled or restricted likewise),

is exactly one of PETSc's weighted norms with the tolerances of component ``i`` divided by ``a_i sqrt(n)``
(RMS) or ``a_i`` (max), and a component with ``a_i = 0`` left out (an unbounded tolerance).  pnode learns
``a_i`` by calling the norm on the unit vectors (on states of at most ``UNIT_PROBES`` components; larger
states: the uniform forms ``c * rms`` and ``c * max`` only) and checks the form on random probes; a norm
of another form raises :class:`~pnode.errors.InvalidArgumentError` (it cannot steer PETSc's adaptor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._bridge import StateLayout
from .errors import InvalidArgumentError

UNIT_PROBES = 4096        # states up to this size have their per-component weights probed
UNBOUNDED = 1e300          # the tolerance of a component the norm ignores


@dataclass(frozen=True)
class ErrorNorm:
    """A norm identified as PETSc's weighted RMS (``kind="2"``) or max norm (``"infinity"``) with the
    per-component weights ``a_i`` (see the module docstring)."""

    kind: str
    weights: np.ndarray

    def tolerances(self, rtol: float, atol: float) -> tuple[float | np.ndarray, float | np.ndarray]:
        """PETSc's ``(rtol, atol)``: scalars if the weights are uniform, else one per component."""
        n = self.weights.size
        scale = self.weights * math.sqrt(n) if self.kind == "2" else self.weights
        with np.errstate(divide="ignore"):
            factor = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), UNBOUNDED)
        if np.all(factor == factor[0]):
            return rtol * float(factor[0]), atol * float(factor[0])
        return np.minimum(rtol * factor, UNBOUNDED), np.minimum(atol * factor, UNBOUNDED)


def identify(norm: Callable, layout: StateLayout) -> ErrorNorm:
    """Which of PETSc's weighted norms ``norm`` is (on states laid out as ``layout``)."""
    n = layout.size
    generator = np.random.default_rng(20261201)

    def measure(flat: np.ndarray) -> float:
        value = norm(layout.unflatten(torch.from_numpy(flat)))
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(f"options['norm'] must return a number (a 0-dim tensor), got {value!r}") \
                from None

    if n <= UNIT_PROBES:
        weights = np.array([measure(np.eye(1, n, i)[0]) for i in range(n)])
        candidates = {"2": weights, "infinity": weights}
    else:
        c = measure(np.ones(n))
        candidates = {"2": np.full(n, c / math.sqrt(n)), "infinity": np.full(n, c)}
    weights = candidates["2"]
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not np.any(weights > 0):
        raise InvalidArgumentError("options['norm'] must be a norm: it is negative, infinite or NaN on a unit vector, "
                                   "or zero on every one")
    # random probes with entries spread over four orders of magnitude (a sum and a max then differ)
    probes = [np.ones(n)] + [generator.standard_normal(n) * np.exp(generator.uniform(-2, 2, n)) for _ in range(3)]
    given = [measure(p) for p in probes]
    tolerance = 1e-10 if layout.dtype == torch.float64 else 1e-5
    forms = {"2": lambda w, x: math.sqrt(float(np.sum((w * x) ** 2))),
             "infinity": lambda w, x: float(np.max(np.abs(w * x)))}
    for kind in ("2", "infinity"):
        expected = [forms[kind](candidates[kind], p) for p in probes]
        if all(abs(g - e) <= tolerance * max(abs(e), 1e-300) for g, e in zip(given, expected)):
            return ErrorNorm(kind, candidates[kind])
    raise InvalidArgumentError(
        "options['norm'] is neither a weighted RMS norm sqrt(sum (a_i x_i)^2) nor a weighted max norm "
        "max a_i |x_i| of the state (checked on probe vectors): PETSc's step-size adaptor computes one of those two "
        "(-ts_adapt_wnormtype 2 or infinity, with a tolerance per component) and has no hook for another Python "
        "norm; express the norm as one of them (e.g. torchdiffeq's default RMS, or the max norm)")

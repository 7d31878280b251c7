"""The adjoint's per-stage work in batches: stage Jacobians evaluated ahead for many stages at once, and
parameter VJPs deferred and done in one pass.

TSAdjoint visits the stages one by one and asks, at each, for the stage Jacobian (its transposed solve
needs it now) and for parameter VJPs ``(dF/dtheta)^T c`` (which only add into the parameter gradient
``mu``).  For small and medium states each of those is a few torch calls whose cost is the call, not the
arithmetic, so the adjoint costs a fixed time per stage.  Two things make it a few batched calls instead:

* :class:`StagePoints`: the forward pass records each accepted step's stage states (the converged
  Newton iterates), so before TSAdjoint reverses a run of steps the Jacobians at all their stages come
  from one vectorized pass (:meth:`~pnode._field.VectorField.jacobian_blocks_many`); TSAdjoint's
  Jacobian callbacks then find them (by exact state).  A stage not found is evaluated as before.
* :class:`ParamProbes`: a parameter VJP is deferred.  The callback writes, instead of the VJP, a unit
  vector in a *probe* entry appended to the parameter space, and keeps the cotangent.  PETSc only
  combines these outputs linearly into ``mu`` (``mu += coefficient * Jp^T c``), so afterwards the probe
  entry holds exactly the coefficient PETSc applied; the gradient is then ``sum_k coefficient_k *
  (dF/dtheta)^T c_k`` in one batched VJP over the stage points (:meth:`ParamProbes.settle`).  Nothing
  about PETSc's order of calls or coefficients is assumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._timegrid import same_time_tolerance

if TYPE_CHECKING:
    from ._bridge import ParamLayout
    from ._field import VectorField

# one vectorized pass holds at most this many state entries (stages x Jacobian rows x unknowns): its
# transient graph is this times the field's activations per entry (about 10 MiB for a 16-wide MLP)
BATCH_ENTRIES = 1 << 16
# Jacobian blocks evaluated ahead of TSAdjoint at once: at most this many entries (8 MiB)
PREPARED_ENTRIES = 1 << 20
# stage states are recorded only where one stage's Jacobian rows (rows x unknowns) are at most this
RECORD_ENTRIES = 1 << 13
# deferred parameter cotangents held at once: at most this many probes, and this many float64 entries
MAX_PROBES = 4096
PROBE_ENTRIES = 1 << 20


def fingerprint(x: np.ndarray) -> bytes:
    """A cheap key for a state: a few of its entries (a lookup then compares the whole state)."""
    return x[:: max(1, x.size // 8)].tobytes()


class PointTable:
    """Values kept per stage point ``(tau, x)``, found again by the exact state.  The adjoint reads its
    stages back from PETSc's trajectory, bitwise the forward's states, but recomputes the stage times
    from the step's end: those may differ by rounding, so times match within a few ulps."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, list[tuple[float, np.ndarray, object]]] = {}

    def add(self, tau: float, x: np.ndarray, value) -> None:
        self._by_key.setdefault(fingerprint(x), []).append((tau, x, value))

    def find(self, tau: float, x: np.ndarray):
        """The value kept at ``(tau, x)``, or None."""
        for kept_tau, kept_x, value in self._by_key.get(fingerprint(x), ()):
            if abs(kept_tau - tau) <= same_time_tolerance(tau) and np.array_equal(kept_x, x):
                return value
        return None

    def clear(self) -> None:
        self._by_key.clear()

    def __bool__(self) -> bool:
        return bool(self._by_key)


class StagePoints:
    """The stage states of the forward steps whose trajectory PETSc keeps for the adjoint, by step.

    A step's list starts with its start state (the first stage of the ESDIRK/ARKIMEX tableaux is
    explicit: its state is the step's start) and gets every converged stage solve; a rejected attempt's
    stages stay in the list (they only cost a Jacobian that nobody asks for)."""

    def __init__(self) -> None:
        self.recording = False
        self.by_step: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._current: list[tuple[float, np.ndarray]] | None = None

    def start_step(self, step: int, tau: float, state: np.ndarray) -> None:
        if not self.recording:
            self._current = None
            return
        self._current = self.by_step[step] = [(tau, state.copy())]

    def add(self, tau: float, state: np.ndarray) -> None:
        if self._current is not None:
            self._current.append((tau, state.copy()))

    def clear(self) -> None:
        self.by_step.clear()
        self._current = None


class ParamProbes:
    """Parameter VJPs of one adjoint sweep, deferred (see the module's docstring).

    The parameter space PETSc sees is ``n_params`` real entries followed by :attr:`capacity` probe
    entries.  A full set of probes falls back to computing the VJP at once (``defer`` returns False)."""

    def __init__(self, n_params: int, n_local: int, enabled: bool = True):
        self.n_params = n_params
        self.capacity = min(MAX_PROBES, PROBE_ENTRIES // max(1, n_local)) if n_params and enabled else 0
        self._points: list[tuple[float, torch.Tensor]] = []
        self._cotangents: list[tuple[int, np.ndarray]] = []     # (point index, cotangent) per probe

    def defer(self, point: tuple[float, torch.Tensor], cotangent: np.ndarray, out: np.ndarray) -> bool:
        """Keep ``(point, cotangent)`` and write the next probe's unit vector into ``out``; False when
        no probe is left."""
        j = len(self._cotangents)
        if j >= self.capacity:
            return False
        if not self._points or self._points[-1] is not point:
            self._points.append(point)
        self._cotangents.append((len(self._points) - 1, cotangent.copy()))
        out[:] = 0.0
        out[self.n_params + j] = 1.0
        return True

    @property
    def pending(self) -> int:
        return len(self._cotangents)

    @property
    def half_full(self) -> bool:
        return 2 * len(self._cotangents) > self.capacity

    def settle(self, mu: np.ndarray, field: VectorField, layout: ParamLayout, scale: float) -> None:
        """``mu[:n_params] += scale * sum_k mu[probe k] * (dg/dtheta)^T c_k``; the probes are reset."""
        if not self._cotangents:
            return
        n_params = self.n_params
        coefficients = mu[n_params:n_params + len(self._cotangents)].copy()
        weights = np.zeros((len(self._points), self._cotangents[0][1].size))
        for (i, cotangent), coefficient in zip(self._cotangents, coefficients):
            if coefficient:
                weights[i] += coefficient * cotangent
        grads = field.param_vjps(self._points, torch.from_numpy(weights))
        mu[n_params:n_params + len(self._cotangents)] = 0.0
        self.clear()
        for (lo, hi), g in zip(layout.slices, grads):
            if g is not None:
                mu[lo:hi] += scale * g.detach().reshape(-1).to(torch.float64).numpy()

    def clear(self) -> None:
        self._points = []
        self._cotangents = []

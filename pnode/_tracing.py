"""``options['trace']``: the user's ``func`` compiled by ``torch.jit.trace`` for the solver's evaluations
without autograd.

For a small field most of an evaluation's time is Python: ``nn.Module`` calls and torch's per-operation
dispatch.  A traced function runs the recorded operations in TorchScript's interpreter instead (measured
on ``benchmarks/stiff.py``'s 3-16-3 field at batch 4: 39 against 20 us per call).  A trace records one
run, so it is only right for a ``func`` whose operations do not depend on the values it is given; two
guards keep a wrong trace from being used:

* tracing that reports a conversion of a tensor to a Python value (``torch.jit.TracerWarning``: a Python
  branch on a tensor, ``float(t)``) is refused: ``func`` is then called as it is, with one warning;
* at every solve's first evaluation the traced output is compared with ``func``'s own, bitwise; a
  difference (the parameters were replaced by new tensors, the model changed) retraces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    return False


class TracedCall:
    """``func(t, state)`` through its trace, checked once per solve (``generation`` changes per solve)."""

    def __init__(self, func: Callable):
        self.func = func
        self.refused: str | None = None       # why func is not traced
        self._traced: Callable | None = None
        self._checked = None                  # the generation whose first evaluation was compared

    def __call__(self, t: torch.Tensor, state, generation: int):
        if self.refused is not None:
            return self.func(t, state)
        if generation != self._checked or self._traced is None:
            self._checked = generation
            eager = self.func(t, state)
            if self._traced is None or not _same(self._traced(t, state), eager):
                self._traced = self._trace(t, state, eager)
            return eager
        return self._traced(t, state)

    def _trace(self, t: torch.Tensor, state, eager) -> Callable | None:
        reason = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                traced = torch.jit.trace(self.func, (t, state), check_trace=False)
            except Exception as error:  # noqa: BLE001 - anything tracing rejects: evaluate eagerly
                traced, reason = None, f"torch.jit.trace failed: {type(error).__name__}: {error}"
        conversions = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if reason is None and conversions:
            reason = f"tracing reported: {str(conversions[0].message).splitlines()[0]}"
        if reason is None and not _same(traced(t, state), eager):
            reason = "the traced function's output differs from func's"
        if reason is not None:
            self.refused = reason
            warnings.warn(f"options['trace']: func is evaluated without tracing ({reason})", RuntimeWarning,
                          stacklevel=2)
            return None
        return traced

"""The immutable description of one solve, built once per call and passed down unchanged."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._bridge import ParamLayout, StateLayout

if TYPE_CHECKING:
    from ._events import EventSpec


@dataclass(frozen=True, eq=False)
class SolveSpec:
    """Everything one call of a solver fixes: built by the API from the arguments, read by the driver
    (which hands the vector field what its callbacks need at entry) and by the autograd function.

    Attributes
    ----------
    layout, param_layout:
        How the state and the parameters map onto PETSc's flat vectors.
    params:
        The tensors the vector field depends on that receive gradients.
    taus:
        Output times in integration time ``tau = sign * t`` (strictly increasing, read-only).
    sign:
        ``+1.0`` for increasing ``t``, ``-1.0`` for decreasing (integrated as ``g(tau, y) = -f(-tau, y)``).
    time_dtype:
        The dtype the vector field receives its time in: the state's (as torchdiffeq casts ``t``), so a
        float32 model given float64 output times is not promoted to float64.
    needs_grad:
        Whether the forward pass must prepare a backward pass.
    event:
        Terminal event functions (then ``taus`` is ``[tau0, inf]``: the solve ends at the event).
    """

    layout: StateLayout
    param_layout: ParamLayout
    params: tuple[torch.Tensor, ...]
    taus: np.ndarray
    sign: float
    time_dtype: torch.dtype
    needs_grad: bool
    event: EventSpec | None = None

    def __post_init__(self):
        self.taus.flags.writeable = False

    def without_gradient(self) -> SolveSpec:
        """The same solve, preparing no backward pass (forward-only methods)."""
        return replace(self, needs_grad=False)

    @property
    def shape_key(self) -> tuple:
        """What the PETSc objects depend on: equal keys can reuse them."""
        return (self.layout.shapes, self.layout.dtype, self.param_layout, self.time_dtype,
                None if self.event is None else self.event.count)

    def user_time(self, tau: float) -> float:
        return self.sign * tau

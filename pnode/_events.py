"""Terminal events: solve until ``event_fn(t, y)`` crosses zero, with gradients through the event time.

PETSc's TSEvent locates the crossing (steps are cut until the indicator is within its tolerance of zero,
so the event state is a scheme value at a step boundary) and the discrete adjoint differentiates the
solution at that time.  PETSc's adjoint applies no event-time sensitivity, so pnode adds it by the
implicit function theorem: with ``c(t_e, y(t_e)) = 0``, ``D = dc/dt + dc/dy . f(t_e, y_e)`` and a loss
``L(t_e, y_e)``, the cotangent of ``y_e`` at fixed time becomes ``dL/dy - (G / D) dc/dy`` with
``G = dL/dt + dL/dy . f(t_e, y_e)``, and ``event_fn``'s own parameters get ``-(G / D) dc/dphi``.
Several event functions (``event_fn`` returning a tensor of several values) stop at the first crossing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ._bridge import StateLayout
from .errors import InvalidArgumentError

EVENT_TOLERANCE = 1e-12   # |event_fn| at the located event (PETSc's -ts_event_tol overrides it)


@dataclass(frozen=True, eq=False)
class EventSpec:
    """The event functions of one solve: ``fn(t, y)`` in the user's layout, ``count`` values."""

    fn: Callable
    count: int
    params: tuple[torch.Tensor, ...]
    horizon: bool = False      # stop at t[1] if no event comes first (else t[1] is ignored, as torchdiffeq)

    @classmethod
    def of(cls, event_fn: Callable, t0: torch.Tensor, y0, layout: StateLayout, horizon: bool = False) -> EventSpec:
        if not callable(event_fn):
            raise InvalidArgumentError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
        params = tuple(p for p in event_fn.parameters() if p.requires_grad) if isinstance(event_fn, nn.Module) \
            else ()
        state = tuple(p.detach() for p in y0) if layout.is_tuple else y0.detach()
        with torch.enable_grad():
            value = event_fn(t0.detach().to(layout.dtype), state)
        if not isinstance(value, torch.Tensor) or value.numel() < 1:
            raise InvalidArgumentError("event_fn must return a tensor (one value per event function), got "
                                       f"{type(value).__name__}")
        if value.requires_grad and not params and torch.is_grad_enabled():
            warnings.warn(
                "event_fn depends on tensors that require grad but is not an nn.Module holding them: they are "
                "treated as constants when differentiating the event time (as torchdiffeq does); make event_fn "
                "an nn.Module with them as parameters to differentiate them", stacklevel=4)
        return cls(event_fn, value.numel(), params, horizon)

    def values(self, t: torch.Tensor, state) -> torch.Tensor:
        return self.fn(t, state).reshape(-1)


class EventGradient(torch.autograd.Function):
    """Identity on ``(event_t, y_e)`` whose backward reroutes the event time's dependence (see module)."""

    @staticmethod
    def forward(ctx, func, event: EventSpec, index: int, layout: StateLayout, event_t, y_e_flat, *params):
        ctx.func, ctx.event, ctx.index, ctx.layout = func, event, index, layout
        ctx.save_for_backward(event_t, y_e_flat)
        return event_t.clone(), y_e_flat.clone()

    @staticmethod
    def backward(ctx, grad_t, grad_y):
        event_t, y_e = ctx.saved_tensors
        layout, event = ctx.layout, ctx.event
        with torch.no_grad():
            f = layout.flatten(ctx.func(event_t.to(layout.dtype), layout.unflatten(y_e)))
        with torch.enable_grad():
            t = event_t.detach().to(torch.float64).requires_grad_()
            y = y_e.detach().requires_grad_()
            c = event.values(t.to(layout.dtype), layout.unflatten(y))[ctx.index]
            grads = torch.autograd.grad(c, (t, y, *event.params), allow_unused=True)
        c_t, c_y = (g if g is not None else torch.zeros_like(x) for g, x in zip(grads[:2], (t, y)))
        grad_t = torch.zeros((), dtype=torch.float64) if grad_t is None else grad_t.to(torch.float64)
        grad_y = torch.zeros_like(y_e) if grad_y is None else grad_y.to(torch.float64)
        slope = c_t + torch.dot(c_y, f)          # dc/dt along the trajectory at the event
        if slope == 0:
            raise InvalidArgumentError("event_fn is tangent to the trajectory at the event (dc/dt = 0): the "
                                       "event time has no derivative there")
        ratio = (grad_t + torch.dot(grad_y, f)) / slope
        param_grads = [None if g is None else (-ratio * g).to(p.dtype) for g, p in zip(grads[2:], event.params)]
        return (None, None, None, None, None, grad_y - ratio * c_y, *param_grads)

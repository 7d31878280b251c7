"""The ``torch.autograd.Function`` that makes ``loss.backward()`` run PETSc's TSAdjoint."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .errors import BackwardError


class OdeintFunction(torch.autograd.Function):
    """forward(session, t, y0_flat, *params) -> outputs (len(t), N) float64.

    ``session`` (a :class:`pnode.api._Session`) holds the driver and what the backward pass needs.
    """

    @staticmethod
    def forward(ctx, session, t, y0_flat, *params):
        outputs, record = session.solve(y0_flat.detach(), keep_trajectory=True)
        ctx.session = session
        ctx.record = record
        ctx.versions = [p._version for p in params]
        ctx.params = params
        ctx.t_needs_grad = t.requires_grad
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs):
        for p, version in zip(ctx.params, ctx.versions):
            if p._version != version:
                raise BackwardError(
                    "a parameter of the vector field was modified in place between the forward solve and "
                    "backward() (for example optimizer.step() before loss.backward()); call backward() "
                    "before changing the parameters")
        (outputs,) = ctx.saved_tensors
        session = ctx.session
        grad_outputs = grad_outputs.to(torch.float64).contiguous()
        grad_y0, grad_params = session.adjoint(ctx.record, grad_outputs)
        grad_t = session.time_gradient(outputs, grad_outputs, grad_y0) if ctx.t_needs_grad else None
        return (None, grad_t, grad_y0, *grad_params)

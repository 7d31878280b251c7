"""The ``torch.autograd.Function`` that makes ``loss.backward()`` run PETSc's TSAdjoint.

It calls the driver in both directions and nothing else: forward solves and records, backward runs the
discrete adjoint of that record.  The graph holds a :class:`~pnode._driver.Lease` on the driver, so the
driver's PETSc objects live while a backward pass may still need them, and are freed as soon as the
graph is (after ``backward()``, or when the outputs are dropped unused) if nothing else holds them.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .errors import AdjointNotAvailableError, BackwardError


class OdeintFunction(torch.autograd.Function):
    """forward(driver, spec, lease, t, y0_flat, *params) -> outputs (len(t), N) float64."""

    @staticmethod
    def forward(ctx, driver, spec, lease, t, y0_flat, *params):
        outputs, record = driver.forward(spec, y0_flat.detach())
        ctx.driver, ctx.record, ctx.lease = driver, record, lease
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
        grad_outputs = grad_outputs.to(torch.float64).contiguous()
        gradients = ctx.driver.backward(ctx.record, grad_outputs, outputs if ctx.t_needs_grad else None)
        return (None, None, None, gradients.t, gradients.y0, *gradients.params)


class NoAdjoint(torch.autograd.Function):
    """The outputs of a forward-only method (no discrete adjoint in PETSc, or scipy) when gradients were
    asked for: the forward pass runs, and ``backward()`` says why no gradient exists."""

    @staticmethod
    def forward(ctx, message, outputs, *inputs):
        ctx.message = message
        return outputs.clone()

    @staticmethod
    def backward(ctx, grad_outputs):
        raise AdjointNotAvailableError(ctx.message)

"""Forward accuracy against analytic solutions, losses on all output times, and gradients to ``t``."""

import pytest
import torch
from oracles import rel_err

import pnode


class Linear(torch.nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


def _matrix():
    g = torch.Generator().manual_seed(7)
    M = torch.randn(4, 4, generator=g) * 0.6
    return M - 0.3 * torch.eye(4)


@pytest.mark.parametrize("method", ["dopri5", "rk8vr", "rk5bs"])
def test_linear_ode_matches_matrix_exponential(method):
    A = _matrix()
    y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([0.0, 0.4, 1.1, 2.5])
    with torch.no_grad():
        ys = pnode.odeint(Linear(A), y0, t, method=method, rtol=1e-10, atol=1e-12)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * s).T for s in t])
    # rtol 1e-10 per step; global error stays within a few tolerances over this short horizon
    assert rel_err(ys, exact) < 1e-8


def test_fixed_step_converges_at_method_order():
    A = _matrix()
    y0 = torch.randn(4)
    t = torch.tensor([0.0, 1.0])
    exact = torch.linalg.matrix_exp(A) @ y0
    errors = []
    for h in (0.1, 0.05):
        with torch.no_grad():
            ys = pnode.odeint(Linear(A), y0, t, method="rk4", options={"step_size": h})
        errors.append((ys[-1] - exact).norm().item())
    order = torch.log2(torch.tensor(errors[0] / errors[1])).item()
    assert 3.8 < order < 4.3


def test_losses_on_all_output_times_give_exact_gradients():
    """Linear ODE, loss on every output: compare d/dA and d/dy0 with autograd through matrix_exp at a
    tight tolerance (the gap is the integration error, not the adjoint's)."""
    A = _matrix()
    func = Linear(A)
    y0 = torch.randn(4, generator=torch.Generator().manual_seed(9)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.9, 1.5])
    w = torch.randn(len(t), 4, generator=torch.Generator().manual_seed(10))
    ys = pnode.odeint(func, y0, t, method="dopri5", rtol=1e-11, atol=1e-13)
    gA, gy0 = torch.autograd.grad((ys * w).sum(), [func.A, y0])

    A_ref = A.clone().requires_grad_()
    y0_ref = y0.detach().clone().requires_grad_()
    exact = torch.stack([torch.linalg.matrix_exp(A_ref * s) @ y0_ref for s in t])
    wA, wy0 = torch.autograd.grad((exact * w).sum(), [A_ref, y0_ref])
    assert rel_err(gA, wA) < 1e-8
    assert rel_err(gy0, wy0) < 1e-8


@pytest.mark.parametrize("decreasing", [False, True])
def test_time_gradient_matches_analytic(decreasing):
    A = _matrix()
    y0 = torch.randn(4, generator=torch.Generator().manual_seed(11))
    times = [0.2, 0.7, 1.3, 2.0]
    t = torch.tensor(times[::-1] if decreasing else times, requires_grad=True)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(12))
    ys = pnode.odeint(Linear(A), y0, t, method="dopri5", rtol=1e-11, atol=1e-13)
    (gt,) = torch.autograd.grad((ys * w).sum(), [t])

    t_ref = t.detach().clone().requires_grad_()
    exact = torch.stack([torch.linalg.matrix_exp(A * (s - t_ref[0])) @ y0 for s in t_ref])
    (wt,) = torch.autograd.grad((exact * w).sum(), [t_ref])
    assert rel_err(gt, wt) < 1e-8


def test_single_output_time_returns_y0():
    y0 = torch.randn(3, 2, requires_grad=True)
    func = Linear(torch.eye(2))
    ys = pnode.odeint(func, y0, torch.tensor([0.5]))
    assert ys.shape == (1, 3, 2)
    assert torch.equal(ys[0], y0)
    (g,) = torch.autograd.grad(ys.sum(), [y0])
    assert torch.equal(g, torch.ones_like(y0))

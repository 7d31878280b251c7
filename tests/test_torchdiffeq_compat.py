"""Behaviours a torchdiffeq user relies on, one test each (pnode's own words for torchdiffeq's spec)."""

import math

import pytest
import torch

import pnode

IMPLICIT = ["beuler", "cn", "theta", "arkimex3", "dirk"]


def test_time_reaches_func_in_the_state_dtype():
    """torchdiffeq casts t to the state's dtype: a float32 model given float64 times must see float32
    times, or a 0-dim output would be promoted to float64."""
    seen = []

    class Decay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float32))    # 0-dim

        def forward(self, t, y):
            seen.append(t.dtype)
            return self.a * t - y                               # 0-dim: promoted if t were float64

    f = Decay()
    y0 = torch.tensor(1.0, dtype=torch.float32, requires_grad=True)
    t = torch.linspace(1, 2, 3, dtype=torch.float64)
    ys = pnode.odeint(f, y0, t, method="rk4", options={"step_size": 0.05})
    assert ys.dtype == torch.float32 and set(seen) == {torch.float32}
    ys.sum().backward()
    assert y0.grad is not None and f.a.grad is not None


def test_plain_function_without_hidden_tensors_runs_with_gradients():
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = pnode.odeint(lambda t, y: -y, y0, t, rtol=1e-10, atol=1e-12)     # not an nn.Module, no adjoint_params
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(-1.0), dtype=torch.float64), rtol=1e-8)


@pytest.mark.parametrize("method", IMPLICIT)
def test_zero_dimensional_state_with_implicit_methods(method):
    """A scalar (0-dim) state: dy/dt = -y, y(0) = 1, compared with the same solve on shape (1,)."""
    y0 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    options = {"step_size": 0.05}
    ys = pnode.odeint(lambda t, y: -y, y0, t, method=method, options=options)
    assert ys.shape == (3,)
    (g,) = torch.autograd.grad(ys[-1], [y0])
    y1 = y0.detach().reshape(1).requires_grad_()
    ref = pnode.odeint(lambda t, y: -y, y1, t, method=method, options=options)
    (g1,) = torch.autograd.grad(ref[-1].sum(), [y1])
    assert torch.allclose(ys, ref[:, 0], rtol=1e-13, atol=0)
    assert torch.allclose(g, g1[0], rtol=1e-13) and abs(ys[-1].item() - math.exp(-1.0)) < 1e-2

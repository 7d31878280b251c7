"""options['trace'] (pnode._tracing): func's torch.jit.trace for the evaluations without autograd.

Oracle: the same solve without the option.  A trace runs the very operations func runs, so outputs and
gradients must agree bitwise; the guards must fall back to func (with a warning) where a trace would be
wrong, and retrace when the model changes."""

import warnings

import pytest
import torch
from test_implicit import Robertson

import pnode


def _solve(func, method, trace, **options):
    y0 = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.1, 0.1]], requires_grad=True)
    t = torch.tensor([0.0, 0.01, 0.1, 1.0])
    solver = pnode.ODESolver(func, method=method, rtol=1e-7, atol=1e-10, options={"trace": trace, **options})
    ys = solver(y0, t)
    grads = torch.autograd.grad(ys.pow(2).sum(), [y0, *func.parameters()])
    return ys.detach(), grads


@pytest.mark.parametrize("method, options", [("arkimex4", {"jacobian": "batched"}), ("dopri5", {})])
def test_traced_solves_agree_bitwise_with_eager_ones(method, options, mlp):
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kinetics, self.mlp = Robertson(), mlp

        def forward(self, t, y):
            return self.kinetics(t, y) + 1e-2 * self.mlp(t, y) * torch.cos(t)

    func = Field()
    eager = _solve(func, method, False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a refused trace would warn
        traced = _solve(func, method, True, **options)
    assert torch.equal(eager[0], traced[0])
    for a, b in zip(eager[1], traced[1]):
        assert torch.equal(a, b)


def test_value_dependent_func_is_not_traced(mlp):
    class Switch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, t, y):
            # a Python branch on a tensor value: a trace would keep only the branch taken at first
            return -y if float(t) < 0.05 else -2.0 * y + self.mlp(t, y)

    func = Switch()
    eager = _solve(func, "dopri5", False)
    with pytest.warns(RuntimeWarning, match="options\\['trace'\\]: func is evaluated without tracing"):
        traced = _solve(func, "dopri5", True)
    assert torch.equal(eager[0], traced[0])


def test_replaced_parameters_are_retraced(mlp):
    solver = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1, "trace": True})
    y0, t = torch.ones(2, 3), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        first = solver(y0, t)
        mlp.w1 = torch.nn.Parameter(2.0 * mlp.w1)      # a new tensor: the old trace is stale
        second = solver(y0, t)
        want = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1})(y0, t)
    assert not torch.equal(first, second)
    assert torch.equal(second, want)


def test_trace_option_is_validated():
    with pytest.raises(pnode.InvalidArgumentError, match="options\\['trace'\\] must be True or False"):
        pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), options={"trace": "yes"})

"""The adjoint's stage work in batches (``pnode._batching``): stage Jacobians evaluated ahead in vmapped
passes, parameter VJPs deferred through probe entries.

Oracle: autograd through plain-torch backward Euler / Crank-Nicolson solved by Newton to rounding on
pnode's step grid (``test_implicit.theta_solve``).  Each test checks the gradient and how many times the
vector field ran during the backward pass (the batching's point)."""

import pytest
import torch
from oracles import rel_err
from test_implicit import TIGHT, theta_solve

import pnode
from pnode import _batching


class Counting(torch.nn.Module):
    """Wraps a field and counts its calls (a vmapped pass over many stages is one call)."""

    def __init__(self, inner, item=False):
        super().__init__()
        self.inner = inner
        self.item = item
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        if self.item and float(y.detach().abs().max()) > 1e6:     # .item(): torch.func.vmap refuses this func
            raise RuntimeError("blew up")
        return self.inner(t, y)


def _gradients(func, method, jacobian):
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.55, 1.0])
    weights = torch.randn(len(t), 2, 3, generator=torch.Generator().manual_seed(2))
    solver = pnode.ODESolver(func, method=method, options={"step_size": 0.1, "jacobian": jacobian, "petsc": TIGHT})
    ys = solver(y0, t)
    params = [y0, *func.parameters()]
    forward_calls = func.calls
    got = torch.autograd.grad((ys * weights).sum() + 0.1 * ys.pow(2).sum(), params)
    backward_calls = func.calls - forward_calls
    ref = theta_solve(func.inner, y0, solver.step_times, t, method)
    want = torch.autograd.grad((ref * weights).sum() + 0.1 * ref.pow(2).sum(), params)
    return got, want, backward_calls, solver.stats


def _assert_close(got, want):
    for g, w in zip(got, want):
        # the same tolerance as test_implicit's oracle test: two exact derivatives of one discrete map,
        # 1e-10 leaving room for the Newton tolerance
        assert rel_err(g, w) < 1e-10


@pytest.mark.parametrize("method", ["beuler", "cn"])
@pytest.mark.parametrize("jacobian", ["dense", "batched"])
def test_adjoint_stages_run_in_a_few_vmapped_passes(method, jacobian, mlp):
    func = Counting(mlp)
    got, want, backward_calls, stats = _gradients(func, method, jacobian)
    _assert_close(got, want)
    # 10 steps: per stage, a Jacobian and two parameter VJPs would be ~30 calls; batched, the stage
    # Jacobians are one vmapped pass, the parameter VJPs another (plus dL/dt's none: t needs no grad)
    assert backward_calls <= 3
    assert stats.vjp_evals >= stats.steps     # each stage point's VJP counts, even when batched


def test_func_that_vmap_refuses_gets_the_per_stage_adjoint(mlp):
    func = Counting(mlp, item=True)
    got, want, backward_calls, _ = _gradients(func, "beuler", "dense")
    _assert_close(got, want)
    # vmap failed once; then every stage's Jacobian is evaluated at its stage (10 steps), and the
    # deferred parameter VJPs run point by point in one reverse pass
    assert backward_calls >= 10


def test_more_parameter_vjps_than_probes_are_computed_at_once(mlp, monkeypatch):
    monkeypatch.setattr(_batching, "MAX_PROBES", 3)
    func = Counting(mlp)
    got, want, _, _ = _gradients(func, "cn", "dense")
    _assert_close(got, want)


def test_probes_hold_the_coefficients_petsc_applied():
    """ParamProbes on its own: two deferred cotangents at one point and one at another; 'PETSc' adds
    each output with its own coefficient into mu; settling gives sum_k coefficient_k J_p^T c_k."""
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)

    class Linear(torch.nn.Module):
        def forward(self, t, y):
            return (weight @ y.unsqueeze(-1)).squeeze(-1) * (1 + t)

    layout = pnode._bridge.StateLayout.of(torch.zeros(2, dtype=torch.float64))
    field = pnode._field.VectorField(Linear(), layout, torch.float64, pnode.stats.SolveStats())
    field.params = (weight,)
    params = pnode._bridge.ParamLayout.of([weight])
    probes = _batching.ParamProbes(params.size, 2)
    mu = torch.zeros(params.size + probes.capacity, dtype=torch.float64).numpy()
    p1 = (0.5, torch.tensor([1.0, -2.0], dtype=torch.float64))
    p2 = (0.25, torch.tensor([0.3, 0.7], dtype=torch.float64))
    calls = [(p1, [1.0, 0.0], 2.0), (p1, [0.0, 1.0], -3.0), (p2, [1.0, 1.0], 0.5)]
    out = torch.zeros_like(torch.from_numpy(mu)).numpy()
    for point, cotangent, coefficient in calls:
        assert probes.defer(point, torch.tensor(cotangent, dtype=torch.float64).numpy(), out)
        mu += coefficient * out
    probes.settle(mu, field, params, scale=-1.0)
    want = torch.zeros(2, 2, dtype=torch.float64)
    for (tau, y), cotangent, coefficient in calls:
        # d/dW of c . (W y)(1 + t) is (1 + t) c y^T
        want += coefficient * (1 + tau) * torch.outer(torch.tensor(cotangent, dtype=torch.float64), y)
    assert torch.allclose(torch.from_numpy(mu[:4]).view(2, 2), -want, rtol=0, atol=1e-15)
    assert not mu[4:].any() and probes.pending == 0

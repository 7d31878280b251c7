"""Gradients through pnode vs autograd through a plain-torch implementation of the same discrete scheme.

Both sides compute the derivative of the same discrete map, so they agree to rounding: 1e-12 relative
leaves ~1e4 ulps for the different summation orders of PETSc's adjoint and torch's backward.
"""

import pytest
import torch
from oracles import TABLEAUX, rel_err, rk_solve

import pnode
from pnode.methods import METHODS

TOL = 1e-12
FIXED_NAMES = sorted(n for n, m in METHODS.items() if m.ts_type == "rk" and m.tableau in TABLEAUX)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _loss(ys, weights):
    return (ys * weights).sum() + 0.1 * (ys**2).sum()


@pytest.mark.parametrize("name", FIXED_NAMES)
def test_fixed_step_gradients_match_plain_torch_scheme(name, mlp):
    method = METHODS[name]
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.55, 1.0])
    weights = torch.randn(len(t), 4, 3, generator=torch.Generator().manual_seed(2))
    solver = pnode.ODESolver(mlp, method=name, options={"step_size": 0.1})
    ys = solver(y0, t)
    params = [y0, *mlp.parameters()]
    got = _grads(_loss(ys, weights), params)
    steps = solver.step_times

    ref_ys = rk_solve(mlp, y0, steps, t, method.tableau)
    want = _grads(_loss(ref_ys, weights), params)
    assert rel_err(ys.detach(), ref_ys.detach()) < TOL
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL
    # the step grid: steps of 0.1 with every output time inserted
    assert len(steps) == 12
    assert solver.stats.steps == 11


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "rk5f", "rk2a"])
def test_adaptive_gradients_match_plain_torch_replay(name, mlp):
    """Adaptive steps: replay pnode's accepted step sizes in the plain-torch scheme (the controller
    itself is not differentiated, in either)."""
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    t = torch.linspace(0.0, 2.0, 6)
    solver = pnode.ODESolver(mlp, method=name, rtol=1e-6, atol=1e-8)
    ys = solver(y0, t)
    assert solver.stats.steps > len(t)   # it really adapted between outputs
    params = [y0, *mlp.parameters()]
    got = _grads(ys.pow(2).sum(), params)
    ref_ys = rk_solve(mlp, y0, solver.step_times, t, METHODS[name].tableau)
    want = _grads(ref_ys.pow(2).sum(), params)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


def test_decreasing_time_matches_plain_torch(mlp):
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(4)).requires_grad_()
    t = torch.tensor([1.0, 0.6, -0.2])
    solver = pnode.ODESolver(mlp, method="rk4classic", options={"step_size": 0.25})
    ys = solver(y0, t)
    steps = solver.step_times
    assert torch.all(steps.diff() < 0)
    params = [y0, *mlp.parameters()]
    got = _grads(ys.sin().sum(), params)
    ref = rk_solve(mlp, y0, steps, t, "4")
    want = _grads(ref.sin().sum(), params)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


def test_tuple_state_gradients(mlp):
    """A tuple state (x, v) with dx/dt = v, dv/dt = mlp(t, x) - 0.1 v, against the plain-torch scheme."""

    class Oscillator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp
            self.damping = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, t, state):
            x, v = state
            return v, self.net(t, x) - self.damping * v

    func = Oscillator()
    x0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(5)).requires_grad_()
    v0 = torch.zeros(3, 3).requires_grad_()
    t = torch.tensor([0.0, 0.5, 1.2])
    solver = pnode.ODESolver(func, method="rk4classic", options={"step_size": 0.1})
    xs, vs = solver((x0, v0), t)
    assert xs.shape == (3, 3, 3) and vs.shape == (3, 3, 3)
    params = [x0, v0, *func.parameters()]
    got = _grads((xs**2).sum() + vs.sum(), params)

    def flat_func(t_, z):
        dx, dv = func(t_, (z[..., :3], z[..., 3:]))
        return torch.cat([dx, dv], dim=-1)

    ref = rk_solve(flat_func, torch.cat([x0, v0], dim=-1), solver.step_times, t, "4")
    want = _grads((ref[..., :3] ** 2).sum() + ref[..., 3:].sum(), params)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


def test_fused_vjp_one_autograd_pass_per_stage(mlp):
    """Guards the fused state+parameter VJP: PETSc must call the parameter shell right after the state
    shell with the same point and cotangent.  If a PETSc change breaks that order, the gradient stays
    right (checked above) but this count changes."""
    y0 = torch.randn(2, 3).requires_grad_()
    solver = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1})
    solver(y0, torch.tensor([0.0, 1.0])).sum().backward()
    assert solver.stats.steps == 10
    assert solver.stats.vjp_evals == 10 * 4
    assert solver.stats.vjp_fallbacks == 0


@pytest.mark.parametrize("name", ["rk5bs", "rk6vr", "rk7vr", "rk8vr"])
def test_high_order_gradients_match_central_differences(name, mlp):
    """Tableaux we do not transcribe: the adjoint gradient against central finite differences of pnode's
    own fixed-step forward map (the forward is checked separately).  Directional derivatives along random
    directions; with eps=1e-5 the O(eps^2) truncation and rounding leave ~1e-9 relative."""
    y0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0.0, 0.4, 1.0])
    solver = pnode.ODESolver(mlp, method=name, options={"step_size": 0.2})
    params = list(mlp.parameters())
    y0g = y0.clone().requires_grad_()
    loss = solver(y0g, t).pow(2).sum()
    grads = torch.autograd.grad(loss, [y0g, *params])
    gen = torch.Generator().manual_seed(7)
    directions = [torch.randn(g.shape, generator=gen) for g in grads]
    adjoint = sum((g * d).sum() for g, d in zip(grads, directions)).item()

    def loss_at(eps):
        with torch.no_grad():
            for p, d in zip(params, directions[1:]):
                p.add_(eps * d)
            value = solver(y0 + eps * directions[0], t).pow(2).sum().item()
            for p, d in zip(params, directions[1:]):
                p.sub_(eps * d)
        return value

    eps = 1e-5
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(adjoint - fd) <= 1e-8 * abs(fd)


# the tableaux of the methods below, as the oracle integrates them (pnode's rk4 is Kutta's 3/8 rule)
ORACLE_TABLEAU = {
    "rk4": ([[0, 0, 0, 0], [1 / 3, 0, 0, 0], [-1 / 3, 1, 0, 0], [1, -1, 1, 0]], [1 / 8, 3 / 8, 3 / 8, 1 / 8]),
    "dopri5": "5dp",
    "bosh3": "3bs",
}


@pytest.mark.parametrize("method, options", [
    ("rk4", {"step_size": 0.05}),
    ("dopri5", {"rtol": None}),                          # FSAL: a kept stage serves two adjoint stages
    ("rk4", {"step_size": 0.05, "checkpoints": 3}),      # graphs of one segment at a time
    ("bosh3", {"checkpoints": 2}),                       # adaptive, checkpointed: replayed segments
])
def test_keep_graph_gives_the_same_gradients_without_reevaluating(method, options):
    """options['keep_graph']: the adjoint uses the forward pass's stage graphs; gradients equal the
    default mode's exactly (the same arithmetic) and autograd through the plain-torch scheme on the
    same steps (the oracle), and the backward pass evaluates func only where a checkpointed segment is
    recomputed."""
    options = {k: v for k, v in options.items() if v is not None}
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    calls = [0]

    def field(t, y):
        calls[0] += 1
        return net(y)

    y0 = torch.randn(5, 3, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0])
    results = []
    for keep in (False, True):
        solver = pnode.ODESolver(field, method=method, options={**options, "keep_graph": keep},
                                 adjoint_params=tuple(net.parameters()))
        ys = solver(y0, t)
        calls[0] = 0
        grads = torch.autograd.grad(ys.pow(2).sum(), [y0, *net.parameters()], retain_graph=True)
        backward_calls = calls[0]
        again = torch.autograd.grad(ys.pow(2).sum(), [y0, *net.parameters()])   # replays, graphs again
        results.append((grads, again, backward_calls))
    with torch.enable_grad():
        x0 = y0.detach().clone().requires_grad_()
        ref = rk_solve(lambda t, y: net(y), x0, solver.step_times, t, ORACLE_TABLEAU[method])
        oracle = torch.autograd.grad(ref.pow(2).sum(), [x0, *net.parameters()])
    (plain, _, plain_calls), (kept, kept_again, kept_calls) = results
    for a, b in zip(kept, oracle):
        assert rel_err(a, b) < 1e-11     # float64 round-off over ~100 stages
    for a, b, c in zip(plain, kept, kept_again):
        assert torch.equal(a, b)
        assert torch.allclose(c, a, rtol=1e-13, atol=1e-15)
    assert kept_calls < plain_calls
    if "checkpoints" not in options:
        assert kept_calls <= 3          # a step's FSAL stage evaluated at most once more


def test_keep_graph_is_refused_for_implicit_methods():
    with pytest.raises(pnode.InvalidArgumentError, match="keep_graph"):
        pnode.odeint(lambda t, y: -y, torch.ones(2, requires_grad=True), torch.tensor([0.0, 1.0]), method="beuler",
                     options={"step_size": 0.1, "keep_graph": True}, adjoint_params=())

"""ODESolver: built once, reused across iterations with changing parameters, equal to fresh solves;
statistics after every solve."""

import torch
from oracles import rel_err

import pnode


def test_reuse_over_iterations_equals_fresh_solves(mlp):
    y0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1.5, 5)
    solver = pnode.ODESolver(mlp, method="dopri5", rtol=1e-6, atol=1e-8)
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    ts_handle = None
    for _ in range(4):
        optimizer.zero_grad()
        ys = solver(y0, t)
        ys.pow(2).mean().backward()
        reused = [p.grad.clone() for p in mlp.parameters()]
        steps = solver.stats.steps

        fresh = pnode.ODESolver(mlp, method="dopri5", rtol=1e-6, atol=1e-8)
        optimizer.zero_grad()
        fresh(y0, t).pow(2).mean().backward()
        assert fresh.stats.steps == steps
        for a, b in zip(reused, (p.grad for p in mlp.parameters())):
            assert torch.equal(a, b)          # same steps, same operations: bitwise equal

        if ts_handle is None:
            ts_handle = solver._driver.ts.handle
        assert solver._driver.ts.handle == ts_handle     # no PETSc object rebuilt
        optimizer.step()


def test_statistics_after_each_solve(mlp):
    solver = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1})
    y0 = torch.randn(2, 3, requires_grad=True)
    ys = solver(y0, torch.tensor([0.0, 0.5, 1.0]))
    s = solver.stats
    assert (s.steps, s.rejected_steps, s.rhs_evals, s.vjp_evals) == (10, 0, 40, 0)
    assert s.forward_time > 0 and s.backward_time == 0
    ys.sum().backward()
    assert s.vjp_evals == 40 and s.backward_time > 0
    assert "rk4" in str(s)

    adaptive = pnode.ODESolver(mlp, method="dopri5", rtol=1e-9)
    with torch.no_grad():
        adaptive(y0, torch.tensor([0.0, 3.0]))
    a = adaptive.stats
    # Dormand-Prince: 7 stages with FSAL reuse -> 6 new evaluations per attempted step, plus the first
    # stage and two evaluations for the initial step size.
    assert a.rhs_evals == 6 * (a.steps + a.rejected_steps) + 1 + 2


def test_two_forwards_then_two_backwards(mlp):
    """The second forward replaces PETSc's trajectory; the first backward must replay its own steps."""
    solver = pnode.ODESolver(mlp, method="dopri5", rtol=1e-6)
    t = torch.linspace(0, 1, 3)
    y0a = torch.randn(2, 3, requires_grad=True)
    y0b = torch.randn(2, 3, requires_grad=True)
    ya, yb = solver(y0a, t), solver(y0b, t)
    ga = torch.autograd.grad(ya.sum(), [y0a])[0]
    gb = torch.autograd.grad(yb.sum(), [y0b])[0]
    fa = torch.autograd.grad(pnode.ODESolver(mlp, method="dopri5", rtol=1e-6)(y0a, t).sum(), [y0a])[0]
    fb = torch.autograd.grad(pnode.ODESolver(mlp, method="dopri5", rtol=1e-6)(y0b, t).sum(), [y0b])[0]
    # the replay steps by the recorded step boundaries: step sizes equal to rounding (t1 - t0 vs the
    # controller's dt), so gradients agree to ~1e-15, not bitwise
    assert rel_err(ga, fa) < 1e-13 and rel_err(gb, fb) < 1e-13


def test_shape_change_rebuilds_and_still_matches(mlp):
    solver = pnode.ODESolver(mlp, method="rk4")
    t = torch.linspace(0, 1, 4)
    for batch in (2, 5, 2):
        y0 = torch.randn(batch, 3)
        with torch.no_grad():
            assert torch.equal(solver(y0, t), pnode.odeint(mlp, y0, t, method="rk4"))

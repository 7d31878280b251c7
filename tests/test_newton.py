"""Chord Newton (one Jacobian per forward step) and its weighted convergence test; Jacobian blocks from
stacked copies of the batch.

Oracles: autograd through a plain-torch backward-Euler step solved by Newton to rounding
(``test_implicit.theta_solve``), scipy's Radau at rtol 1e-12, and pnode's full-Newton solve with PETSc's
convergence test at rounding-level tolerances.
"""

import pytest
import torch
from oracles import rel_err
from test_implicit import TIGHT, Robertson, _radau, theta_solve

import pnode


def _solve(func, y0, t, newton, method="arkimex4", **kw):
    solver = pnode.ODESolver(func, method=method, rtol=kw.pop("rtol", 1e-8), atol=kw.pop("atol", 1e-12),
                             options={"newton": newton, **kw})
    return solver(y0, t), solver


def test_chord_newton_reuses_one_jacobian_per_step_and_matches_radau():
    func, y0 = Robertson(), torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.0, 0.1]])
    t = torch.cat([torch.zeros(1), torch.logspace(-5, 3, 9)])
    with torch.no_grad():
        ys, solver = _solve(func, y0, t, "chord", jacobian="batched")
        chord = solver.stats
        ys_full, solver_full = _solve(func, y0, t, "full", jacobian="batched")
        full = solver_full.stats
    ref = torch.stack([_radau(func, y, t) for y in y0], 1)
    scale = 1e-11 + ref.abs()
    # rtol 1e-8: the global error is ~1e-7 relative in y1, y2 and 2.5e-5 in y3 at t = 1e-5 (y3 ~ 1e-10,
    # near atol) with either Newton variant; chord Newton may not add more than a tenth to it
    err_chord = float(((ys - ref).abs() / scale).max())
    err_full = float(((ys_full - ref).abs() / scale).max())
    assert err_full < 5e-5 and err_chord < 1.1 * err_full
    # one evaluation per step (plus re-evaluations of a stalled contraction), the rest reused
    assert chord.jacobian_reuses > chord.jacobian_assemblies
    assert chord.jacobian_assemblies <= 1.5 * chord.steps
    assert full.jacobian_reuses == 0 and full.jacobian_assemblies >= full.newton_iterations


def test_chord_gradients_match_plain_torch_newton(mlp):
    """Chord Newton stopped by the weighted test (no PETSc tolerances given): the forward agrees with
    Newton solved to rounding to ~kappa * tolerance, and the adjoint (exact stage Jacobians) gives the
    oracle's gradient to the same order."""
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.55, 1.0])
    weights = torch.randn(len(t), 2, 3, generator=torch.Generator().manual_seed(2))
    solver = pnode.ODESolver(mlp, method="beuler", rtol=1e-7, atol=1e-9,
                             options={"step_size": 0.1, "jacobian": "dense"})
    ys = solver(y0, t)
    params = [y0, *mlp.parameters()]
    got = torch.autograd.grad((ys * weights).sum() + 0.1 * ys.pow(2).sum(), params)
    assert solver.stats.jacobian_reuses > 0
    ref = theta_solve(mlp, y0, solver.step_times, t, "beuler")
    want = torch.autograd.grad((ref * weights).sum() + 0.1 * ref.pow(2).sum(), params)
    # Newton stops at 1e-4 of (atol + rtol |y|) ~ 1e-11 per step: the forward and the gradient agree
    # with the rounding-level oracle to about that, far inside the 1e-8 asked here
    assert rel_err(ys.detach(), ref.detach()) < 1e-9
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-8


def test_chord_and_full_newton_gradients_agree_on_adaptive_stiff_steps(mlp):
    """The same adaptive arkimex4 solve of a stiff field with both variants: the forward and the
    gradients agree to the Newton tolerance (the steps themselves follow the error estimates)."""

    class Stiff(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rates = torch.nn.Parameter(torch.tensor([10.0, 300.0, 3000.0]))

        def forward(self, t, y):
            return -self.rates * y + mlp(t, y)

    func = Stiff()
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.0, 0.01, 0.1, 1.0])
    results = []
    for newton in ("chord", "full"):    # full: PETSc's test, converged quadratically
        ys, solver = _solve(func, y0, t, newton, rtol=1e-7, atol=1e-9, jacobian="batched")
        grads = torch.autograd.grad(ys.pow(2).sum(), list(func.parameters()))
        results.append((ys.detach(), grads, solver.stats))
    (ys_c, g_c, s_c), (ys_f, g_f, s_f) = results
    assert s_c.jacobian_reuses > 0 and s_f.jacobian_reuses == 0
    # rtol 1e-7 steps: a Newton error of 1e-4 of the tolerance moves the error estimates, hence the
    # steps, by about that much; outputs and gradients then differ by ~1e-10 relative
    assert rel_err(ys_c, ys_f) < 1e-8
    for a, b in zip(g_c, g_f):
        assert rel_err(a, b) < 1e-6


def test_stale_jacobian_is_refreshed_and_the_solution_is_exact():
    """Backward Euler on y' = -y^3 from y = 10 with h = 0.1: the Jacobian at a step's start is ~6x the one
    at its end, so the kept Jacobian stalls Newton (contraction ~0.8) and is re-evaluated.  Oracle: each
    step's cubic y + h y^3 = y_old solved by numpy's polynomial roots (its one real root)."""
    import numpy as np

    class Cubic(torch.nn.Module):
        def forward(self, t, y):
            return -y**3

    y0, h = torch.tensor([10.0, 4.0]), 0.1
    t = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        ys, solver = _solve(Cubic(), y0, t, "chord", method="beuler", step_size=h)
    expected, y = [y0.numpy()], y0.numpy().copy()
    for step in range(1, 11):
        for i, old in enumerate(y):
            roots = np.roots([h, 0.0, 1.0, -old])
            y[i] = roots[np.abs(roots.imag).argmin()].real
        if step in (5, 10):
            expected.append(y.copy())
    # Newton stops at 1e-4 of (atol + rtol |y|) with rtol 1e-8: the stage values agree to ~1e-12
    assert rel_err(ys, torch.tensor(np.array(expected))) < 1e-11
    s = solver.stats
    assert s.jacobian_reuses > 0 and s.jacobian_assemblies > s.steps   # some steps needed a fresh one


def test_newton_option_is_validated():
    with pytest.raises(pnode.InvalidArgumentError, match="options\\['newton'\\]"):
        pnode.odeint(Robertson(), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0]), method="beuler",
                     options={"newton": "quasi"})


class PerSampleRates(torch.nn.Module):
    """A field with a per-sample tensor inside: it accepts only a batch of its own size."""

    def __init__(self, batch):
        super().__init__()
        self.rates = torch.nn.Parameter(torch.linspace(1.0, 5.0, batch).unsqueeze(-1) * torch.ones(batch, 3))

    def forward(self, t, y):
        return -self.rates * y + 0.1 * torch.tanh(y).roll(1, dims=-1)


class Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def forward(self, t, y):
        return -5.0 * y + self.net(y)


@pytest.mark.parametrize("make", [lambda: Shared(), lambda: PerSampleRates(5)], ids=["shared", "per-sample"])
def test_batched_blocks_from_copies_agree_with_dense_jacobian(make):
    """'batched' blocks (from stacked copies of the batch, or from batched reverse passes when func
    refuses another batch size) against the 'dense' whole-state Jacobian: same forward, same gradients."""
    torch.manual_seed(0)
    func = make()
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    t = torch.tensor([0.0, 0.2, 0.5])
    results = []
    for strategy in ("dense", "batched"):
        ys, solver = _solve(func, y0, t, "full", method="dirkes324sal", rtol=1e-6, atol=1e-8,
                            jacobian=strategy, petsc=TIGHT)
        results.append((ys.detach(), torch.autograd.grad(ys.pow(2).sum(), [y0, *func.parameters()]),
                        solver.stats))
    (ys_d, g_d, s_d), (ys_b, g_b, s_b) = results
    assert s_d.steps == s_b.steps and s_b.jacobian_assemblies > 0
    # the same Newton iterations on the same matrices up to rounding
    assert rel_err(ys_b, ys_d) < 1e-12
    for a, b in zip(g_d, g_b):
        assert rel_err(b, a) < 1e-11


def test_pnode_newton_loop_matches_petsc_newtonls_and_skips_the_last_residual(mlp):
    """pnode's chord loop (a Python SNES) against PETSc's newtonls running the same convergence test
    (``-snes_type newtonls``): where newtonls takes its full steps the iterates are the same, so the
    steps, the outputs and the gradients agree to rounding; pnode's loop evaluates no residual at the
    converged iterate (one per stage solve fewer) and no Jacobian product for a line-search slope.  Both
    start from PETSc's guess (``predictor=False``; the predictor is tested below)."""
    func, y0 = Robertson(), torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.05, 0.05]], requires_grad=True)
    t = torch.cat([torch.zeros(1), torch.logspace(-4, 1, 6)])
    results = {}
    for snes in (None, "newtonls"):
        solver = pnode.ODESolver(func, method="arkimex4", rtol=1e-7, atol=1e-11,
                                 options={"jacobian": "batched", "predictor": False,
                                          **({"petsc": {"snes_type": snes}} if snes else {})})
        ys = solver(y0, t)
        grads = torch.autograd.grad(ys.pow(2).sum() + ys[-1, :, 1].sum(), [y0, *func.parameters()])
        results[snes] = (ys.detach(), grads, solver.stats)
    (ys, grads, mine), (ys_ls, grads_ls, theirs) = results[None], results["newtonls"]
    assert (mine.steps, mine.rejected_steps) == (theirs.steps, theirs.rejected_steps)
    # pnode counts the start-slope solve's iterations too, which the TS leaves out of its count
    assert 0 <= mine.newton_iterations - theirs.newton_iterations <= 5
    # same iterates, evaluated in another order of PETSc calls: rounding only
    assert rel_err(ys, ys_ls) < 1e-13
    for g, w in zip(grads, grads_ls):
        assert rel_err(g, w) < 1e-11
    # arkimex4: 5 implicit stage solves per step tried, each one residual fewer
    assert theirs.rhs_evals - mine.rhs_evals >= 5 * (theirs.steps + theirs.rejected_steps)
    assert mine.krylov_iterations == mine.newton_iterations       # preonly: one block solve per iteration


def test_overshooting_newton_step_is_backtracked(monkeypatch):
    """Backward Euler on y' = -1000 atan(y) from y = 3 with h = 0.1: the Newton step from y = 3 lands at
    y ~ -9.5, where the residual is larger (atan's slope falls off), so the loop halves the step.
    Oracle: each step's scalar equation y + 100 atan(y) = y_old solved by bisection to rounding."""
    import math

    calls = []
    original = pnode._newton.ChordNewton._backtrack
    monkeypatch.setattr(pnode._newton.ChordNewton, "_backtrack",
                        lambda self, *args: calls.append(1) or original(self, *args))

    class Atan(torch.nn.Module):
        def forward(self, t, y):
            return -1000.0 * torch.atan(y)

    h = 0.1
    with torch.no_grad():
        ys, _ = _solve(Atan(), torch.tensor([3.0]), torch.tensor([0.0, 0.1, 0.2]), "chord", method="beuler",
                       step_size=h)
    expected, y = [3.0], 3.0
    for _ in range(2):
        lo, hi = -abs(y) - 1, abs(y) + 1          # the residual is increasing: one root in between
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mid + 1000 * h * math.atan(mid) - y < 0 else (lo, mid)
        y = 0.5 * (lo + hi)
        expected.append(y)
    assert calls, "the overshooting step was not backtracked"
    # rtol 1e-8, atol 1e-12: Newton stops at 1e-4 of that; y ~ 3e-2 then 3e-4
    assert rel_err(ys.reshape(-1), torch.tensor(expected)) < 1e-10


@pytest.mark.parametrize("method", ["arkimex4", "arkimex5"])
def test_stage_predictor_saves_newton_iterations_and_keeps_the_solution(method):
    """The derivative predictor moves only where Newton starts: the steps, the outputs (against scipy Radau
    at rtol 1e-12) and the gradients are those of PETSc's guess to within the Newton tolerance, with
    fewer iterations; results are reproducible bitwise, and checkpoint replays (which restart, dropping
    the carried slope) give the stored trajectory's gradient to the same tolerance."""
    func = Robertson()
    y0 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.05, 0.05]], requires_grad=True)
    t = torch.cat([torch.zeros(1), torch.logspace(-5, 1, 7)])
    ref = torch.stack([_radau(func, y, t) for y in y0.detach()], 1)
    results = {}
    for predictor, checkpoints in ((True, None), (False, None), (True, 3)):
        options = {"jacobian": "batched", "predictor": predictor}
        if checkpoints:
            options["checkpoints"] = checkpoints
        solver = pnode.ODESolver(func, method=method, rtol=1e-7, atol=1e-11, options=options)
        ys = solver(y0, t)
        grads = torch.autograd.grad(ys.pow(2).sum() + ys[-1, :, 1].sum(), [y0, *func.parameters()])
        with torch.no_grad():
            again = solver(y0, t)
        results[predictor, checkpoints] = (ys.detach(), grads, solver.stats, again)
    (ys, grads, mine, again), (ys_guess, grads_guess, theirs, _) = results[True, None], results[False, None]
    assert torch.equal(ys, again)                      # the slope carried over is dropped at each solve
    assert abs(mine.steps - theirs.steps) <= 0.05 * theirs.steps
    assert mine.newton_iterations <= 0.85 * theirs.newton_iterations    # measured: 0.64 (arkimex4), 0.70
    scale = 1e-11 + ref.abs()
    err, err_guess = (float(((y - ref).abs() / scale).max()) for y in (ys, ys_guess))
    assert err <= 1.01 * err_guess
    # each stage is solved to 1e-4 of (atol + rtol |y|): the two starts' results differ by about that
    # (measured: 1e-11 - 4e-11 outputs, 4e-12 - 3e-11 gradients)
    assert rel_err(ys, ys_guess) < 1e-9
    for g, w in zip(grads, grads_guess):
        assert rel_err(g, w) < 1e-8
    for g, w in zip(results[True, 3][1], grads):
        assert rel_err(g, w) < 1e-9                    # measured: 1e-12 - 2e-12


def test_predictor_option_is_validated():
    with pytest.raises(pnode.InvalidArgumentError, match="predictor"):
        pnode.ODESolver(Robertson(), method="arkimex4", options={"predictor": "yes"})


@pytest.mark.parametrize("predictor", [True, False])
def test_float32_field_converges_at_its_rounding_level(predictor):
    """A float32 field rounds at about 0.1 of rtol 1e-6 in the controller's weighted norm, so Newton's
    updates never reach 1e-4 of it: the test stops once an update is at the iterate's rounding level
    (before, the good start of the predictor left only noise, whose growth ended in a failed line search).
    Oracle: y' = -50 (y - cos t), y(0) = 1 has y = e^(-50 t) / 2501 + (2500 cos t + 50 sin t) / 2501."""
    import math

    func = lambda t, y: -50.0 * (y - torch.cos(t))  # noqa: E731
    solver = pnode.ODESolver(func, method="arkimex4", rtol=1e-6, atol=1e-9, options={"predictor": predictor})
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float32)
    with torch.no_grad():
        ys = solver(torch.ones(3, dtype=torch.float32), t)
    exact = [math.exp(-50 * s) / 2501 + (2500 * math.cos(s) + 50 * math.sin(s)) / 2501 for s in t.tolist()]
    assert ys.dtype == torch.float32
    # float32 rounding (6e-8) plus the rtol 1e-6 step control: a few 1e-6 (measured: 3e-7)
    assert float((ys - torch.tensor(exact).unsqueeze(1)).abs().max()) < 5e-6
    assert solver.stats.newton_iterations <= 3 * 5 * (solver.stats.steps + solver.stats.rejected_steps)


@pytest.mark.parametrize("make", [lambda: Robertson(), lambda: Shared()], ids=["robertson", "mlp"])
def test_difference_blocks_match_autograd_blocks(make):
    """Chord's forward Jacobian blocks by forward differences against autograd's exact blocks (an
    independent derivative), at states with components near zero (Robertson's y2) and of order one.
    Increments of sqrt(eps) times each component (at least a hundredth of its sample's RMS): rounding
    (eps |g| / increment) and truncation (increment |g''|, Robertson's 2 k2 = 6e7) each about 1e-6 of a
    block's largest entry (measured 1.2e-6 and 1.1e-6); chord only needs an iteration matrix."""
    func = make()
    y = torch.tensor([[0.98, 3.1e-5, 0.02], [0.7, 1.2e-5, 0.3], [0.5, 0.0, 0.5]])
    solver = pnode.ODESolver(func, method="arkimex4", options={"jacobian": "batched"})
    with torch.no_grad():
        solver(y, torch.tensor([0.0, 1e-6]))       # builds the field for this state
    field = solver._driver.field     # the solver's own field object, as its Jacobian strategy calls it
    x = y.reshape(-1).clone()
    exact = field.jacobian_blocks(0.3, x, 3)
    approx = field.difference_blocks(0.3, x, 3)
    assert approx is not None and approx.shape == exact.shape == (3, 3, 3)
    scale = exact.abs().amax(dim=(1, 2), keepdim=True)
    assert float(((approx - exact).abs() / scale).max()) < 1e-5


def test_difference_blocks_decline_what_they_cannot_do():
    """A func that refuses a batch of another size (a per-sample tensor inside) gets autograd's blocks,
    with the same solution; chord_jacobian='exact' never differences; the option is validated."""
    func = PerSampleRates(5)
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 0.2, 0.5])
    with torch.no_grad():
        ys = {kind: _solve(func, y0, t, "chord", method="arkimex4", rtol=1e-7, atol=1e-9, jacobian="batched",
                           chord_jacobian=kind)[0] for kind in ("differences", "exact")}
    assert torch.equal(ys["differences"], ys["exact"])     # both fell back to the same exact blocks
    with pytest.raises(pnode.InvalidArgumentError, match="chord_jacobian"):
        pnode.ODESolver(func, method="arkimex4", options={"chord_jacobian": "fd"})


def test_chord_difference_jacobian_keeps_solution_and_gradient():
    """The stiff benchmark's Robertson case with differences and with autograd blocks for chord's forward
    matrix: the same steps and Newton iterations, outputs and gradients equal to far below the Newton
    tolerance (measured: 7e-15 and 7e-13 on benchmarks/stiff.py's model), against scipy Radau as well."""
    func = Robertson()
    y0 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.05, 0.05]], requires_grad=True)
    t = torch.cat([torch.zeros(1), torch.logspace(-5, 1, 7)])
    ref = torch.stack([_radau(func, y, t) for y in y0.detach()], 1)
    out = {}
    for kind in ("differences", "exact"):
        ys, solver = _solve(func, y0, t, "chord", rtol=1e-7, atol=1e-11, jacobian="batched", chord_jacobian=kind)
        out[kind] = (ys.detach(), torch.autograd.grad(ys.pow(2).sum(), [y0, *func.parameters()]), solver.stats)
    (ys_d, g_d, s_d), (ys_e, g_e, s_e) = out["differences"], out["exact"]
    assert (s_d.steps, s_d.newton_iterations) == (s_e.steps, s_e.newton_iterations)
    assert rel_err(ys_d, ys_e) < 1e-11
    for a, b in zip(g_d, g_e):
        assert rel_err(a, b) < 1e-10
    scale = 1e-11 + ref.abs()
    assert float(((ys_d - ref).abs() / scale).max()) <= 1.01 * float(((ys_e - ref).abs() / scale).max())

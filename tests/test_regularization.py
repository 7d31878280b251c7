"""Local error regularization (pnode.regularization): the embedded estimate against independent
plain-torch steps and against PETSc's own adaptor, its order, its gradient, and the sampling."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from fractions import Fraction as F

import pytest
import torch
from oracles import TABLEAUX, rk_step

import pnode

METHODS = ["rk2a", "bosh3", "rk5f", "dopri5", "rk5bs"]
EMBEDDED_ORDER = {"rk2a": 1, "bosh3": 2, "rk5f": 4, "dopri5": 4, "rk5bs": 4}
ORDER = {"rk2a": 2, "bosh3": 3, "rk5f": 5, "dopri5": 5, "rk5bs": 5}


def wrms(u, v, rtol, atol):
    """PETSc's TSErrorWeightedNorm (2-norm), written out for the tests."""
    scale = atol + rtol * torch.maximum(u.abs(), v.abs())
    return torch.sqrt((((u - v) / scale) ** 2).mean())


def bosh3_by_hand(f, t, y, h):
    """Bogacki-Shampine 3(2) as explicit formulas: error = y1 - y1_embedded (Bogacki & Shampine 1989)."""
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + 3 * h / 4, y + 3 * h / 4 * k2)
    y1 = y + h * (2 / 9 * k1 + 1 / 3 * k2 + 4 / 9 * k3)
    k4 = f(t + h, y1)
    y1_embedded = y + h * (7 / 24 * k1 + 1 / 4 * k2 + 1 / 3 * k3 + 1 / 8 * k4)
    return y1, y1_embedded


def heun_euler_by_hand(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h, y + h * k1)
    return y + h / 2 * (k1 + k2), y + h * k1


# embedded weights written in the test (the A and b rows come from tests/oracles.py, another source)
B_EMBEDDED = {
    "5dp": [F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)],
    "5f": [F(25, 216), 0, F(1408, 2565), F(2197, 4104), F(-1, 5), 0],
}
# Bogacki & Shampine (1996), the 5(4) pair: c = 0, 1/6, 2/9, 3/7, 2/3, 3/4, 1, 1
BS5_A = [[],
         [F(1, 6)],
         [F(2, 27), F(4, 27)],
         [F(183, 1372), F(-162, 343), F(1053, 1372)],
         [F(68, 297), F(-4, 11), F(42, 143), F(1960, 3861)],
         [F(597, 22528), F(81, 352), F(63099, 585728), F(58653, 366080), F(4617, 20480)],
         [F(174197, 959244), F(-30942, 79937), F(8152137, 19744439), F(666106, 1039181), F(-29421, 29068),
          F(482048, 414219)],
         [F(587, 8064), 0, F(4440339, 15491840), F(24353, 124800), F(387, 44800), F(2152, 5985), F(7267, 94080)]]
BS5_B = BS5_A[7] + [0]
BS5_B_EMBEDDED = [F(2479, 34992), 0, F(123, 416), F(612941, 3411720), F(43, 1440), F(2272, 6561),
                  F(79937, 1113912), F(3293, 556956)]


def by_oracle_tableau(method):
    def square(rows, n):
        return [[float(x) for x in r] + [0.0] * (n - len(r)) for r in rows]

    if method == "rk5bs":
        return square(BS5_A, 8), [float(x) for x in BS5_B], [float(x) for x in BS5_B_EMBEDDED]
    tableau = {"dopri5": "5dp", "rk5f": "5f"}[method]
    A, b = TABLEAUX[tableau]
    return A, b, [float(x) for x in B_EMBEDDED[tableau]]


def reference_estimate(method, f, t, y, h, rtol, atol):
    if method == "bosh3":
        u, v = bosh3_by_hand(f, t, y, h)
    elif method == "rk2a":
        u, v = heun_euler_by_hand(f, t, y, h)
    else:
        A, b, b_embedded = by_oracle_tableau(method)
        u, v = rk_step(f, t, y, h, A, b), rk_step(f, t, y, h, A, b_embedded)
    return wrms(u, v, rtol, atol)


@pytest.mark.parametrize("method", METHODS)
def test_estimate_matches_plain_torch_step(method, mlp):
    y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    t, h, rtol, atol = torch.tensor(0.3), 0.8, 1e-5, 1e-6
    got = pnode.embedded_error_estimate(mlp, t, y, h, method=method, rtol=rtol, atol=atol)
    want = reference_estimate(method, mlp, t, y, h, rtol, atol)
    # both take u - v with |u - v| ~ 1e-7 |u| (rk5f): the cancellation leaves ~1e-16 / 1e-7 relative
    # rounding, so 1e-8 is tight for the formula yet far below any wrong coefficient's effect (> 1e-3)
    got, want = got.detach(), want.detach()
    assert abs(float(got) - float(want)) <= 1e-8 * float(want), (float(got), float(want))
    assert float(want) > 1.0   # the comparison is not between two zeros


def test_bs5_oracle_tableau_has_order_five():
    """The test's own BS5 rows satisfy the order conditions they should (so a typo in them shows here,
    not as a silent agreement with the same typo in pnode)."""
    A, b, bh = by_oracle_tableau("rk5bs")
    c = [sum(r) for r in A]
    for weights, order in ((b, 5), (bh, 4)):
        for q in range(1, order + 1):   # bushy trees sum b c^(q-1) = 1/q
            assert abs(sum(w * ci ** (q - 1) for w, ci in zip(weights, c)) - 1 / q) < 1e-14
        # tall tree of order 3: sum b_i a_ij c_j = 1/6
        assert abs(sum(weights[i] * A[i][j] * c[j] for i in range(8) for j in range(8)) - 1 / 6) < 1e-14


MONITOR = textwrap.dedent("""
    import json, sys, torch, pnode
    torch.set_default_dtype(torch.float64)
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    func = lambda t, y: (y ** 3) @ A + torch.sin(t) * y
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]])
    rtol, atol, ours = 1e-4, 1e-6, {}
    for method in sys.argv[1].split(","):
        for h in (0.05, 0.2):
            solver = pnode.ODESolver(func, method=method, rtol=rtol, atol=atol,
                                     options={"first_step": h, "petsc": {"ts_adapt_monitor": None}})
            with torch.no_grad():
                solver(y0, torch.tensor([0.1, 0.1 + 50 * h]))
            e = pnode.embedded_error_estimate(func, torch.tensor(0.1), y0, h, method=method, rtol=rtol, atol=atol)
            ours[f"{pnode.METHODS[method].tableau} {h:.3e}"] = float(e)
    print("PNODE", json.dumps(ours))
""")


def _env_importing_this_pnode():
    root = os.path.dirname(os.path.dirname(os.path.abspath(pnode.__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_estimate_matches_petsc_adaptor():
    """PETSc's own adaptor (-ts_adapt_monitor) prints the scaled error of each attempted step; the first
    attempt of a solve is the step of size first_step from y0: pnode's estimate for that step must be
    PETSc's number (accepted or rejected)."""
    proc = subprocess.run([sys.executable, "-c", MONITOR, ",".join(METHODS)], capture_output=True, text=True,
                          timeout=120, env=_env_importing_this_pnode())
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout.split("PNODE ", 1)[1])
    lines = [line for line in proc.stdout.splitlines() if "wlte" in line]
    assert len(ours) == 2 * len(METHODS)
    for key, value in ours.items():
        ts_type, h = key.split()
        # e.g. "TSAdapt basic rk 0:5dp step   0 rejected t=0.1        + 2.000e-01 dt=5.816e-02  wlte=  284"
        first = next(line for line in lines if f"0:{ts_type} step   0 " in line and f"+ {h} " in line)
        petsc = float(re.search(r"wlte=\s*([-+0-9.eE]+)", first).group(1))
        # the monitor prints 3 significant digits: rounding error up to 5e-3 relative
        assert abs(value - petsc) <= 6e-3 * petsc, (key, first, value)


@pytest.mark.parametrize("method", METHODS)
def test_estimate_order_on_linear_ode(method):
    """dy/dt = a y: u - v = (R(ha) - R_embedded(ha)) y0 = C h^(p+1) + O(h^(p+2)), p the embedded order."""
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]])

    def func(t, y):
        return y @ a.T

    y0 = torch.tensor([1.0, 0.5])
    steps = [0.08, 0.04, 0.02, 0.01]
    errors = [float(pnode.embedded_error_estimate(func, 0.0, y0, h, method=method, rtol=0.0, atol=1.0))
              for h in steps]
    slopes = [math.log(errors[i] / errors[i + 1]) / math.log(2.0) for i in range(len(steps) - 1)]
    assert abs(slopes[-1] - (EMBEDDED_ORDER[method] + 1)) < 0.1, slopes


@pytest.mark.parametrize("method", METHODS)
def test_both_solutions_have_their_order_on_a_nonlinear_ode(method):
    """Local errors of the propagated (order p) and embedded (order p_hat) solutions of pnode's tableau
    against a reference from 2000 fine steps, on a non-autonomous nonlinear system."""
    from pnode.regularization import _embedded_step, embedded_pair

    def func(t, y):
        return torch.stack([y[1] + 0.3 * torch.sin(t) * y[0], -y[0] ** 3 - 0.1 * y[1]])

    def reference(t0, y0, h):
        A, b = TABLEAUX["5dp"]
        y, n = y0, 400
        for i in range(n):
            y = rk_step(func, t0 + i * h / n, y, h / n, A, b)
        return y

    pair = embedded_pair(method)
    t0, y0 = torch.tensor(0.2), torch.tensor([1.0, 0.3])
    errs = {"high": [], "low": []}
    steps = [0.1, 0.05]
    for h in steps:
        exact = reference(t0, y0, h)
        (u,), (v,) = _embedded_step(func, t0, y0, h, pair)
        errs["high"].append(float((u - exact).norm()))
        errs["low"].append(float((v - exact).norm()))
    slope_high = math.log(errs["high"][0] / errs["high"][1]) / math.log(2.0)
    slope_low = math.log(errs["low"][0] / errs["low"][1]) / math.log(2.0)
    assert slope_high > ORDER[method] + 0.6, (slope_high, errs)
    assert abs(slope_low - (EMBEDDED_ORDER[method] + 1)) < 0.5, (slope_low, errs)


def _functional(mlp, method, t, h, rtol, atol):
    """E(y, *params): the estimate as a pure function of the state and of the MLP's parameters."""
    names = [n for n, _ in mlp.named_parameters()]

    def value(y, *params):
        return pnode.embedded_error_estimate(
            lambda tt, yy: torch.func.functional_call(mlp, dict(zip(names, params)), (tt, yy)),
            t, y, h, method=method, rtol=rtol, atol=atol)

    return value, [p.detach().clone().requires_grad_() for p in mlp.parameters()]


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "rk5bs"])
def test_parameter_gradient_central_differences(method, mlp):
    y = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    # a long step: u - v is not tiny next to u, so the rounding of E stays far below the differences
    value, params = _functional(mlp, method, torch.tensor(0.1), 1.0, 1e-5, 1e-6)
    e = value(y, *params)
    assert float(e.detach()) > 1.0
    grads = torch.autograd.grad(e, params)
    g = torch.Generator().manual_seed(3)
    eps = 1e-5
    for k, (p, grad) in enumerate(zip(params, grads)):
        for _ in range(3):
            idx = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in p.shape)
            with torch.no_grad():
                plus = [q.clone() for q in params]
                minus = [q.clone() for q in params]
                plus[k][idx] += eps
                minus[k][idx] -= eps
                fd = (float(value(y, *plus)) - float(value(y, *minus))) / (2 * eps)
            # central differences: O(eps^2) = 1e-10 truncation, and E's rounding (1e-16 |u| / |u - v|, about
            # 1e-12 relative) over eps: 1e-7 relative
            bound = 2e-6 * max(float(e.detach()), abs(fd))
            assert abs(fd - float(grad[idx])) <= bound, (p.shape, idx, fd, float(grad[idx]))


@pytest.mark.parametrize("method", METHODS)
def test_parameter_and_state_gradcheck(method, mlp):
    y = torch.randn(2, 3, generator=torch.Generator().manual_seed(4)).requires_grad_()
    value, params = _functional(mlp, method, torch.tensor(0.1), 1.0, 1e-5, 1e-6)
    assert float(value(y, *params).detach()) > 1.0
    # same FD error budget as above, E being O(10) here
    assert torch.autograd.gradcheck(value, (y, *params), eps=1e-5, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- sampling


def _solve(mlp, method="dopri5", t=None, y0=None):
    solver = pnode.ODESolver(mlp, method=method, rtol=1e-5, atol=1e-7)
    t = torch.linspace(0.0, 2.0, 5) if t is None else t
    y0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(5)) if y0 is None else y0
    return solver, t, y0, solver(y0, t)


def test_regularizer_is_mean_of_step_times_estimate_and_its_gradient(mlp):
    solver, t, y0, ys = _solve(mlp)
    steps_before, stats_before = solver.step_times.clone(), solver.stats.rhs_evals
    reg, drawn = pnode.local_error_regularizer(solver, t, ys, samples=3, generator=torch.Generator().manual_seed(0),
                                               return_samples=True)
    # the user's solver is untouched by the re-solves
    assert torch.equal(solver.step_times, steps_before) and solver.stats.rhs_evals == stats_before
    grads = torch.autograd.grad(reg, list(mlp.parameters()))
    # rebuild the same value by hand: state at s from a separate solve from the output row before s
    steps = solver.step_times
    expected = 0.0
    for sample in drawn:
        k = int(torch.searchsorted(steps, torch.tensor(sample.time), right=True)) - 1
        assert steps[k] <= sample.time < steps[k + 1]
        assert sample.step == pytest.approx(float(steps[k + 1] - steps[k]), rel=1e-14)
        i = int(torch.searchsorted(t, torch.tensor(sample.time), right=True)) - 1
        with torch.no_grad():
            other = pnode.ODESolver(mlp, method="dopri5", rtol=1e-5, atol=1e-7)
            state = other(ys[i].detach(), torch.tensor([float(t[i]), sample.time]))[-1]
        e = pnode.embedded_error_estimate(mlp, torch.tensor(sample.time), state, sample.step, method="dopri5",
                                          rtol=1e-5, atol=1e-7)
        assert float(e.detach()) == pytest.approx(sample.estimate, rel=1e-12)
        expected = expected + abs(sample.step) * e / len(drawn)
    assert float(reg.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for g, w in zip(grads, torch.autograd.grad(expected, list(mlp.parameters()))):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-14)


def test_state_at_sampled_time_is_accurate_and_held_constant(mlp):
    y0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(5)).requires_grad_()
    solver, t, _, ys = _solve(mlp, y0=y0)
    reg, (sample,) = pnode.local_error_regularizer(solver, t, ys, generator=torch.Generator().manual_seed(1),
                                                   return_samples=True)
    # the value at a state from a tight solve from y0: same to the solver's tolerance (rtol 1e-5)
    with torch.no_grad():
        tight = pnode.odeint(mlp, y0, torch.tensor([0.0, sample.time]), rtol=1e-11, atol=1e-13)[-1]
    e = pnode.embedded_error_estimate(mlp, torch.tensor(sample.time), tight, sample.step, rtol=1e-5, atol=1e-7)
    assert float(e.detach()) == pytest.approx(sample.estimate, rel=1e-3)
    (grad_y0,) = torch.autograd.grad(reg, [y0], allow_unused=True)
    assert grad_y0 is None      # y(s) is held constant: no path back to y0
    reg2 = pnode.local_error_regularizer(solver, t, ys, generator=torch.Generator().manual_seed(1))
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(reg2, list(mlp.parameters())))


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "rk5bs"])
def test_biased_samples_are_accepted_steps_with_estimate_below_one(method, mlp):
    """At an accepted step of the solve, PETSc's controller found E <= 1 for that step: pnode's estimate
    from the (re-solved) state there, with that step size, must agree."""
    solver, t, _, ys = _solve(mlp, method=method)
    _, drawn = pnode.local_error_regularizer(solver, t, ys, mode="biased", samples=12,
                                             generator=torch.Generator().manual_seed(2), return_samples=True)
    starts = solver.step_times[:-1].tolist()
    for sample in drawn:
        assert sample.time in starts
        k = starts.index(sample.time)
        assert sample.step == float(solver.step_times[k + 1] - solver.step_times[k])
        assert 0.0 < sample.estimate <= 1.0 + 1e-3, sample
    # the controller aims at 0.9**p-ish of the tolerance: not all samples are tiny
    assert max(s.estimate for s in drawn) > 0.05


def test_decreasing_time_and_tuple_state(mlp):
    t = torch.linspace(2.0, 0.0, 4)
    solver, _, y0, ys = _solve(mlp, t=t)
    reg, drawn = pnode.local_error_regularizer(solver, t, ys, samples=4, generator=torch.Generator().manual_seed(3),
                                               return_samples=True)
    assert all(0.0 < s.time <= 2.0 and s.step < 0 for s in drawn)
    assert float(reg.detach()) > 0
    reg.backward()

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = mlp

        def forward(self, t, y):
            return self.inner(t, y[0]), -y[1] * y[0].sum(-1, keepdim=True)

    pair = Pair()
    solver = pnode.ODESolver(pair, method="bosh3", rtol=1e-5, atol=1e-7)
    t = torch.linspace(0.0, 1.0, 3)
    state = (torch.randn(2, 3), torch.randn(2, 1))
    ys = solver(state, t)
    reg = pnode.local_error_regularizer(solver, t, ys, generator=torch.Generator().manual_seed(4))
    reg.backward()
    assert float(reg.detach()) > 0


def test_bad_arguments(mlp):
    y = torch.ones(3)
    with pytest.raises(pnode.InvalidArgumentError, match=r"'foo'.*dopri5"):
        pnode.embedded_error_estimate(mlp, 0.0, y, 0.1, method="foo")
    for fixed in ("rk4", "euler", "heun2", "rk3"):
        with pytest.raises(pnode.InvalidArgumentError, match=rf"{fixed}.*fixed grid.*bosh3"):
            pnode.embedded_error_estimate(mlp, 0.0, y, 0.1, method=fixed)
    with pytest.raises(pnode.InvalidArgumentError, match="implicit"):
        pnode.embedded_error_estimate(mlp, 0.0, y, 0.1, method="arkimex")
    with pytest.raises(pnode.InvalidArgumentError, match="no embedded pair tabulated"):
        pnode.embedded_error_estimate(mlp, 0.0, y, 0.1, method="rk8vr")
    with pytest.raises(pnode.InvalidArgumentError, match="dt"):
        pnode.embedded_error_estimate(mlp, 0.0, y, 0.0)
    with pytest.raises(pnode.InvalidArgumentError, match="rtol"):
        pnode.embedded_error_estimate(mlp, 0.0, y, 0.1, rtol=-1.0)
    with pytest.raises(pnode.InvalidArgumentError, match="shaped like y"):
        pnode.embedded_error_estimate(lambda t, yy: yy[:2], 0.0, y, 0.1)

    t = torch.linspace(0.0, 1.0, 3)
    fresh = pnode.ODESolver(mlp, method="dopri5")
    with pytest.raises(pnode.InvalidArgumentError, match="solver"):
        pnode.local_error_regularizer(fresh, t, torch.zeros(3, 3))
    with pytest.raises(pnode.InvalidArgumentError, match="ODESolver"):
        pnode.local_error_regularizer(mlp, t, torch.zeros(3, 3))
    solver, t, _, ys = _solve(mlp)
    with pytest.raises(pnode.InvalidArgumentError, match="mode"):
        pnode.local_error_regularizer(solver, t, ys, mode="uniform")
    with pytest.raises(pnode.InvalidArgumentError, match="samples"):
        pnode.local_error_regularizer(solver, t, ys, samples=0)
    with pytest.raises(pnode.InvalidArgumentError, match="latest"):
        pnode.local_error_regularizer(solver, t * 2, ys)
    with pytest.raises(pnode.InvalidArgumentError, match="rows"):
        pnode.local_error_regularizer(solver, t, ys[:-1])
    with pytest.raises(pnode.InvalidArgumentError, match="generator"):
        pnode.local_error_regularizer(solver, t, ys, generator=0)
    fixed = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1})
    ys = fixed(torch.ones(2, 3), t)
    with pytest.raises(pnode.InvalidArgumentError, match=r"'rk4'.*fixed grid"):
        pnode.local_error_regularizer(fixed, t, ys)


def test_docstring_examples_run():
    import doctest

    import pnode.regularization

    assert doctest.testmod(pnode.regularization).failed == 0


def test_float32_model():
    func = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).float()
    solver = pnode.ODESolver(lambda t, y: func(y), method="bosh3", rtol=1e-4, atol=1e-6,
                             adjoint_params=tuple(func.parameters()))
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float32)
    ys = solver(torch.ones(4, 2, dtype=torch.float32), t)
    reg = pnode.local_error_regularizer(solver, t, ys, generator=torch.Generator().manual_seed(0))
    assert reg.dtype == torch.float32 and float(reg.detach()) > 0
    reg.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in func.parameters())

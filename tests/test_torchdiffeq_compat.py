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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["euler", "rk4", "implicit_euler", "trapezoid", "sdirk2"])
def test_perturb_evaluates_just_inside_each_step(method, dtype):
    seen = []

    def f(t, x):
        seen.append(t.item())
        return -x

    results = {}
    for perturb in (True, False):
        seen.clear()
        x0 = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)    # func's t in dtype: nudged in it
        xs = pnode.odeint(f, x0, torch.tensor([0.0, 1.0], dtype=dtype), method=method,
                          options={"step_size": 0.5, "perturb": perturb})
        forward = set(seen)
        seen.clear()
        xs.sum().backward()
        backward = set(seen)
        results[perturb] = (xs.detach(), x0.grad)
        grid_hits = forward & {0.0, 0.5}
        if perturb:
            assert not grid_hits and not backward & {0.5, 1.0}
        else:
            assert 0.5 in grid_hits      # the interior grid time ends one step and starts the next
    # one ulp of time changes nothing for an autonomous field: same values and gradients
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)


class Jump:
    """-x/2 before t = 1/2, x^2 after: discontinuous in t."""

    def __init__(self):
        self.nfe = 0

    def __call__(self, t, x):
        self.nfe += 1
        return -0.5 * x if t < 0.5 else x ** 2


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_jump_t_lands_restarts_and_costs_less(method):
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    plain, better = Jump(), Jump()
    xs_plain = pnode.odeint(plain, x0, t, rtol=1e-6, atol=1e-6, method=method)
    xs = pnode.odeint(better, x0, t, rtol=1e-6, atol=1e-6, method=method, options={"jump_t": torch.tensor([0.5])})
    assert better.nfe < plain.nfe
    # exact: x(1/2) = x0 exp(-1/4), then x' = x^2: x(1) = 1 / (1 / x(1/2) - 1/2)
    half = x0.detach() * math.exp(-0.25)
    exact = 1 / (1 / half - 0.5)
    assert torch.allclose(xs[-1].detach(), exact, rtol=1e-4)     # global error of x^2 growth at tol 1e-6
    assert (torch.abs(xs[-1] - exact) < torch.abs(xs_plain[-1] - exact) + 1e-9).all()
    # gradient: dx(1)/dx0 = exact^2 / half^2 * exp(-1/4)
    plain.nfe = better.nfe = 0
    (grad,) = torch.autograd.grad(xs[-1].sum(), [x0])
    assert torch.allclose(grad, exact**2 / half**2 * math.exp(-0.25), rtol=1e-4)


def test_step_t_times_are_step_boundaries():
    solver = pnode.ODESolver(lambda t, y: -y, method="dopri5", options={"step_t": [0.123, 0.777]})
    with torch.no_grad():
        solver(torch.ones(2), torch.tensor([0.0, 1.0]))
    steps = solver.step_times
    for landmark in (0.123, 0.777):
        assert torch.isclose(steps, torch.tensor(landmark, dtype=torch.float64), rtol=0, atol=1e-14).any()


def test_grid_constructor_sets_the_fixed_grid():
    x0 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    xs = pnode.odeint(lambda t, x: x, x0, torch.tensor([0.0, 1.0]), method="euler",
                      options={"grid_constructor": lambda f, y0, t: torch.linspace(0, 1, 11)})
    assert xs[1].item() == pytest.approx(1.1**10, rel=1e-14)          # ten Euler steps of 0.1
    xs[1].backward()
    assert x0.grad.item() == pytest.approx(1.1**10, rel=1e-14)
    with pytest.raises(pnode.InvalidArgumentError, match="grid_constructor"):
        pnode.odeint(lambda t, x: x, x0, torch.tensor([0.0, 1.0]), method="euler",
                     options={"grid_constructor": lambda f, y0, t: torch.linspace(0, 0.5, 11)})


def test_min_and_max_step_bound_the_controller():
    A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    t = torch.linspace(1, 8, 10, dtype=torch.float64)
    counts = {}
    for options in ({}, {"min_step": 2.0}, {"max_step": 0.05}):
        solver = pnode.ODESolver(lambda t, y: A @ y, options=options)
        with torch.no_grad():
            solver(torch.ones(2, dtype=torch.float64), t)
        counts[tuple(options)] = solver.stats.steps
        gaps = torch.diff(solver.step_times)
        if "max_step" in options:
            assert gaps.max() <= 0.05 * (1 + 1e-12)
    assert counts[("min_step",)] < counts[()] < counts[("max_step",)]


def test_interp_and_adjoint_arguments_are_accepted_or_refused_clearly():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    ys = pnode.odeint(lambda t, y: -y, y0, t, method="rk4", options={"step_size": 0.1, "interp": "cubic"},
                      adjoint_method="rk4", adjoint_options={"norm": "seminorm"})
    assert ys.shape == (3, 2)
    with pytest.raises(pnode.InvalidArgumentError, match="interp"):
        pnode.odeint(lambda t, y: -y, y0, t, options={"interp": "spline"})
    with pytest.raises(pnode.InvalidArgumentError, match="adjoint_method"):
        pnode.odeint(lambda t, y: -y, y0, t, method="rk4", adjoint_method="dopri5")
    with pytest.raises(pnode.InvalidArgumentError, match="adjoint_options"):
        pnode.odeint(lambda t, y: -y, y0, t, adjoint_options={"rtol": 1e-3})


def test_adjoint_tolerances_set_the_transposed_solves_of_implicit_methods():
    """matrix-free GMRES transposed solves: a loose adjoint_rtol moves the gradient by about that much,
    a tight one reproduces the default's."""
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    A = torch.tensor([[-2.0, 1.0], [0.5, -3.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = {}
    for rtol in (None, 1e-12, 1e-2):
        ys = pnode.odeint(lambda t, y: A @ y, y0, t, method="beuler",
                          options={"step_size": 0.1, "jacobian": "matrix_free"}, adjoint_rtol=rtol)
        (grads[rtol],) = torch.autograd.grad(ys[-1].sum(), [y0])
    assert torch.allclose(grads[1e-12], grads[None], rtol=1e-9)
    assert not torch.allclose(grads[1e-2], grads[None], rtol=1e-9)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_step_callbacks_see_every_attempt_and_every_adjoint_step(method):
    """callback_step for each attempt, then accept or reject (adaptive); the *_adjoint hooks once per
    step of the backward pass.  Counts are checked against PETSc's own step and rejection counts."""
    calls = {name: [] for name in ("step", "accept", "reject", "step_adjoint", "accept_adjoint")}

    class Field(Jump):
        pass

    f = Field()
    f.callback_step = lambda t0, y0, dt: calls["step"].append((float(t0), float(dt)))
    f.callback_step_adjoint = lambda t0, y0, dt: calls["step_adjoint"].append(float(t0))
    adaptive = method == "dopri5"
    if adaptive:
        f.callback_accept_step = lambda t0, y0, dt: calls["accept"].append(float(t0))
        f.callback_reject_step = lambda t0, y0, dt: calls["reject"].append(float(t0))
        f.callback_accept_step_adjoint = lambda t0, y0, dt: calls["accept_adjoint"].append(float(t0))
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    solver = pnode.ODESolver(f, method=method, options=None if adaptive else {"step_size": 0.1}, adjoint_params=())
    xs = solver(x0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    steps, rejected = solver.stats.steps, solver.stats.rejected_steps
    xs.sum().backward()
    assert len(calls["step"]) == steps + rejected
    if adaptive:
        # the discontinuity at t = 1/2 makes the controller reject steps there
        assert rejected > 0 and len(calls["reject"]) == rejected and len(calls["accept"]) == steps
        assert len(calls["accept_adjoint"]) == steps
    else:
        assert steps == 10 and [round(t, 12) for t, _ in calls["step"]] == [round(0.1 * i, 12) for i in range(10)]
    assert len(calls["step_adjoint"]) == steps
    assert calls["step_adjoint"] == sorted(calls["step_adjoint"], reverse=True)      # backward in time


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_scipy_solver_runs_scipy_forward_and_refuses_backward(solver):
    """torchdiffeq's scipy_solver: scipy.integrate.solve_ivp with options['solver'], forward only;
    checked against the matrix exponential of a rotation with damping."""
    A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    ys = pnode.odeint(lambda t, y: A @ y, y0, t, method="scipy_solver", options={"solver": solver},
                      rtol=1e-8, atol=1e-10)
    exact = torch.stack([torch.linalg.matrix_exp(A * s) @ y0.detach() for s in t])
    assert torch.allclose(ys.detach(), exact, rtol=0, atol=1e-5)
    with pytest.raises(pnode.AdjointNotAvailableError, match="scipy"):
        ys.sum().backward()
    reverse = pnode.odeint(lambda t, y: A @ y, y0.detach(), t.flip(0), method="scipy_solver",
                           options={"solver": solver}, rtol=1e-8, atol=1e-10)
    back = torch.stack([torch.linalg.matrix_exp(A * (s - 2)) @ y0.detach() for s in t.flip(0)])
    assert torch.allclose(reverse, back, rtol=0, atol=1e-5)


def test_scipy_solver_arguments():
    with pytest.raises(pnode.InvalidArgumentError, match="options\\['solver'\\]"):
        pnode.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="scipy_solver",
                     options={"solver": "Euler"})
    with pytest.raises(pnode.InvalidArgumentError, match="scipy_solver"):
        pnode.ODESolver(lambda t, y: -y, method="dopri5", options={"solver": "RK45"})


# --- options['min_step'] larger than the spacing of t: step past output times, interpolate them -------------
ROTATION = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_min_step_steps_past_output_times_and_interpolates_them(method):
    """torchdiffeq's min_step: no step is shortened below it to land on an output time; the outputs it
    steps past are interpolated (dopri5: PETSc's dense output; bosh3: cubic Hermite through the step's
    end states and slopes, rebuilt here from a plain-torch replay of the same steps)."""
    from oracles import rk_solve

    t = torch.linspace(0, 4, 41, dtype=torch.float64)         # spacing 0.1
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    min_step = 0.25
    solver = pnode.ODESolver(lambda t, y: ROTATION @ y, method=method, rtol=1e-9, atol=1e-11,
                             options={"min_step": min_step})
    with torch.no_grad():
        ys = solver(y0, t)
    steps = solver.step_times
    # only the last two steps may be shorter: PETSc sizes them to end exactly at t[-1]
    assert torch.diff(steps)[:-2].min() >= min_step * (1 - 1e-12)
    assert len(steps) - 1 < len(t) - 1                               # fewer steps than output intervals
    exact = torch.stack([torch.linalg.matrix_exp(ROTATION * s) @ y0 for s in t])
    # steps of 0.25 where the controller wanted far smaller ones: the error is the steps', not rtol's
    assert (ys - exact).abs().max() < (1e-5 if method == "dopri5" else 1e-2)
    if method == "bosh3":
        f = lambda tau, y: ROTATION @ y  # noqa: E731
        states = rk_solve(f, y0, steps, steps, "3bs")
        for i, s in enumerate(t.tolist()):
            n = int(torch.searchsorted(steps, torch.tensor(s, dtype=torch.float64), right=True)) - 1
            n = min(n, len(steps) - 2)
            t0, t1 = float(steps[n]), float(steps[n + 1])
            h, u = t1 - t0, (s - t0) / (t1 - t0)
            hermite = ((1 + 2 * u) * (1 - u) ** 2 * states[n] + u * (1 - u) ** 2 * h * f(t0, states[n])
                       + u * u * (3 - 2 * u) * states[n + 1] + u * u * (u - 1) * h * f(t1, states[n + 1]))
            assert (ys[i] - hermite).abs().max() < 1e-12, (i, s)


def test_min_step_gradients_exact_where_outputs_land_refused_where_interpolated():
    from oracles import rk_solve

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.nn.Parameter(ROTATION.clone())

        def forward(self, t, y):
            return self.A @ y

    func = Linear()
    t = torch.linspace(0, 4, 9, dtype=torch.float64)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    solver = pnode.ODESolver(func, options={"min_step": 1.2})
    ys = solver(y0, t)
    # the last output is a step boundary: its gradient is the discrete adjoint's, exact for the steps taken
    got = torch.autograd.grad(ys[-1].sum(), (y0, func.A), retain_graph=True)
    ref = rk_solve(func, y0, solver.step_times, [0.0, 4.0], "5dp")
    want = torch.autograd.grad(ref[-1].sum(), (y0, func.A))
    for g, w in zip(got, want):
        assert (g - w).abs().max() < 1e-12
    with pytest.raises(pnode.AdjointNotAvailableError, match="interpolated"):
        ys[3].sum().backward()


# --- options['norm'] ----------------------------------------------------------------------------------------
def _steps(norm=None, rtol=1e-6, atol=1e-8, petsc=None, y0=None, func=None):
    func = func or (lambda t, y: torch.tanh(3 * y) * torch.sin(4 * t))
    options = {k: v for k, v in (("norm", norm), ("petsc", petsc)) if v is not None}
    solver = pnode.ODESolver(func, rtol=rtol, atol=atol, options=options)
    with torch.no_grad():
        solver(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) if y0 is None else y0,
               torch.tensor([0.0, 3.0], dtype=torch.float64))
    return solver.step_times


def test_norm_scaled_rms_is_the_default_norm_at_scaled_tolerances():
    """10 * RMS accepts a step where RMS with tolerances / 10 does: the same steps, bit for bit."""
    scaled = _steps(norm=lambda x: 10 * x.pow(2).mean().sqrt())
    reference = _steps(rtol=1e-7, atol=1e-9)
    assert len(scaled) == len(reference) and torch.allclose(scaled, reference, rtol=1e-9, atol=0)
    assert not torch.equal(scaled, _steps())


def test_norm_max_is_petscs_infinity_norm():
    assert torch.equal(_steps(norm=lambda x: x.abs().max()), _steps(petsc={"ts_adapt_wnormtype": "infinity"}))
    assert not torch.equal(_steps(norm=lambda x: x.abs().max()), _steps())


def test_norm_of_one_part_of_a_tuple_state_controls_that_part_only():
    """A norm that reads only ``a`` of (a, b), with b driven by a but not feeding back: the steps are the
    ones of solving a alone with the default norm (b's error is ignored)."""
    calls = []

    def norm(state):
        a, b = state
        calls.append((tuple(a.shape), tuple(b.shape)))
        return a.pow(2).mean().sqrt()

    def coupled(t, y):
        a, b = y
        return torch.tanh(3 * a) * torch.sin(4 * t), 50 * torch.cos(20 * t) * b + a.sum()

    y0 = (torch.tensor([1.0, -2.0], dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    both = _steps(norm=norm, y0=y0, func=coupled)
    alone = _steps(y0=y0[0], func=lambda t, a: torch.tanh(3 * a) * torch.sin(4 * t))
    # equal up to the rounding of the tolerance weights (1/sqrt(3) here)
    assert len(both) == len(alone) and torch.allclose(both, alone, rtol=1e-9, atol=0)
    assert calls and calls[0] == ((2,), (2, 2))


def test_norm_on_implicit_methods_steers_steps_and_newton_solves_every_part():
    """A uniform max norm, and an RMS norm of the first part only: the steps follow the norm, and the
    part the norm ignores is still solved by Newton to the strictest tolerance (so it carries only the
    method's truncation error on the steps the other part chose)."""
    f = lambda t, y: (-y[0], -2 * y[1])  # noqa: E731
    y0 = (torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = pnode.odeint(f, y0, t, method="arkimex3", options={"norm": lambda s: 3 * torch.cat(s).abs().max()})
    assert (ys[0][-1] - math.exp(-1)).abs().max() < 1e-5
    solver = pnode.ODESolver(f, method="arkimex3", options={"norm": lambda s: s[0].pow(2).mean().sqrt()})
    ys = solver(y0, t)
    # default rtol 1e-7 / atol 1e-9: measured 1.1e-7 on part 0; third-order steps sized for part 0
    # (rate 1) leave part 1 (rate 2) with a larger truncation error, measured 6.4e-7
    assert (ys[0][-1] - math.exp(-1)).abs().max() < 1e-6
    assert (ys[1][-1] - math.exp(-2)).abs().max() < 5e-6
    assert solver.stats.newton_iterations > 0 and solver.stats.nonlinear_solve_failures == 0


def test_norm_petsc_cannot_compute_is_refused():
    with pytest.raises(pnode.InvalidArgumentError, match="weighted RMS"):
        _steps(norm=lambda x: x.abs().sum())
    with pytest.raises(pnode.InvalidArgumentError, match="callable"):
        _steps(norm="rms")

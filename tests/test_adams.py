"""torchdiffeq's Adams methods (explicit_adams, implicit_adams), integrated by pnode in plain torch.

Oracles: the published Adams-Bashforth / Adams-Moulton weights (Hairer, Norsett & Wanner, Solving ODEs I,
Tables III.1.1 and III.1.2), written out here; a plain-torch implementation of torchdiffeq's scheme in this
file built on those weights (its autograd gradient is the discrete-adjoint oracle); the order of
convergence on y' = y cos t (exact exp(sin t)); central finite differences; analytic event times.
"""

import math
import textwrap
from fractions import Fraction as F

import pytest
import torch
from mpi_run import check, mpiexec

import pnode
from pnode._adams import bashforth, moulton

torch.set_num_threads(1)

# published weights, newest slope first (AB: f_n, f_{n-1}, ...; AM: f_{n+1}, f_n, ...)
PUBLISHED_AB = {
    1: [F(1)],
    2: [F(3, 2), F(-1, 2)],
    3: [F(23, 12), F(-16, 12), F(5, 12)],
    4: [F(55, 24), F(-59, 24), F(37, 24), F(-9, 24)],
    5: [F(1901, 720), F(-2774, 720), F(2616, 720), F(-1274, 720), F(251, 720)],
    6: [F(4277, 1440), F(-7923, 1440), F(9982, 1440), F(-7298, 1440), F(2877, 1440), F(-475, 1440)],
}
PUBLISHED_AM = {
    1: [F(1)],
    2: [F(1, 2), F(1, 2)],
    3: [F(5, 12), F(8, 12), F(-1, 12)],
    4: [F(9, 24), F(19, 24), F(-5, 24), F(1, 24)],
    5: [F(251, 720), F(646, 720), F(-264, 720), F(106, 720), F(-19, 720)],
    6: [F(475, 1440), F(1427, 1440), F(-798, 1440), F(482, 1440), F(-173, 1440), F(27, 1440)],
}


@pytest.mark.parametrize("k", sorted(PUBLISHED_AB))
def test_weights_equal_the_published_tables(k):
    assert list(bashforth(k)) == PUBLISHED_AB[k]
    assert list(moulton(k)) == PUBLISHED_AM[k]


@pytest.mark.parametrize("k", range(1, 14))
def test_weights_integrate_polynomials_exactly(k):
    """k weights integrate every polynomial of degree < k over one step exactly (the defining property)."""
    for degree in range(k):
        exact = F(1, degree + 1)       # int_0^1 s^d ds
        assert sum(w * F(-j) ** degree for j, w in enumerate(bashforth(k))) == exact
        assert sum(w * F(1 - j) ** degree for j, w in enumerate(moulton(k))) == exact


# ---------------------------------------------------------------------------------------------- the oracle
def _combine(weights, slopes):
    return sum(float(w) * s for w, s in zip(weights, slopes))


def oracle(func, y0, grid, implicit, max_order, max_iters=4, rtol=1e-7, atol=1e-9):
    """torchdiffeq's Adams scheme on ``grid`` (outputs at every grid point), from the published tables
    (so max_order <= 6 here): RK4 (3/8 rule) while fewer than 3 slopes are known, then Adams-Bashforth
    with the known slopes, corrected by Adams-Moulton one order higher (functional iteration, stopped
    when the increment changes by less than the tolerance; a failed iteration drops the oldest slope)."""
    y, history, ys = y0, [], [y0]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        f0 = func(t0, y)
        history = [f0] + history[:max_order - 2]
        k = min(len(history), max_order - 1)
        if k < 3:
            k2 = func(t0 + h / 3, y + h * f0 / 3)
            k3 = func(t0 + 2 * h / 3, y + h * (k2 - f0 / 3))
            k4 = func(t1, y + h * (f0 - k2 + k3))
            y = y + h * (f0 + 3 * k2 + 3 * k3 + k4) / 8
        else:
            dy = h * _combine(PUBLISHED_AB[k], history)
            if implicit:
                m = PUBLISHED_AM[k + 1]
                known = h * _combine(m[1:], history)
                converged = False
                for _ in range(max_iters):
                    old = dy
                    dy = h * float(m[0]) * func(t1, y + dy) + known
                    tol = atol + rtol * torch.maximum(old.abs(), dy.abs())
                    converged = bool(((old - dy).abs() / tol).max() < 1)
                    if converged:
                        break
                if not converged:
                    history.pop()
            y = y + dy
        ys.append(y)
    return torch.stack(ys)


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = torch.nn.Linear(3, 3).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * torch.cos(2 * t) - 0.2 * y


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.parametrize("reverse", [False, True])
def test_solution_and_gradient_equal_the_oracle(method, reverse):
    """max_order=6: every formula of the published tables is used (RK4 start, AB3..AB5, AM4..AM6)."""
    func = Field()
    y0 = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    grid = torch.linspace(0.0, 1.5, 31, dtype=torch.float64)
    t = grid.flip(0) if reverse else grid
    options = {"max_order": 6, **({"max_iters": 3} if method == "implicit_adams" else {})}
    ys = pnode.odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, options=options)
    # the oracle integrates forward in tau = -t for decreasing t, as pnode (and torchdiffeq) do
    sign = -1.0 if reverse else 1.0
    taus = [torch.tensor(sign * float(s), dtype=torch.float64) for s in t]
    ref = oracle(lambda tau, y: sign * func(sign * tau, y), y0, taus,
                 method == "implicit_adams", 6, 3, 1e-6, 1e-8)
    assert (ys - ref).abs().max() < 1e-13
    weights = torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)
    got = torch.autograd.grad((ys * weights).sum(), (y0, *func.parameters()))
    want = torch.autograd.grad((ref * weights).sum(), (y0, *func.parameters()))
    for g, w in zip(got, want):
        assert (g - w).abs().max() < 1e-11 * max(1.0, w.abs().max().item())


@pytest.mark.parametrize("method, max_order, steps, order", [
    ("explicit_adams", 4, (0.02, 0.01, 0.005), 3),     # AB3 in the bulk
    ("explicit_adams", 8, (0.01, 0.005, 0.0025), 4),   # bulk AB7, but the one AB3 step limits the order
    ("implicit_adams", 4, (0.04, 0.02, 0.01), 4),      # AM4
    ("implicit_adams", 12, (0.02, 0.01, 0.005), 5),    # AM12, limited by the RK4 start and the AM4 step
])
def test_order_of_convergence(method, max_order, steps, order):
    y0 = torch.ones(1, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    exact = math.exp(math.sin(2.0))
    errors = []
    for h in steps:
        options = {"step_size": h, "max_order": max_order, **({"max_iters": 50} if "implicit" in method else {})}
        with torch.no_grad():
            ys = pnode.odeint(lambda t, y: y * torch.cos(t), y0, t, method=method, rtol=1e-13, atol=1e-15,
                              options=options)
        errors.append(abs(ys[-1].item() - exact))
    observed = math.log2(errors[-2] / errors[-1])
    assert abs(observed - order) < 0.3, (errors, observed)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
@pytest.mark.parametrize("options", [{}, {"step_size": 0.07}, {"step_size": 0.07, "interp": "cubic"},
                                     {"step_size": 0.07, "keep_graph": True}])
def test_gradients_match_central_differences(method, options):
    """y0, t and a parameter, against central differences of the forward map (torch's gradcheck)."""
    func = Field()
    weight = func.lin.weight
    t = torch.tensor([0.0, 0.4, 0.75, 1.1], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64, requires_grad=True)

    ys = pnode.odeint(func, y0, t, method=method, options=options)
    (grad,) = torch.autograd.grad(ys.square().sum(), weight)
    assert torch.autograd.gradcheck(lambda y0, t: pnode.odeint(func, y0, t, method=method, options=options), (y0, t))
    # the parameter enters through the module: its gradient against central differences by hand
    base = weight.detach().clone()

    def loss(w):
        with torch.no_grad():
            weight.copy_(w)
            return pnode.odeint(func, y0, t, method=method, options=options).square().sum().item()

    for index in [(0, 0), (1, 2), (2, 1)]:
        e = torch.zeros_like(base)
        e[index] = 1e-6
        assert abs(grad[index].item() - (loss(base + e) - loss(base - e)) / 2e-6) < 1e-7
    loss(base)


def test_backward_reevaluates_each_step_unless_the_graph_is_kept():
    """The default backward re-runs each step (func evaluated again, one callback per step); keep_graph
    backpropagates through the forward's graph; both give the same gradient."""
    calls, adjoint_steps = [], []
    func = Field()
    func.callback_step_adjoint = lambda t0, lam, dt: adjoint_steps.append(float(t0))
    original = func.forward

    def counted(t, y):
        calls.append(float(t))
        return original(t, y)

    func.forward = counted
    y0 = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = []
    for keep in (False, True):
        ys = pnode.odeint(func, y0, t, method="implicit_adams", options={"step_size": 0.1, "keep_graph": keep})
        forward = len(calls)
        calls.clear()
        adjoint_steps.clear()
        grads.append(torch.autograd.grad(ys[-1].sum(), (y0, *func.parameters())))
        assert len(adjoint_steps) == 10
        assert (len(calls) == 0) == keep and (keep or len(calls) == forward)
        calls.clear()
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-14


def test_step_callbacks_and_perturb():
    seen, steps = [], []

    class Jumpy(torch.nn.Module):
        def forward(self, t, y):
            seen.append(t.item())
            return -y

        def callback_step(self, t0, y0, dt):
            steps.append((t0.item(), dt.item()))

    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        pnode.odeint(Jumpy(), y0, t, method="explicit_adams", options={"step_size": 0.5})
    assert steps == [(0.0, 0.5), (0.5, 0.5)] and {0.0, 0.5, 1.0} <= set(seen)
    seen.clear()
    with torch.no_grad():
        pnode.odeint(Jumpy(), y0, t, method="implicit_adams", options={"step_size": 0.5, "perturb": True})
    assert not {0.0, 0.5, 1.0} & set(seen)      # one ulp inside the steps instead
    assert min(abs(s - 0.5) for s in seen) < 1e-15


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_event_time_and_its_gradient(method):
    """y' = -y from y0 until y = 1/2: t_e = log(2 y0), d t_e / d y0 = 1 / y0."""
    y0 = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=torch.float64)
    t_e, ys = pnode.odeint_event(lambda t, y: -y, y0, t0, event_fn=lambda t, y: y[0] - 0.5, method=method,
                                 options={"step_size": 0.01, "interp": "cubic", "max_order": 6}, adjoint_params=())
    assert abs(t_e.item() - math.log(3.0)) < 1e-7
    assert abs(ys[-1].item() - 0.5) < 1e-12
    (grad,) = torch.autograd.grad(t_e, y0)
    assert abs(grad.item() - 1 / 1.5) < 1e-6


def test_options_are_checked():
    y0, t = torch.ones(2), torch.tensor([0.0, 1.0])
    f = lambda t, y: -y  # noqa: E731
    for options, phrase in [({"petsc": {"ts_monitor": None}}, "plain torch"), ({"min_step": 0.1}, "plain torch"),
                            ({"max_order": 13}, "at most 12"), ({"max_order": 0}, "positive"),
                            ({"step_size": 0.1, "grid_constructor": lambda f, y, t: t}, "mutually exclusive")]:
        with pytest.raises(pnode.InvalidArgumentError, match=phrase):
            pnode.odeint(f, y0, t, method="implicit_adams", options=options)
    with pytest.raises(pnode.InvalidArgumentError, match="no corrector"):
        pnode.odeint(f, y0, t, method="explicit_adams", options={"max_iters": 3})
    with pytest.raises(pnode.InvalidArgumentError, match="Adams"):
        pnode.odeint(f, y0, t, method="rk4", options={"max_order": 4})
    with pytest.warns(UserWarning, match="RK4"):
        pnode.odeint(f, y0, t, method="explicit_adams", options={"max_order": 3})


def test_method_table_says_they_are_not_petsc():
    rows = {line.split()[0]: line for line in pnode.method_table().splitlines()}
    for name in ("explicit_adams", "implicit_adams", "fixed_adams"):
        assert "not PETSc" in rows[name] and not pnode.METHODS[name].petsc and pnode.METHODS[name].adjoint
    assert pnode.METHODS["dopri5"].petsc and not pnode.METHODS["scipy_solver"].petsc


def test_float32_tuple_state():
    y0 = (torch.tensor([1.0], dtype=torch.float32), torch.tensor([[0.5, 0.25]], dtype=torch.float32))
    t = torch.linspace(0, 1, 5)
    ys = pnode.odeint(lambda t, y: (-y[0], -2 * y[1]), y0, t, method="implicit_adams", options={"step_size": 0.05})
    assert ys[0].dtype == torch.float32 and ys[1].shape == (5, 1, 2)
    assert (ys[1][-1] - y0[1] * math.exp(-2.0)).abs().max() < 1e-6


WORKER = textwrap.dedent("""
    import torch, pnode
    from mpi4py import MPI
    try:
        pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="explicit_adams",
                     comm=MPI.COMM_WORLD)
    except pnode.InvalidArgumentError as error:
        assert "comm=" in str(error), error
        print("refused")
""")


def test_comm_is_refused_clearly_on_two_ranks():
    proc = mpiexec(2, ["-c", WORKER], timeout=120)
    check(proc)
    assert proc.stdout.count("refused") == 2


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_bouncing_ball_events_with_jumps(method):
    """Non-terminal events restart the Adams solve after each bounce (the event state keeps its sign, so
    the restarted solve does not find the same bounce again); first bounce at sqrt(2 h / g), exact here
    (RK4, AB and cubic Hermite are exact for a parabola), with d t1 / d h = 1 / (g t1)."""
    g = 9.81
    ball = lambda t, y: torch.stack([y[1], torch.full_like(y[0], -g)])  # noqa: E731
    y0 = torch.tensor([5.0, 0.0], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 3, 4, dtype=torch.float64)
    ys, bounces = pnode.odeint_with_jumps(ball, y0, t, event_fn=lambda t, y: y[0],
                                          jump=lambda t, y: torch.stack([y[0], -0.8 * y[1]]), adjoint_params=(),
                                          method=method, options={"step_size": 0.01, "interp": "cubic"})
    first = math.sqrt(2 * 5.0 / g)
    assert len(bounces) == 2 and abs(bounces[0].item() - first) < 1e-12
    assert abs(bounces[1].item() - 2.6 * first) < 1e-4      # then 2 e v1 / g later
    (grad,) = torch.autograd.grad(bounces[0], y0)
    assert abs(grad[0].item() - 1 / (g * first)) < 1e-10

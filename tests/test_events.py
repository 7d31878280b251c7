"""Terminal events: event times against analytic ones, gradients through the event time against analytic
derivatives and central finite differences."""

import math

import pytest
import torch

import pnode
from pnode.errors import InvalidArgumentError


class Gravity(torch.nn.Module):
    """A falling ball: (h, v)' = (v, -g); integrated exactly by any method of order >= 2."""

    def __init__(self, g=9.81):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[0])])


def impact(h0, v0, g):
    """Time and velocity of the ball's first crossing of h = 0."""
    root = math.sqrt(v0 * v0 + 2 * g * h0)
    return (v0 + root) / g, -root


# methods that integrate the ball exactly: errors come from the event location only (|h| <= 1e-12)
EXACT = [("dopri5", None), ("rk4", {"step_size": 0.05}), ("cn", {"step_size": 0.05}), ("arkimex3", None)]


@pytest.mark.parametrize("method, options", EXACT)
def test_falling_ball_event_time_and_gradients_are_analytic(method, options):
    h0, v0, g = 10.0, 2.0, 9.81
    field = Gravity(g)
    y0 = torch.tensor([h0, v0], requires_grad=True)
    t_e, ys = pnode.odeint_event(field, y0, torch.tensor(0.0), event_fn=lambda t, y: y[0], method=method,
                                 options=options, rtol=1e-10, atol=1e-12)
    t_true, v_true = impact(h0, v0, g)
    assert ys.shape == (2, 2)
    assert abs(t_e.item() - t_true) < 1e-9 and abs(ys[1, 0].item()) < 1e-9
    assert abs(ys[1, 1].item() - v_true) < 1e-8
    # t_e = (v0 + r) / g with r = sqrt(v0^2 + 2 g h0)
    r = -v_true
    dt_dh0, dt_dv0 = 1 / r, (1 + v0 / r) / g
    dt_dg = (h0 / r) / g - (v0 + r) / g**2
    grads = torch.autograd.grad(t_e, [y0, field.g], retain_graph=True)
    assert torch.allclose(grads[0], torch.tensor([dt_dh0, dt_dv0]), rtol=1e-7, atol=0)
    assert grads[1].item() == pytest.approx(dt_dg, rel=1e-7)
    # the impact velocity v_e = -r through the event time: dv_e/dh0 = -g/r, dv_e/dv0 = -v0/r, dv_e/dg = -h0/r
    grads = torch.autograd.grad(ys[1, 1], [y0, field.g])
    assert torch.allclose(grads[0], torch.tensor([-g / r, -v0 / r]), rtol=1e-7, atol=0)
    assert grads[1].item() == pytest.approx(-h0 / r, rel=1e-7)


class Level(torch.nn.Module):
    """event_fn with a learnable level: y - c."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c))

    def forward(self, t, y):
        return y[0] - self.c


class Decay(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k))

    def forward(self, t, y):
        return -self.k * y


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_decay_event_with_learnable_level_and_rate(reverse):
    """y' = -k y from y0 reaches c at t_e = log(y0 / c) / k (forward) or, with reverse_time and c > y0,
    at t_e = -log(c / y0) / k; gradients w.r.t. y0, k and c are analytic."""
    k, y0_value, c = 0.7, 2.0, (0.5 if not reverse else 5.0)
    field, level = Decay(k), Level(c)
    y0 = torch.tensor([y0_value], requires_grad=True)
    t0 = torch.tensor(0.3, requires_grad=True)
    t_e, ys = pnode.odeint_event(field, y0, t0, event_fn=level, reverse_time=reverse, rtol=1e-11, atol=1e-13)
    t_true = 0.3 + math.log(y0_value / c) / k
    assert t_e.item() == pytest.approx(t_true, abs=1e-8)
    grads = torch.autograd.grad(t_e, [y0, field.k, level.c, t0])
    expected = [1 / (k * y0_value), -math.log(y0_value / c) / k**2, -1 / (k * c), 1.0]
    for got, want in zip(grads, expected):
        assert got.item() == pytest.approx(want, rel=1e-6)


def test_first_of_several_event_functions_stops_the_solve():
    field = Gravity()
    y0 = torch.tensor([10.0, 0.0])
    # h = 5 comes first, h = -100 never in time; the stop is the h = 5 crossing
    levels = lambda t, y: torch.stack([y[0] + 100, y[0] - 5])     # noqa: E731
    t_e, ys = pnode.odeint_event(field, y0, torch.tensor(0.0), event_fn=levels, rtol=1e-10, atol=1e-12)
    assert t_e.item() == pytest.approx(math.sqrt(2 * 5 / 9.81), abs=1e-9)
    assert ys[1, 0].item() == pytest.approx(5.0, abs=1e-9)


def test_event_gradient_matches_central_finite_differences():
    """An MLP field: L = t_e + |y_e|^2 with the event y_0 = 0; dL/dtheta along a random direction."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    field = lambda t, y: net(y) + torch.tensor([-1.0, 0.0])     # noqa: E731 - drifts y_0 down to zero
    params = list(net.parameters())
    y0 = torch.tensor([1.0, 0.5])

    def loss():
        t_e, ys = pnode.odeint_event(field, y0, torch.tensor(0.0), event_fn=lambda t, y: y[0], rtol=1e-12,
                                     atol=1e-14, adjoint_params=params)
        return t_e + ys[1].pow(2).sum()

    grads = torch.autograd.grad(loss(), params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    eps = 1e-5
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            values.append(loss().item())
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    fd = (values[0] - values[1]) / (2 * eps)
    # FD truncation ~eps^2 and the event tolerance 1e-12 / eps: agreement to ~1e-6 relative
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_event_mode_arguments_are_checked():
    with pytest.raises(InvalidArgumentError, match="two times"):
        pnode.odeint(lambda t, y: -y, torch.ones(1), torch.linspace(0, 1, 3), event_fn=lambda t, y: y[0] - 0.5,
                     adjoint_params=())
    with pytest.raises(InvalidArgumentError, match="event_fn must be callable"):
        pnode.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), event_fn=3, adjoint_params=())
    with pytest.raises(InvalidArgumentError, match="step_size"):
        pnode.odeint_event(lambda t, y: -y, torch.ones(1), torch.tensor(0.0), event_fn=lambda t, y: y[0] - 0.5,
                           method="rk4", adjoint_params=())


def test_a_solver_reused_for_events_and_plain_solves():
    solver = pnode.ODESolver(Decay(1.0), rtol=1e-10, atol=1e-12)
    y0 = torch.tensor([1.0])
    for _ in range(2):
        t_e, _ = solver(y0, torch.tensor([0.0, 1.0]), event_fn=lambda t, y: y[0] - 0.25)
        assert t_e.item() == pytest.approx(math.log(4.0), abs=1e-8)
        ys = solver(y0, torch.tensor([0.0, 1.0]))
        assert ys[-1].item() == pytest.approx(math.exp(-1.0), rel=1e-8)


class Bouncing(torch.nn.Module):
    def __init__(self, g=9.81, restitution=0.8):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g))
        self.e = torch.nn.Parameter(torch.tensor(restitution))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[0])])

    def bounce(self, t, y):
        return torch.stack([y[0], -self.e * y[1]])


def bouncing_height(h0, g, e, times):
    """Analytic height of a ball dropped from h0 with restitution e, at the given times."""
    out, t_hit, v = [], math.sqrt(2 * h0 / g), math.sqrt(2 * g * h0)
    hits = [0.0, t_hit]
    while hits[-1] < max(times) + 1:
        v *= e
        hits.append(hits[-1] + 2 * v / g)
    for s in times:
        if s < hits[1]:
            out.append(h0 - 0.5 * g * s * s)
            continue
        k = max(j for j in range(1, len(hits)) if hits[j] <= s)
        up = math.sqrt(2 * g * h0) * e**k
        dt = s - hits[k]
        out.append(up * dt - 0.5 * g * dt * dt)
    return out, hits[1:]


def test_bouncing_ball_with_restitution_heights_times_and_gradients():
    """Non-terminal events with a state jump: heights at the output times and bounce times against the
    analytic ones; d(height at t=3)/d(e, h0) against central finite differences."""
    ball = Bouncing()
    t = torch.linspace(0, 3, 7)
    h0 = torch.tensor(5.0, requires_grad=True)

    def solve(h, e=None):
        if e is not None:
            ball.e.data.fill_(e)
        y0 = torch.stack([h, torch.zeros(())])
        return pnode.odeint_with_jumps(ball, y0, t, event_fn=lambda t, y: y[0], jump=ball.bounce,
                                       rtol=1e-11, atol=1e-13)

    ys, bounces = solve(h0)
    heights, hits = bouncing_height(5.0, 9.81, 0.8, t.tolist())
    assert torch.allclose(ys[:, 0].detach(), torch.tensor(heights), atol=1e-8)
    assert torch.allclose(bounces.detach(), torch.tensor(hits[:len(bounces)]), atol=1e-8)
    assert len(bounces) == sum(1 for s in hits if s <= 3.0)
    g_h0, g_e = torch.autograd.grad(ys[-1, 0], [h0, ball.e])
    eps = 1e-6
    with torch.no_grad():
        fd_h0 = (solve(torch.tensor(5.0 + eps))[0][-1, 0] - solve(torch.tensor(5.0 - eps))[0][-1, 0]) / (2 * eps)
        fd_e = (solve(torch.tensor(5.0), 0.8 + eps)[0][-1, 0] - solve(torch.tensor(5.0), 0.8 - eps)[0][-1, 0]) \
            / (2 * eps)
    # the events are located to |h| <= 1e-12: FD agreement to ~1e-5 relative
    assert g_h0.item() == pytest.approx(fd_h0.item(), rel=1e-5)
    assert g_e.item() == pytest.approx(fd_e.item(), rel=1e-5)


def test_too_many_events_raise():
    ball = Bouncing(restitution=0.2)
    with pytest.raises(pnode.SolverError, match="max_events"):
        pnode.odeint_with_jumps(ball, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 10.0]),
                                event_fn=lambda t, y: y[0], jump=ball.bounce, max_events=5, adjoint_params=())

"""pnode.nn against independent oracles: plain-torch RK4 loops differentiated by autograd (with their own
augmented CNF dynamics, written here again), matrix exponentials for linear flows, central differences.

The oracle loop is the classic RK4 tableau, so the comparisons run pnode's ``rk4classic`` (pnode's
``rk4`` is torchdiffeq's 3/8-rule variant), with and without ``options["keep_graph"]`` (the forward's
stage graphs reused by the adjoint: the CNF's divergence graph must then be built in the forward pass).

Tolerances: pnode and a plain-torch loop compute the same discrete map, so they agree to rounding
(1e-12 relative for the ODE block, 1e-10 for CNFs, whose second derivatives add summation orders); the
analytic density is compared with a dopri5 solve at rtol 1e-11 (1e-8 leaves its truncation error room).
"""

import math

import pytest
import torch
from conftest import MLP
from oracles import rel_err

import pnode
from pnode.nn import CNF, ODEBlock, sample_noise

H = 0.125          # fixed RK4 step of the oracle comparisons: 8 steps on [0, 1]


class Field(MLP):
    """A non-autonomous MLP field ``net(t, z)`` on (N, D) (tanh: smooth, so second derivatives exist)."""

    def __init__(self, dim=2, width=12, seed=0):
        super().__init__(dim, width, seed, weight_scale=0.6, bias_scale=0.2)


def rk4(f, state, t1, h):
    """Plain-torch classic RK4 on a tuple state from 0 to t1 in steps of h (t1/h integer)."""
    n = round(t1 / h)
    for k in range(n):
        t = torch.tensor(k * h)
        add = lambda s, ks, a: tuple(x + a * y for x, y in zip(s, ks))  # noqa: E731
        k1 = f(t, state)
        k2 = f(t + h / 2, add(state, k1, h / 2))
        k3 = f(t + h / 2, add(state, k2, h / 2))
        k4 = f(t + h, add(state, k3, h))
        state = tuple(s + (h / 6) * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4))
    return state


def oracle_cnf_dynamics(net, noise=None, kinetic=False, frobenius=False):
    """The CNF's augmented field written independently: full Jacobian by torch.autograd.functional per
    sample for the exact trace, one VJP for Hutchinson's; differentiable (create_graph)."""

    def f(t, state):
        z = state[0]
        dz = net(t, z)
        if noise is None:
            jac = torch.stack([torch.autograd.functional.jacobian(lambda zi: net(t, zi[None])[0], zi,
                                                                  create_graph=True) for zi in z])
            div = jac.diagonal(dim1=1, dim2=2).sum(-1)
            frob = jac.pow(2).sum((1, 2))
        else:
            (ej,) = torch.autograd.grad(dz, z, noise, create_graph=True)
            div = (ej * noise).sum(-1)
            frob = ej.pow(2).sum(-1)
        out = [dz, -div]
        if kinetic:
            out.append(dz.pow(2).sum(-1))
        if frobenius:
            out.append(frob)
        return tuple(out)

    return f


def oracle_log_prob(net, x, noise=None, kinetic=False, frobenius=False, t1=1.0):
    n = len(x)
    z0 = x if x.requires_grad else x.clone().requires_grad_()   # Hutchinson's VJP needs z in the graph
    state = (z0, torch.zeros(n), *([torch.zeros(n)] * (kinetic + frobenius)))
    final = rk4(oracle_cnf_dynamics(net, noise, kinetic, frobenius), state, t1, H)
    z, delta = final[0], final[1]
    logp = -0.5 * z.pow(2).sum(-1) - z.shape[1] * 0.5 * math.log(2 * math.pi) - delta
    return logp, final[2:]


# ------------------------------------------------------------------------------------ ODEBlock
@pytest.mark.parametrize("keep_graph", [False, True])
def test_odeblock_equals_plain_rk4_and_its_gradients(keep_graph):
    func = Field(dim=3, seed=1)
    block = ODEBlock(func, method="rk4classic", options={"step_size": 0.1, "keep_graph": keep_graph})
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    weights = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    y = block(x)
    loss = (y * weights).sum() + y.pow(2).sum()
    params = [x, *func.parameters()]
    got = torch.autograd.grad(loss, params)

    (ref,) = rk4(lambda t, s: (func(t, s[0]),), (x,), 1.0, 0.1)
    want = torch.autograd.grad((ref * weights).sum() + ref.pow(2).sum(), params)
    assert y.shape == x.shape
    assert rel_err(y.detach(), ref.detach()) < 1e-12
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-12
    assert block.stats.steps == 10 and block.nfe == block.stats.rhs_evals >= 40
    assert block.nfe_backward == block.stats.vjp_evals == 40        # one fused VJP per stage
    assert len(block.step_times) == 11


def test_odeblock_reuses_one_solver_and_rebuilds_on_new_settings():
    func = Field(dim=2)
    block = ODEBlock(func, t1=0.5, rtol=1e-6, atol=1e-8)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    first = block.solver
    y1 = block(x)
    block(x * 2).sum().backward()
    assert block.solver is first                     # the same ODESolver (and PETSc objects) every call
    block.rtol = 1e-3
    assert block.solver is not first                 # settings changed: rebuilt
    second = block.solver
    block.options = {"first_step": 1e-3}
    assert block.solver is not second
    # t=None integrates [0, t1]; an explicit t returns the whole trajectory, like odeint
    t = torch.linspace(0, 0.5, 4)
    block.rtol, block.options = 1e-6, None
    trajectory = block(x, t)
    assert trajectory.shape == (4, 4, 2)
    ref = pnode.odeint(func, x, t, rtol=1e-6, atol=1e-8)
    assert rel_err(trajectory.detach(), ref.detach()) < 1e-12
    # the intermediate outputs are step boundaries, so the steps differ from the [0, t1] solve's
    assert rel_err(trajectory[-1].detach(), y1.detach()) < 1e-5


@pytest.mark.parametrize("keep_graph", [False, True])
def test_odeblock_trajectory_equals_plain_rk4_at_every_output_time(keep_graph):
    """forward(x, t): the states at every output time and the gradients of a loss on all of them equal
    a plain-torch classic RK4 loop on the same fixed grid (outputs on grid points, so the same steps)."""
    func = Field(dim=3, seed=4)
    block = ODEBlock(func, method="rk4classic", options={"step_size": 0.1, "keep_graph": keep_graph})
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    weights = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(6))
    ys = block(x, t)
    params = [x, *func.parameters()]
    got = torch.autograd.grad((ys * weights).sum() + ys[1:].pow(3).sum(), params)

    rows, state = [x], (x,)
    for a, b in zip(t[:-1], t[1:]):       # each output interval in steps of 0.1, its times shifted by a
        (segment,) = rk4(lambda s_t, s, a=float(a): (func(s_t + a, s[0]),), state, float(b - a), 0.1)
        rows.append(segment)
        state = (segment,)
    ref = torch.stack(rows)
    want = torch.autograd.grad((ref * weights).sum() + ref[1:].pow(3).sum(), params)
    assert ys.shape == (4, 5, 3)
    assert rel_err(ys.detach(), ref.detach()) < 1e-12         # the same discrete map: rounding only
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-12
    assert block.stats.steps == 10 and len(block.step_times) == 11
    # t=None returns the last state alone (the same 10 steps; the times 0.3, 0.7 round differently)
    assert rel_err(block(x).detach(), ys[-1].detach()) < 1e-13


def test_odeblock_trajectory_of_a_linear_field_is_the_matrix_exponential():
    """dy/dt = A y: y(t_k) = expm(t_k A) x at each output time, and the gradient w.r.t. A of a loss on
    the trajectory equals autograd through torch.linalg.matrix_exp (an independent oracle), with dopri5
    at rtol 1e-12; also for a decreasing t (a backward-in-time trajectory)."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(7)
            self.a = torch.nn.Parameter(torch.randn(3, 3, generator=g) * 0.7)

        def forward(self, t, y):
            return y @ self.a.T

    func = Linear()
    block = ODEBlock(func, rtol=1e-12, atol=1e-14)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(8))
    weights = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(9))
    for t in (torch.tensor([0.0, 0.2, 0.5, 1.1, 1.5]), torch.tensor([1.5, 1.0, 0.4, 0.0, -0.3])):
        ys = block(x, t)
        (grad,) = torch.autograd.grad((ys * weights).sum(), [func.a])
        exact = torch.stack([x @ torch.linalg.matrix_exp((tk - t[0]) * func.a).T for tk in t])
        (exact_grad,) = torch.autograd.grad((exact * weights).sum(), [func.a])
        assert ys.shape == (5, 4, 3)
        assert rel_err(ys.detach(), exact.detach()) < 1e-10    # dopri5's global error at rtol 1e-12
        assert rel_err(grad, exact_grad) < 1e-9                # the discrete adjoint of that solve
        assert block.stats.steps >= 4


def test_odeblock_float32_conv_field():
    """A conv field on image-shaped float32 states: shapes, dtypes and gradients come through."""

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, t, y):
            return torch.tanh(self.conv(torch.cat([y, t.expand(len(y), 1, *y.shape[2:])], dim=1)))

    func = Conv().float()
    block = ODEBlock(func, method="rk4classic", options={"step_size": 0.25})
    x = torch.randn(3, 2, 5, 5, dtype=torch.float32)
    y = block(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in func.parameters())
    (ref,) = rk4(lambda t, s: (func(t.float(), s[0]),), (x,), 1.0, 0.25)
    assert rel_err(y.detach(), ref.detach()) < 1e-5           # float32 evaluations of the field


# ------------------------------------------------------------------------------------ CNF
def test_cnf_linear_field_has_the_analytic_density():
    """dz/dt = A z + b: z(1) = e^A x + A^{-1}(e^A - I) b, log p(x) = log N(z(1)) + tr(A);
    the exact Jacobian regularizer is |A|_F^2 per unit time."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 3, generator=g) * 0.5
    b = torch.randn(3, generator=g) * 0.3

    class Affine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)
            with torch.no_grad():
                self.linear.weight.copy_(A)
                self.linear.bias.copy_(b)

        def forward(self, t, z):
            return self.linear(z)

    t1 = 0.7
    cnf = CNF(Affine(), t1=t1, regularization=("jacobian_frobenius",), rtol=1e-11, atol=1e-13)
    x = torch.randn(5, 3, generator=g)
    out = cnf(x)
    expm = torch.linalg.matrix_exp(A * t1)
    z1 = x @ expm.T + torch.linalg.solve(A, (expm - torch.eye(3)) @ b)
    want = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3)).log_prob(z1) + torch.trace(A) * t1
    assert rel_err(out.z.detach(), z1) < 1e-8
    assert rel_err(out.log_prob.detach(), want) < 1e-8
    assert rel_err(out.delta_log_prob.detach(), torch.full((5,), -float(torch.trace(A)) * t1)) < 1e-8
    assert rel_err(out.regularization["jacobian_frobenius"].detach(),
                   torch.full((5,), float(A.pow(2).sum()) * t1)) < 1e-8
    # sampling runs the flow backwards: x = e^{-A t1} (z - A^{-1}(e^A - I) b)
    samples = cnf.sample(4, generator=torch.Generator().manual_seed(9))
    base = torch.randn(4, 3, generator=torch.Generator().manual_seed(9))
    back = (base - torch.linalg.solve(A, (expm - torch.eye(3)) @ b)) @ torch.linalg.inv(expm).T
    assert rel_err(samples, back) < 1e-8
    assert rel_err(cnf.inverse(out.z.detach()), x) < 1e-8


@pytest.mark.parametrize("regularized, keep_graph", [(False, False), (True, False), (True, True)])
def test_cnf_exact_trace_gradients_match_plain_rk4(regularized, keep_graph):
    net = Field(dim=2, seed=3)
    regs = ("kinetic_energy", "jacobian_frobenius") if regularized else ()
    cnf = CNF(net, trace="exact", regularization=regs, method="rk4classic",
              options={"step_size": H, "keep_graph": keep_graph})
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(4)).requires_grad_()
    out = cnf(x)
    loss = -out.log_prob.mean() + sum(0.3 * r.mean() for r in out.regularization.values())
    params = [x, *net.parameters()]
    got = torch.autograd.grad(loss, params)

    ref_logp, ref_regs = oracle_log_prob(net, x, kinetic=regularized, frobenius=regularized)
    want = torch.autograd.grad(-ref_logp.mean() + sum(0.3 * r.mean() for r in ref_regs), params)
    assert rel_err(out.log_prob.detach(), ref_logp.detach()) < 1e-12
    for name, ref in zip(regs, ref_regs):
        assert rel_err(out.regularization[name].detach(), ref.detach()) < 1e-12
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-10
    assert cnf.stats.steps == 8


def test_cnf_log_prob_gradient_matches_central_differences():
    """The discrete solution's log-density differentiated by central differences in a few parameter
    entries (step 1e-5: truncation ~1e-10, rounding ~1e-11 of the values)."""
    net = Field(dim=2, seed=6)
    cnf = CNF(net, method="rk4", options={"step_size": H})          # torchdiffeq's 3/8-rule RK4
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(7))
    cnf.log_prob(x).sum().backward()
    eps = 1e-5
    for param, index in [(net.w1, (0, 1)), (net.w1, (2, 3)), (net.b1, (4,)), (net.w2, (5, 1))]:
        with torch.no_grad():
            saved = param[index].item()
            param[index] = saved + eps
            up = cnf.log_prob(x).sum().item()
            param[index] = saved - eps
            down = cnf.log_prob(x).sum().item()
            param[index] = saved
        fd = (up - down) / (2 * eps)
        assert abs(param.grad[index].item() - fd) < 1e-7 * max(1.0, abs(fd)), (index, param.grad[index], fd)


@pytest.mark.parametrize("noise_kind, keep_graph", [("gaussian", False), ("rademacher", False), ("rademacher", True)])
def test_hutchinson_with_fixed_noise_matches_plain_rk4(noise_kind, keep_graph):
    """The adjoint gradient is exact for the drawn noise: it equals autograd through a plain-torch RK4 of
    the same estimator with the same noise (and the noise pnode draws itself is held fixed too)."""
    net = Field(dim=3, seed=8)
    regs = ("kinetic_energy", "jacobian_frobenius")
    cnf = CNF(net, trace="hutchinson", noise=noise_kind, regularization=regs, method="rk4classic",
              options={"step_size": H, "keep_graph": keep_graph}, generator=torch.Generator().manual_seed(11))
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(10))
    noise = sample_noise(x.shape, noise_kind, generator=torch.Generator().manual_seed(12))
    if noise_kind == "rademacher":
        assert set(noise.unique().tolist()) == {-1.0, 1.0}
    params = list(net.parameters())

    out = cnf(x, noise=noise)
    loss = -out.log_prob.mean() + 0.1 * out.regularization["kinetic_energy"].mean() \
        + 0.2 * out.regularization["jacobian_frobenius"].mean()
    got = torch.autograd.grad(loss, params)
    ref_logp, (ke, jf) = oracle_log_prob(net, x, noise=noise, kinetic=True, frobenius=True)
    want = torch.autograd.grad(-ref_logp.mean() + 0.1 * ke.mean() + 0.2 * jf.mean(), params)
    assert rel_err(out.log_prob.detach(), ref_logp.detach()) < 1e-12
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-10

    # noise drawn by the CNF: reproduce it from the same generator seed; a solve in between (another
    # draw) must not change what the first solve's backward pass uses
    drawn = sample_noise(x.shape, noise_kind, generator=torch.Generator().manual_seed(11))
    first = cnf(x)
    cnf(x + 1.0)                                                      # another solve, another draw
    got = torch.autograd.grad(-first.log_prob.mean(), params)
    ref_logp, _ = oracle_log_prob(net, x, noise=drawn)
    want = torch.autograd.grad(-ref_logp.mean(), params)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-10


def test_hutchinson_is_unbiased_for_the_exact_trace():
    """Averaged over many draws the estimate approaches the exact divergence (a statistical check: the
    tolerance is 5 standard errors of the mean)."""
    net = Field(dim=2, seed=13)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(14))
    options = {"step_size": 0.25}
    with torch.no_grad():
        exact = CNF(net, method="rk4", options=options).log_prob(x)
        draws = 400
        hutch = CNF(net, trace="hutchinson", noise="rademacher", method="rk4", options=options,
                    generator=torch.Generator().manual_seed(15))
        batch = x.repeat(draws, 1)
        estimates = hutch.log_prob(batch).view(draws, 3)
    mean, sem = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    assert (sem > 0).all()
    assert ((mean - exact).abs() < 5 * sem + 1e-12).all(), (mean, exact, sem)


def test_cnf_float32_and_sampling_shapes():
    net = Field(dim=2, seed=2).float()
    cnf = CNF(net, trace="hutchinson", method="rk4", options={"step_size": 0.25}, event_shape=(2,))
    samples = cnf.sample(5)
    assert samples.shape == (5, 2) and samples.dtype == torch.float32
    logp = cnf.log_prob(torch.randn(4, 2, dtype=torch.float32))
    assert logp.shape == (4,) and logp.dtype == torch.float32
    logp.sum().backward()
    assert net.w1.grad.dtype == torch.float32
    assert cnf.stats.steps == 4 and cnf.sampling_stats.steps == 4


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("kwargs, name", [
    ({"trace": "approximate"}, "trace"),
    ({"noise": "uniform"}, "noise"),
    ({"regularization": ("kinetic_energy", "l2")}, "regularization"),
    ({"regularization": "kinetic"}, "regularization"),
    ({"t1": 0.0}, "t1"),
    ({"t1": -1.0}, "t1"),
    ({"t1": float("nan")}, "t1"),
    ({"t1": "one"}, "t1"),
])
def test_cnf_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(pnode.InvalidArgumentError, match=name):
        CNF(Field(), **kwargs)


def test_bad_arguments_at_call_time():
    with pytest.raises(pnode.InvalidArgumentError, match="net"):
        CNF(lambda t, z: z)
    with pytest.raises(pnode.InvalidArgumentError, match="func"):
        ODEBlock(lambda t, z: z)
    with pytest.raises(pnode.InvalidArgumentError, match="t1"):
        ODEBlock(Field(), t1=float("inf"))
    cnf = CNF(Field(), trace="hutchinson", method="rk4")
    with pytest.raises(pnode.InvalidArgumentError, match="event_shape"):
        cnf.sample(3)
    with pytest.raises(pnode.InvalidArgumentError, match="noise"):
        cnf.log_prob(torch.randn(4, 2), noise=torch.randn(4, 3))
    with pytest.raises(pnode.InvalidArgumentError, match="x must be"):
        cnf.log_prob(torch.randn(4))
    with pytest.raises(pnode.InvalidArgumentError, match="n must be"):
        CNF(Field(), event_shape=(2,)).sample(0)
    with pytest.raises(pnode.UnknownMethodError):
        ODEBlock(Field(), method="rk-nonexistent")(torch.randn(2, 2))
    with pytest.raises(pnode.InvalidArgumentError, match="noise"):
        sample_noise((2, 2), "poisson")


def test_docstring_examples_run():
    import doctest

    import pnode.nn

    failed, attempted = doctest.testmod(pnode.nn, optionflags=doctest.ELLIPSIS)
    assert attempted >= 4 and failed == 0


def test_odeblock_and_cnf_under_mpi_equal_one_rank(tmp_path):
    """comm=: two ranks on uneven shards give the one-rank outputs, steps and parameter gradients (the
    gradient of the global loss, summed by pnode), for fixed and adaptive steps."""
    import os

    import numpy as np
    from mpi_run import WORKERS, check, mpiexec

    worker = os.path.join(WORKERS, "nn_ranks.py")
    runs = {}
    for n in (1, 2):
        path = str(tmp_path / f"n{n}.npz")
        check(mpiexec(n, [worker, path], timeout=120))
        runs[n] = np.load(path)
    assert sorted(runs[1].files) == sorted(runs[2].files) and len(runs[1].files) == 3 * 4
    for key in runs[1].files:
        if key.endswith("_steps"):
            assert int(runs[1][key]) == int(runs[2][key]) > 0, key
        else:
            np.testing.assert_allclose(runs[2][key], runs[1][key], rtol=1e-10, atol=1e-13, err_msg=key)

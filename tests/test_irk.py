"""Gauss-Legendre (gl4, gl6) and Radau IIA (radauIIA3, radauIIA5): PETSc's TSIRK on pnode's assembled AIJ
Jacobian, forward only.

The oracle is a plain-torch collocation method written here: its Butcher tableau is derived from the
published nodes alone (``A_ij = int_0^{c_i} l_j``, ``b_j = int_0^1 l_j`` with ``l_j`` the Lagrange basis
on the nodes), not read from pnode, and each step's stage equations are solved by Newton's method in
torch with the exact Jacobian of the whole stage system.
"""

from __future__ import annotations

import math

import pytest
import torch

import pnode

torch.set_num_threads(1)

S3, S6, S15 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)
# collocation nodes: Gauss-Legendre (roots of the shifted Legendre polynomials) and Radau IIA (right Radau)
NODES = {
    "gl4": [0.5 - S3 / 6, 0.5 + S3 / 6],
    "gl6": [0.5 - S15 / 10, 0.5, 0.5 + S15 / 10],
    "radauIIA3": [1 / 3, 1.0],
    "radauIIA5": [(4 - S6) / 10, (4 + S6) / 10, 1.0],
}
ORDER = {"gl4": 4, "gl6": 6, "radauIIA3": 3, "radauIIA5": 5}
# Newton solved to rounding in pnode too (PETSc's defaults stop at a relative residual of 1e-8, as
# torchdiffeq's own Broyden iteration does): the comparison is then of the schemes, not of the stopping
TIGHT = {"snes_rtol": 1e-14, "snes_atol": 1e-14, "snes_stol": 1e-16, "ksp_rtol": 1e-14, "ksp_atol": 1e-16}


def collocation_tableau(nodes: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = torch.tensor(nodes, dtype=torch.float64)
    powers = torch.arange(len(nodes), dtype=torch.float64)
    vandermonde_inv = torch.linalg.inv(c[:, None] ** powers)     # column j: the coefficients of l_j

    def integral(x):   # int_0^x tau^m dtau for every m
        return x[:, None] ** (powers + 1) / (powers + 1)

    A = integral(c) @ vandermonde_inv
    b = (integral(torch.ones(1, dtype=torch.float64)) @ vandermonde_inv)[0]
    return A, b, c


def collocation_step(func, t: float, y: torch.Tensor, h: float, tableau) -> torch.Tensor:
    """One step: K_i = f(t + c_i h, y + h sum_j a_ij K_j) by Newton from K_i = f(t, y)."""
    A, b, c = tableau
    times = t + c * h

    def residual(K):
        stages = y + h * torch.einsum("ij,j...->i...", A, K)
        return K - torch.stack([func(times[i], stages[i]) for i in range(len(c))])

    K = func(torch.tensor(t, dtype=torch.float64), y).expand(len(c), *y.shape).clone()
    for _ in range(50):
        r = residual(K)
        jac = torch.autograd.functional.jacobian(residual, K).reshape(r.numel(), r.numel())
        dK = torch.linalg.solve(jac, r.reshape(-1)).reshape(K.shape)
        K = K - dK
        if dK.abs().max() <= 1e-15 * (1 + K.abs().max()):
            break
    return y + h * torch.einsum("i,i...->...", b, K)


def collocation_solve(func, y0: torch.Tensor, t_end: float, n_steps: int, name: str) -> torch.Tensor:
    tableau = collocation_tableau(NODES[name])
    h = t_end / n_steps
    y = y0.clone()
    for k in range(n_steps):
        y = collocation_step(func, k * h, y, h, tableau)
    return y


def forced_pendulum(t, y):
    """Nonlinear and time-dependent (the abscissae matter), on the last dimension."""
    return torch.stack([y[..., 1], -torch.sin(y[..., 0]) - 0.2 * y[..., 1] + 0.5 * torch.cos(2.0 * t)], dim=-1)


@pytest.mark.parametrize("name", list(NODES))
def test_forward_matches_plain_torch_collocation(name):
    y0 = torch.tensor([1.2, -0.4], dtype=torch.float64)
    t = torch.tensor([0.0, 0.6, 1.2], dtype=torch.float64)
    solver = pnode.ODESolver(forced_pendulum, method=name, options={"step_size": 0.1, "petsc": TIGHT})
    got = solver(y0, t)
    want = collocation_solve(forced_pendulum, y0, 1.2, 12, name)
    # both solve the same algebraic equations to rounding; 12 steps of O(1) values: 1e-12 is ~100 ulps
    assert (got[-1] - want).abs().max() < 1e-12, (got[-1], want)
    # torchdiffeq's fixed-grid semantics: steps of step_size from t[0], landing on the output times
    torch.testing.assert_close(solver.step_times, torch.linspace(0.0, 1.2, 13, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert solver.stats.method == name and solver.stats.ts_type == "irk"


@pytest.mark.parametrize("name", list(NODES))
def test_default_newton_tolerances_are_torchdiffeq_like(name):
    """PETSc's default Newton stopping (relative residual 1e-8) still agrees with the exact scheme far
    below the scheme's own error (torchdiffeq's Broyden iteration stops at 1e-8 too)."""
    y0 = torch.tensor([1.2, -0.4], dtype=torch.float64)
    got = pnode.odeint(forced_pendulum, y0, torch.tensor([0.0, 1.2]), method=name, options={"step_size": 0.1})
    want = collocation_solve(forced_pendulum, y0, 1.2, 12, name)
    assert (got[-1] - want).abs().max() < 1e-8


# y' = L y + forcing(t) with forcing (sin 2t, cos t): the exact solution through the augmented linear
# system z = (y, sin 2t, cos 2t, sin t, cos t), z' = M z, is expm(M T) z0
L = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)


def forced_linear(t, y):
    return L @ y + torch.stack([torch.sin(2.0 * t), torch.cos(t)])


def forced_linear_exact(y0: torch.Tensor, T: float) -> torch.Tensor:
    M = torch.zeros(6, 6, dtype=torch.float64)
    M[:2, :2] = L
    M[0, 2] = 1.0            # y0' += sin 2t
    M[1, 5] = 1.0            # y1' += cos t
    M[2, 3], M[3, 2] = 2.0, -2.0      # (sin 2t)' = 2 cos 2t, (cos 2t)' = -2 sin 2t
    M[4, 5], M[5, 4] = 1.0, -1.0      # (sin t)' = cos t, (cos t)' = -sin t
    z0 = torch.cat([y0, torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)])
    return (torch.linalg.matrix_exp(M * T) @ z0)[:2]


# step counts in the asymptotic range and above the rounding floor for each order (measured)
STEPS = {"gl4": (8, 16), "gl6": (4, 8), "radauIIA3": (16, 32), "radauIIA5": (8, 16)}


@pytest.mark.parametrize("name", list(NODES))
def test_observed_order_of_convergence(name):
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    T = 2.0
    exact = forced_linear_exact(y0, T)
    errors = []
    for n in STEPS[name]:
        with torch.no_grad():
            y = pnode.odeint(forced_linear, y0, torch.tensor([0.0, T]), method=name,
                             options={"step_size": T / n, "petsc": TIGHT})
        errors.append((y[-1] - exact).abs().max().item())
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - ORDER[name]) < 0.3, (errors, observed)


class Coupled(torch.nn.Module):
    """Each sample evolves alone (the batch is independent); trainable, so gradients could be asked."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(3, 3, generator=generator, dtype=torch.float64) / 3)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T) - 0.3 * y + 0.1 * torch.sin(t)


@pytest.mark.parametrize("jacobian", [None, "aij", "aij_batched"])
def test_batched_state(jacobian):
    """A (B, d) state: dense rows (the default) and per-sample blocks give the plain-torch scheme run on
    the whole batch at once."""
    func = Coupled()
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    options = {"step_size": 0.25, "petsc": TIGHT} | ({} if jacobian is None else {"jacobian": jacobian})
    with torch.no_grad():
        got = pnode.odeint(func, y0, torch.tensor([0.0, 1.0]), method="radauIIA5", options=options)
        want = collocation_solve(func, y0, 1.0, 4, "radauIIA5")
    assert got.shape == (2, 4, 3)
    assert (got[-1] - want).abs().max() < 1e-12


@pytest.mark.parametrize("name", list(NODES))
def test_gradient_request_raises_adjoint_not_available(name):
    """Forward-only: a call whose inputs require grad still solves (the same values as without grad), and
    backward() raises AdjointNotAvailableError naming methods that have an adjoint."""
    func = Coupled()
    y0 = torch.ones(2, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        plain = pnode.odeint(func, y0, t, method=name)
    ys = pnode.odeint(func, y0, t, method=name)      # the parameters require grad
    assert ys.requires_grad
    torch.testing.assert_close(ys.detach(), plain, rtol=0, atol=0)
    with pytest.raises(pnode.AdjointNotAvailableError, match="TSIRK") as raised:
        ys.sum().backward()
    for alternative in ("trbdf2", "sdirk2", "dirkes324sal", "dopri5"):   # methods that have an adjoint
        assert alternative in str(raised.value)
    x = y0.clone().requires_grad_()
    with pytest.raises(pnode.AdjointNotAvailableError):
        torch.autograd.grad(pnode.odeint(lambda t, y: -y, x, t, method=name).sum(), x)
    # nothing requiring grad: a plain tensor comes back
    assert not pnode.odeint(lambda t, y: -y, y0, t, method=name).requires_grad


@pytest.mark.parametrize("jacobian", ["matrix_free", "batched", "dense"])
def test_shell_jacobians_are_refused_for_irk(jacobian):
    with pytest.raises(pnode.InvalidArgumentError, match="needs options\\['jacobian'\\]='aij'"), torch.no_grad():
        pnode.odeint(lambda t, y: -y, torch.ones(2, 2), torch.tensor([0.0, 1.0]), method="gl4",
                     options={"jacobian": jacobian})


def test_aij_strategy_serves_other_implicit_methods_with_their_adjoint():
    """The assembled Jacobian is a strategy like the others: with a DIRK method (which has an adjoint)
    values and gradients equal the dense strategy's (both solve with exact Jacobians; rounding only)."""
    func = Coupled()
    y0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = {}
    for jacobian in ("dense", "aij", "aij_batched"):
        x = y0.clone().requires_grad_()
        y = pnode.odeint(func, x, torch.tensor([0.0, 0.5, 1.0]), method="sdirk2",
                         options={"step_size": 0.1, "jacobian": jacobian, "petsc": TIGHT})
        results[jacobian] = (y, *torch.autograd.grad(y.pow(2).sum(), (x, func.weight)))
    for jacobian in ("aij", "aij_batched"):
        for got, want in zip(results[jacobian], results["dense"]):
            torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


def test_irk_refuses_comm_on_every_rank():
    """PETSc 3.26's TSIRK crashes on two ranks (measured with its own 'gauss' tableau and an MPIAIJ
    Jacobian): pnode refuses comm= for these methods, on every rank, instead of crashing."""
    from mpi_run import check, mpiexec

    script = ("import torch, pnode\nfrom mpi4py import MPI\nfrom pnode.distributed import shard\n"
              "try:\n    pnode.odeint(lambda t, y: -y, shard(torch.ones(4, 2), MPI.COMM_WORLD), "
              "torch.tensor([0.0, 1.0]), method='gl4', comm=MPI.COMM_WORLD)\n"
              "except pnode.InvalidArgumentError as error:\n    assert 'more than one rank' in str(error)\n"
              "    print('refused', MPI.COMM_WORLD.Get_rank())\n")
    proc = mpiexec(2, ["-c", script], timeout=120)
    check(proc)
    assert sorted(proc.stdout.split()) == ["0", "1", "refused", "refused"]

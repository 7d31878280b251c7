"""The Butcher tableaux pnode registers with PETSc (pnode/_tableaux.py), checked against sources that do
not read pnode's data:

* the test's own transcription of each published tableau (fractions and closed forms below; Gauss and
  Radau IIA are rebuilt from their collocation nodes), driven by a plain-torch Runge-Kutta scheme that
  autograd differentiates: pnode's outputs and its discrete-adjoint gradients must match it;
* the order conditions (all rooted trees up to the nominal order, and a failure one order above), on
  pnode's coefficients: a single mistyped digit breaks them;
* torchdiffeq's own tableau of dopri8 (whose 13-stage rationals the test does not retype);
* the observed order of convergence on a linear ODE against the matrix exponential.
"""

from __future__ import annotations

import ctypes
import functools
import math
from fractions import Fraction as F

import numpy as np
import pytest
import torch
from oracles import rel_err, rk_solve
from petsc4py import PETSc

import pnode
from pnode import _tableaux

SQ2, SQ3, SQ6, SQ15 = math.sqrt(2), math.sqrt(3), math.sqrt(6), math.sqrt(15)


def _full(rows):
    """Explicit tableau rows (strictly lower part) -> full square matrix of floats."""
    s = len(rows) + 1
    return [[float(x) for x in r] + [0.0] * (s - len(r)) for r in [[]] + rows]


def _collocation(nodes):
    """The collocation tableau on ``nodes``: a_ij = integral_0^{c_i} l_j, b_j = integral_0^1 l_j (l_j the
    Lagrange basis), exact polynomial integration in numpy.  Gauss and Radau IIA methods are this."""
    s = len(nodes)
    A, b = np.zeros((s, s)), np.zeros(s)
    for j in range(s):
        others = [nodes[m] for m in range(s) if m != j]
        basis = np.poly1d(np.poly(others)) / np.prod([nodes[j] - o for o in others])
        antiderivative = basis.integ()
        b[j] = antiderivative(1.0) - antiderivative(0.0)
        for i in range(s):
            A[i, j] = antiderivative(nodes[i]) - antiderivative(0.0)
    return A.tolist(), b.tolist(), list(nodes)


# The test's transcription (A, b, c, embedded b or None), written from the papers, not from pnode.
G_ALEX = (2 - SQ2) / 2          # Alexander 1977: the root of 1/2 - 2g + g^2 in (0, 1)
D_TRBDF2 = 1 - SQ2 / 2          # TR-BDF2's diagonal, stage 2 at 2*d = 2 - sqrt(2)
OURS = {
    "heun3": (_full([[F(1, 3)], [0, F(2, 3)]]), [0.25, 0.0, 0.75], None),
    "rk38": (_full([[F(1, 3)], [F(-1, 3), 1], [1, -1, 1]]), [1 / 8, 3 / 8, 3 / 8, 1 / 8], None),
    "fehlberg2": (_full([[F(1, 2)], [F(1, 256), F(255, 256)]]), [1 / 512, 255 / 256, 1 / 512],
                  [1 / 256, 255 / 256, 0.0]),
    "sdirk2": ([[G_ALEX, 0.0], [1 - G_ALEX, G_ALEX]], [1 - G_ALEX, G_ALEX], None),
    "trbdf2": ([[0.0, 0.0, 0.0], [D_TRBDF2, D_TRBDF2, 0.0], [SQ2 / 4, SQ2 / 4, D_TRBDF2]],
               [SQ2 / 4, SQ2 / 4, D_TRBDF2], None),
    "gauss2": ([[0.5]], [1.0], None),
    "gl4": (*_collocation([0.5 - SQ3 / 6, 0.5 + SQ3 / 6])[:2], None),
    "gl6": (*_collocation([0.5 - SQ15 / 10, 0.5, 0.5 + SQ15 / 10])[:2], None),
    "radauIIA3": (*_collocation([1 / 3, 1.0])[:2], None),
    "radauIIA5": (*_collocation([(4 - SQ6) / 10, (4 + SQ6) / 10, 1.0])[:2], None),
}


# Tsitouras 2011, Table 1, to 16 digits (pnode carries 19-20): rows of A, then b (= row 7, FSAL) and the
# embedded fourth-order weights
_TSIT5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
            2.324710524099774, 0.0]
OURS["tsit5"] = (
    _full([[0.161], [-0.008480655492356989, 0.335480655492357],
           [2.897153057105493, -6.359448489975075, 4.362295432869581],
           [5.325864828439257, -11.74888356406283, 7.495539342889836, -0.09249506636175525],
           [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838],
           _TSIT5_B[:6]]),
    _TSIT5_B,
    [0.09468075576583945, 0.009183565540343254, 0.4877705284247616, 1.234297566930479, -2.707712349983525,
     1.866628418170587, 1 / 66])


def _torchdiffeq_dopri8():
    """torchdiffeq's (A, b, embedded b) of dopri8: another transcription of Prince & Dormand's rationals.
    torchdiffeq propagates ``c_sol`` and estimates with ``c_error`` (embedded = c_sol - c_error)."""
    impl = pytest.importorskip("torchdiffeq._impl.dopri8")
    tab = impl._DOPRI8_TABLEAU
    c_sol, c_err = tab.c_sol.numpy(), tab.c_error.numpy()
    s = len(c_sol)
    A = np.zeros((s, s))
    for i, row in enumerate(tab.beta):
        A[i + 1, :len(row)] = row.numpy()
    # torchdiffeq appends a 14th FSAL stage (for its interpolant) that the step never weighs
    assert c_sol[-1] == 0 and c_err[-1] == 0
    return A[:13, :13], c_sol[:13], (c_sol - c_err)[:13]


# ------------------------------------------------------------------ order conditions (B-series trees)
@functools.lru_cache(None)
def _trees(n):
    """Rooted trees with n nodes, each a sorted tuple of its subtrees."""
    if n == 1:
        return ((),)

    def forests(total, largest):
        if total == 0:
            yield ()
            return
        for size in range(min(total, largest), 0, -1):
            for tree in _trees(size):
                for rest in forests(total - size, size):
                    yield (tree, *rest)

    return tuple(sorted({tuple(sorted(f)) for f in forests(n - 1, n - 1)}))


def _gamma(tree):
    size = 1 + sum(_size(t) for t in tree)
    return size * math.prod(_gamma(t) for t in tree)


def _size(tree):
    return 1 + sum(_size(t) for t in tree)


def _stage_weights(tree, A):
    v = np.ones(A.shape[0])
    for sub in tree:
        v = v * (A @ _stage_weights(sub, A))
    return v


def _order_residual(A, b, order):
    """max over trees of exactly ``order`` nodes of |b . Phi(tree) - 1/gamma(tree)|."""
    A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return max(abs(b @ _stage_weights(t, A) - 1.0 / _gamma(t)) for t in _trees(order))


def test_tree_enumeration():
    # OEIS A000081: the numbers of rooted trees the order conditions run over
    assert [len(_trees(n)) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]


@pytest.mark.parametrize("name", sorted(_tableaux.TABLEAUX))
def test_order_conditions(name):
    tab = _tableaux.TABLEAUX[name]
    A = np.array(tab.A)
    assert np.allclose(A.sum(axis=1), tab.c, atol=1e-14, rtol=0)   # c is the row sum (to rounding)
    # rounding of 13-stage rationals stays below 1e-14; a wrong digit anywhere shows as >= 1e-10
    # rounding: 20-digit decimals (tsit5) and rationals times coefficients up to ~50 (dopri8)
    worst = max(_order_residual(A, tab.b, p) for p in range(1, tab.order + 1))
    assert worst < 5e-14, worst
    assert _order_residual(A, tab.b, tab.order + 1) > 1e-6      # exactly the nominal order
    if tab.b_embedded is not None:
        worst = max(_order_residual(A, tab.b_embedded, p) for p in range(1, tab.order))
        assert worst < 5e-14, worst
        assert _order_residual(A, tab.b_embedded, tab.order) > 1e-6


@pytest.mark.parametrize("name", sorted(OURS))
def test_coefficients_match_our_transcription(name):
    tab = _tableaux.TABLEAUX[name]
    A, b, emb = OURS[name]
    # rounding only (tsit5: the test's 16 digits against pnode's 20, coefficients up to 13 in size)
    tol = 2e-15 if name == "tsit5" else 1e-15 if name in ("gl4", "gl6", "radauIIA3", "radauIIA5") else 2e-16
    np.testing.assert_allclose(tab.A, A, rtol=0, atol=tol)
    np.testing.assert_allclose(tab.b, b, rtol=0, atol=tol)
    if emb is None:
        assert tab.b_embedded is None
    else:
        np.testing.assert_allclose(tab.b_embedded, emb, rtol=0, atol=tol)


def test_dopri8_coefficients_match_torchdiffeq():
    A, b, emb = _torchdiffeq_dopri8()
    tab = _tableaux.TABLEAUX["dopri8"]
    np.testing.assert_allclose(tab.A, A, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tab.b, b, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tab.b_embedded, emb, rtol=0, atol=1e-15)


# ------------------------------------------------------------------ plain-torch schemes
def _implicit_rk_step(func, t, y, h, A, b, c):
    """One implicit RK step: Newton on the stage slopes K_i = f(t + c_i h, y + h sum_j a_ij K_j) to
    1e-15, then one Newton step with the Jacobian detached from the detached solution, which carries the
    exact first derivatives (implicit function theorem)."""
    s, n = len(b), y.numel()
    A_t = torch.tensor(A, dtype=torch.float64)

    def residual(K):
        stages = y + h * torch.einsum("ij,j...->i...", A_t, K)
        return K - torch.stack([func(t + c[i] * h, stages[i]) for i in range(s)])

    K = torch.stack([func(t, y)] * s).detach()
    for _ in range(40):
        with torch.enable_grad():
            z = K.detach().requires_grad_()
            r = residual(z).reshape(-1)
            jac = torch.stack([torch.autograd.grad(r, z, e, retain_graph=True)[0].reshape(-1)
                               for e in torch.eye(s * n)])
        step = torch.linalg.solve(jac, r.detach()).reshape(K.shape)
        K = K - step
        if step.norm() <= 1e-15 * max(1.0, K.norm()):
            break
    K = K - torch.linalg.solve(jac.detach(), residual(K).reshape(-1)).reshape(K.shape)
    return y + h * torch.einsum("i,i...->...", torch.tensor(b, dtype=torch.float64), K)


def _implicit_solve(func, y0, step_times, output_times, A, b, c):
    outputs, y, k = [y0], y0, 1
    wanted = [float(s) for s in output_times]
    for t0, t1 in zip(step_times[:-1].tolist(), step_times[1:].tolist()):
        y = _implicit_rk_step(func, torch.tensor(t0), y, t1 - t0, A, b, c)
        if k < len(wanted) and abs(t1 - wanted[k]) <= 1e-12:
            outputs.append(y)
            k += 1
    assert k == len(wanted)
    return torch.stack(outputs)


def _loss(ys, weights):
    return (ys * weights).sum() + 0.1 * ys.pow(2).sum()


EXPLICIT = {"heun3": "heun3", "rk4": "rk38", "fehlberg2": "fehlberg2", "adaptive_heun": None,
            "tsit5": "tsit5", "dopri8": "dopri8"}


def _explicit_reference(name):
    if name == "adaptive_heun":      # PETSc's own 2a: Heun's trapezoid, weights 1/2, 1/2
        return [[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5]
    if name == "dopri8":
        A, b, _ = _torchdiffeq_dopri8()
        return A.tolist(), b.tolist()
    A, b, _ = OURS[EXPLICIT[name]]
    return A, b


@pytest.mark.parametrize("name", sorted(EXPLICIT))
def test_explicit_outputs_and_gradients_match_plain_torch(name, mlp):
    method = pnode.METHODS[name]
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(11)).requires_grad_()
    t = torch.tensor([0.0, 0.35, 0.8, 1.2])
    weights = torch.randn(len(t), 2, 3, generator=torch.Generator().manual_seed(12))
    options = None if method.adaptive else {"step_size": 0.1}
    # (adaptive_heun is second order: a looser tolerance keeps its step count, and the test, small)
    rtol = 1e-4 if name == "adaptive_heun" else 1e-6
    solver = pnode.ODESolver(mlp, method=name, rtol=rtol, atol=rtol * 1e-2, options=options)
    ys = solver(y0, t)
    if method.adaptive:
        assert solver.stats.steps > len(t) - 1           # it adapted between the outputs
    params = [y0, *mlp.parameters()]
    got = torch.autograd.grad(_loss(ys, weights), params)
    # the same step sequence (pnode's accepted steps) in the plain-torch scheme
    ref = rk_solve(mlp, y0, solver.step_times, t, _explicit_reference(name))
    want = torch.autograd.grad(_loss(ref, weights), params)
    assert rel_err(ys.detach(), ref.detach()) < 1e-12
    for g, w in zip(got, want):
        # both are exact derivatives of the same discrete map: only rounding separates them
        assert rel_err(g, w) < 1e-10


TIGHT = {"snes_rtol": 1e-14, "snes_atol": 1e-14, "snes_stol": 1e-16, "snes_max_it": 50,
         "snes_linesearch_type": "basic"}
DIRK = {"implicit_midpoint": "gauss2", "sdirk2": "sdirk2", "trbdf2": "trbdf2"}


@pytest.mark.parametrize("name", sorted(DIRK) + ["implicit_euler", "trapezoid"])
def test_implicit_outputs_and_gradients_match_plain_torch_newton(name, mlp):
    if name in DIRK:
        A, b, _ = OURS[DIRK[name]]
    else:   # torchdiffeq's tableaux of backward Euler and the trapezoidal rule (Lobatto IIIA, s=2)
        A, b = ([[1.0]], [1.0]) if name == "implicit_euler" else ([[0.0, 0.0], [0.5, 0.5]], [0.5, 0.5])
    c = [sum(row) for row in A]
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(13)).requires_grad_()
    t = torch.tensor([0.0, 0.3, 0.7])
    weights = torch.randn(len(t), 2, 3, generator=torch.Generator().manual_seed(14))
    solver = pnode.ODESolver(mlp, method=name, options={"step_size": 0.1, "jacobian": "dense", "petsc": TIGHT})
    ys = solver(y0, t)
    params = [y0, *mlp.parameters()]
    got = torch.autograd.grad(_loss(ys, weights), params)
    ref = _implicit_solve(mlp, y0, solver.step_times, t, A, b, c)
    want = torch.autograd.grad(_loss(ref, weights), params)
    assert rel_err(ys.detach(), ref.detach()) < 1e-12
    for g, w in zip(got, want):
        # exact derivatives of the same discrete map; the margin over rounding is the Newton tolerance
        assert rel_err(g, w) < 1e-10


# ------------------------------------------------------------------ order of convergence, adaptivity
LINEAR = torch.tensor([[-0.5, 1.0, 0.0], [-1.0, -0.5, 0.2], [0.0, -0.2, -1.0]])
FORCING, MU = torch.tensor([0.3, -0.2, 0.5]), 0.7


class Linear(torch.nn.Module):
    """y' = L y + exp(mu t) v: linear, and non-autonomous so that the abscissae c enter the error (an
    autonomous linear ODE only sees the stability polynomial, whose leading error term can vanish)."""

    def __init__(self, forced=True):
        super().__init__()
        self.forced = forced

    def forward(self, t, y):
        out = y @ LINEAR.T
        return out + torch.exp(MU * t) * FORCING if self.forced else out


def _exact(y0, T, forced=True):
    if not forced:
        return torch.linalg.matrix_exp(LINEAR * T) @ y0
    w = torch.linalg.solve(MU * torch.eye(3) - LINEAR, FORCING)   # particular solution exp(mu t) w
    return torch.linalg.matrix_exp(LINEAR * T) @ (y0 - w) + math.exp(MU * T) * w


def _error(name, h, T=4.0):
    y0 = torch.tensor([1.0, 0.5, -0.3])
    with torch.no_grad():
        # linear stages: one exact Newton step each; the tolerances only stop Newton there
        petsc = {"snes_rtol": 1e-13, "snes_atol": 1e-12}
        ys = pnode.odeint(Linear(), y0, torch.tensor([0.0, T]), method=name,
                          options={"step_size": h, "petsc": petsc} if pnode.METHODS[name].implicit else
                          {"step_size": h})
    return float((ys[-1] - _exact(y0, T)).norm())


# step sizes where the error is well above rounding (1e-13) and in the asymptotic regime
# (tsit5's small leading error term makes its observed order approach 5 from above only below h ~ 0.1;
# dopri8 reaches rounding, 1e-15, at h ~ 0.1)
ORDER_STEPS = {"heun3": 0.1, "rk4": 0.2, "fehlberg2": 0.1, "adaptive_heun": 0.1, "tsit5": 0.1, "dopri8": 0.4,
               "implicit_euler": 0.05, "trapezoid": 0.1, "implicit_midpoint": 0.1, "sdirk2": 0.1, "trbdf2": 0.1}


@pytest.mark.parametrize("name", sorted(ORDER_STEPS))
def test_observed_order_of_convergence(name):
    h = ORDER_STEPS[name]
    coarse, fine = _error(name, h), _error(name, h / 2)
    observed = math.log2(coarse / fine)
    assert fine > 1e-13, (name, fine)          # still above rounding: the ratio means something
    assert abs(observed - pnode.METHODS[name].order) < 0.3, (name, observed, coarse, fine)


# (name, rtol, most steps expected, global error allowed in units of rtol).  Fehlberg 1(2) estimates with
# its first-order weights (error h/512 (k3 - k1) ~ h^2/512 y''), far below the second-order solution's
# true error, so its global error sits well above rtol: torchdiffeq's fehlberg2 does the same.
ADAPTIVE = [("tsit5", 1e-8, 80, 50), ("dopri8", 1e-10, 40, 50), ("fehlberg2", 1e-6, 3000, 2000),
            ("adaptive_heun", 1e-6, 3000, 50)]


@pytest.mark.parametrize("name, rtol, max_steps, allowed", ADAPTIVE)
def test_adaptive_pairs_meet_tolerance_with_sane_step_counts(name, rtol, max_steps, allowed):
    """The embedded weights drive PETSc's controller: tighter tolerances take more steps in proportion
    rtol^(-1/order) and the solution meets the tolerance against the exact solution."""
    y0 = torch.tensor([1.0, 0.5, -0.3])
    T = 2.0
    exact = _exact(y0, T)
    steps = []
    for tol in (rtol, rtol / 100):
        solver = pnode.ODESolver(Linear(), method=name, rtol=tol, atol=tol)
        with torch.no_grad():
            ys = solver(y0, torch.tensor([0.0, T]))
        err = float((ys[-1] - exact).norm())
        # local-error control: the global error stays within a small multiple of the tolerance
        assert err < allowed * tol, (name, tol, err)
        steps.append(solver.stats.steps)
    assert 2 <= steps[0] <= max_steps, steps
    order = pnode.METHODS[name].order
    # a 100x tighter tolerance multiplies the steps by about 100^(1/order) (the error-per-step exponent
    # is order for the embedded pair's estimate); a loose band catches a broken estimator
    ratio = steps[1] / steps[0]
    assert 0.4 * 100 ** (1 / order) < ratio < 2.5 * 100 ** (1 / order), (steps, ratio)


# ------------------------------------------------------------------ names, refusals, PETSc registration
def test_rk4_is_torchdiffeqs_three_eighths_rule_and_rk4classic_is_petscs():
    f = lambda t, y: torch.sin(3 * y) + t * y  # noqa: E731
    y0 = torch.tensor([0.3, -1.2, 2.0])
    t = torch.tensor([0.0, 0.37])
    with torch.no_grad():
        got38 = pnode.odeint(f, y0, t, method="rk4", options={"step_size": 0.37})
        classic = pnode.odeint(f, y0, t, method="rk4classic", options={"step_size": 0.37})
    assert rel_err(got38, rk_solve(f, y0, [0.0, 0.37], [0.0, 0.37], OURS["rk38"][:2])) < 1e-14
    assert rel_err(classic, rk_solve(f, y0, [0.0, 0.37], [0.0, 0.37], "4")) < 1e-14
    assert rel_err(got38, classic) > 1e-6   # they really are different schemes


@pytest.mark.parametrize("name", ["explicit_adams", "implicit_adams", "fixed_adams"])
def test_adams_names_run_outside_petsc(name):
    """PETSc has no Adams TS type: these names run pnode's plain-torch integrator (tests/test_adams.py)."""
    with torch.no_grad():
        ys = pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method=name,
                          options={"step_size": 0.01, "max_order": 6})
    assert (ys[-1] - torch.exp(torch.tensor(-1.0))).abs().max() < 1e-6
    assert pnode.last_stats().ts_type.startswith("none")


def test_petsc_option_names_a_registered_tableau():
    """-ts_rk_type tsit5 (here through options['petsc']) finds pnode's registered tableau."""
    solver = pnode.ODESolver(lambda t, y: -y, method="dopri5", options={"petsc": {"ts_rk_type": "tsit5"}})
    with torch.no_grad():
        solver(torch.ones(2), torch.tensor([0.0, 1.0]))
    assert solver.stats.method == "tsit5"


@pytest.mark.parametrize("name", ["gl4", "gl6", "radauIIA3", "radauIIA5"])
def test_irk_tableaux_run_natively_in_petsc_forward_only(name):
    """What pnode's forward-only IRK methods rest on, measured with raw petsc4py: PETSc's TSIRK runs the
    registered tableau at its order when given an assembled AIJ Jacobian, and has no adjoint (error 56)."""
    _tableaux.ensure_registered("irk")
    L = np.array([[-1.0, 0.5], [0.0, -2.0]])
    errors = []
    for h in (0.2, 0.1):
        ts = PETSc.TS().create(PETSc.COMM_SELF)
        ts.setType("irk")
        _tableaux.set_irk_type(ts, name)
        assert _tableaux.irk_type(ts) == name
        u = PETSc.Vec().createSeq(2)
        J = PETSc.Mat().createAIJ((2, 2), nnz=2, comm=PETSc.COMM_SELF)
        J.setUp()

        def ifunction(ts, t, x, xdot, f):
            f.setArray(xdot.getArray(readonly=True) - L @ x.getArray(readonly=True))

        def ijacobian(ts, t, x, xdot, shift, A, P):
            P.setValues([0, 1], [0, 1], (shift * np.eye(2) - L).ravel())
            P.assemble()

        ts.setIFunction(ifunction, u.duplicate())
        ts.setIJacobian(ijacobian, J, J)
        ts.setTimeStep(h)
        ts.setMaxTime(2.0)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.getSNES().setTolerances(rtol=1e-14, atol=1e-14)
        ts.getSNES().getKSP().setType("gmres")
        ts.getSNES().getKSP().getPC().setType("none")
        ts.getSNES().getKSP().setTolerances(rtol=1e-15, atol=1e-15)
        ts.setSaveTrajectory()
        ts.setOptionsPrefix("tableaux_test_")
        options = PETSc.Options()
        options["tableaux_test_ts_adapt_type"] = "none"     # no embedded estimate: fixed steps
        options["tableaux_test_ts_trajectory_type"] = "memory"
        ts.setFromOptions()
        options.delValue("tableaux_test_ts_adapt_type")
        options.delValue("tableaux_test_ts_trajectory_type")
        u.setArray([1.0, 1.0])
        ts.solve(u)
        exact = torch.linalg.matrix_exp(torch.tensor(L) * 2.0).numpy() @ np.ones(2)
        errors.append(np.abs(u.getArray() - exact).max())
        if h == 0.1:
            ts.setCostGradients([u.duplicate()])
            with pytest.raises(PETSc.Error) as raised:
                ts.adjointSolve()
            assert raised.value.ierr == 56    # PETSC_ERR_SUP: TSIRK has no adjoint step
        for obj in (ts, u, J):
            obj.destroy()
    order = _tableaux.TABLEAUX[name].order
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.3 or errors[1] < 1e-12, (errors, observed)


def test_libpetsc_is_the_loaded_copy():
    """Registration went to the libpetsc petsc4py runs (RTLD_NOLOAD found it; a second copy would keep
    its own type lists and setRKType('tsit5') would fail)."""
    lib = _tableaux._libpetsc()
    assert isinstance(lib, ctypes.CDLL)
    _tableaux.ensure_registered("rk")
    ts = PETSc.TS().create(PETSc.COMM_SELF)
    ts.setType("rk")
    ts.setRKType("dopri8")
    assert ts.getRKType() == "dopri8"
    ts.destroy()


# torchdiffeq's SOLVERS table at its current head (torchdiffeq/_impl/odeint.py), written out here
TORCHDIFFEQ_SOLVERS = ("dopri8", "dopri5", "tsit5", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint",
                       "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "implicit_euler",
                       "implicit_midpoint", "trapezoid", "radauIIA3", "gl4", "radauIIA5", "gl6", "sdirk2", "trbdf2",
                       "fixed_adams", "scipy_solver")
# fixed-grid in torchdiffeq (FixedGridODESolver subclasses); the rest adapt
TORCHDIFFEQ_FIXED = {"euler", "midpoint", "heun2", "heun3", "rk4", "implicit_euler", "implicit_midpoint", "trapezoid",
                     "sdirk2", "trbdf2", "gl4", "gl6", "radauIIA3", "radauIIA5", "explicit_adams", "implicit_adams",
                     "fixed_adams"}
# PETSc runs these forward only (TSIRK has no adjoint in PETSc 3.26): tests/test_irk.py
FORWARD_ONLY = {"gl4", "gl6", "radauIIA3", "radauIIA5"}


@pytest.mark.parametrize("name", TORCHDIFFEQ_SOLVERS)
def test_every_torchdiffeq_name_runs_with_its_stepping_or_is_refused(name):
    if name in pnode.METHODS:
        method = pnode.METHODS[name]
        assert method.adaptive == (name not in TORCHDIFFEQ_FIXED), name
        # PETSc's discrete adjoint wherever it has one: not for TSIRK (tests/test_irk.py), nor scipy's wrapper
        assert method.adjoint == (name not in FORWARD_ONLY and method.ts_type != "scipy"), name
        return
    with pytest.raises(pnode.UnknownMethodError, match="not available in pnode"):
        pnode.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method=name)

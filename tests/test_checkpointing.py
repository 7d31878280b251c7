"""Bounded-memory adjoints: gradients with checkpoints equal gradients without (same discrete adjoint,
recomputed states are bitwise replays up to the rounding of step sizes), recomputation counts match the
schedule and the binomial (Revolve) formula, and checkpoint files never outlive the backward pass."""

import glob
import math
import os
import tempfile

import pytest
import torch
from oracles import rel_err

import pnode
from pnode._checkpointing import CheckpointPolicy, predicted_forward_steps

TOL = 1e-13   # replayed steps are the recorded ones; only summation order may differ


def _grads(func, method, options, y0, t, w, **kwargs):
    y = y0.clone().requires_grad_()
    solver = pnode.ODESolver(func, method=method, options=options, **kwargs)
    loss = (solver(y, t) * w).sum()
    return torch.autograd.grad(loss, [y, *func.parameters()]), solver.stats


CASES = [("rk4", {"step_size": 0.05}), ("dopri5", {}), ("bosh3", {}), ("rk8vr", {"step_size": 0.1})]


@pytest.mark.parametrize("method, base", CASES)
@pytest.mark.parametrize("checkpoints", [1, 2, 5, {"ram": 1, "disk": 2}, {"disk": 3}])
def test_gradients_equal_store_all(method, base, checkpoints, mlp):
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.35, 0.6, 1.0])       # several outputs: cotangents injected mid-sweep
    w = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(2))
    ref, full = _grads(mlp, method, base, y0, t, w, rtol=1e-8)
    got, stats = _grads(mlp, method, {**base, "checkpoints": checkpoints}, y0, t, w, rtol=1e-8)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < TOL
    assert stats.steps == full.steps
    k = checkpoints if isinstance(checkpoints, int) else sum(checkpoints.values())
    # at most K checkpoints plus the one step whose stages PETSc holds for the adjoint
    assert stats.peak_stored_states <= k + 1 < full.peak_stored_states
    assert stats.recomputed_steps > 0


def test_decreasing_time_with_checkpoints(mlp):
    y0 = torch.randn(2, 3)
    t = torch.tensor([1.0, 0.3, -0.5])
    w = torch.randn(3, 2, 3)
    ref, _ = _grads(mlp, "dopri5", {}, y0, t, w)
    got, _ = _grads(mlp, "dopri5", {"checkpoints": 3}, y0, t, w)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < TOL


def _binomial_forward_steps(n: int, s: int) -> int:
    """Griewank & Walther (2000): with s checkpoints, reversing n steps costs at least
    r*n - C(s + r, r - 1) forward steps, r the least integer with C(s + r, s) >= n; plus the n steps
    re-run (with their stages kept) right before each adjoint step."""
    r = 0
    while math.comb(s + r, s) < n:
        r += 1
    return r * n - math.comb(s + r, r - 1) + n


@pytest.mark.parametrize("n_steps, k", [(20, 1), (20, 3), (37, 4), (64, 6)])
def test_recomputed_steps_match_schedule_and_binomial_bound(n_steps, k):
    """The executed recomputation equals the schedule's own dry run, and that equals the optimal
    binomial count (an independent formula)."""
    func = torch.nn.Linear(2, 2).double()
    solver = pnode.ODESolver(lambda t, y: func(y), method="rk4", adjoint_params=tuple(func.parameters()),
                             options={"step_size": 1.0 / n_steps, "checkpoints": k})
    y0 = torch.randn(3, 2, requires_grad=True)
    solver(y0, torch.tensor([0.0, 1.0])).sum().backward()
    stats = solver.stats
    policy = CheckpointPolicy.parse(k)
    predicted = predicted_forward_steps(policy, n_steps)
    assert stats.steps == n_steps
    assert stats.recomputed_steps == predicted - n_steps
    assert predicted == _binomial_forward_steps(n_steps, k)
    assert stats.checkpoints_ram >= 1 and stats.peak_stored_states <= k + 1


def _checkpoint_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "pnode-checkpoints-*")))


def test_disk_checkpoints_removed_after_backward(mlp):
    before = _checkpoint_dirs()
    solver = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.05, "checkpoints": {"disk": 3}})
    y0 = torch.randn(2, 3, requires_grad=True)
    ys = solver(y0, torch.tensor([0.0, 1.0]))
    assert _checkpoint_dirs() - before          # the forward pass wrote its checkpoints to disk
    ys.sum().backward()
    assert solver.stats.checkpoints_disk > 0
    assert _checkpoint_dirs() == before


def test_disk_checkpoints_removed_after_exception():
    class FailsInBackward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(0.3))
            self.vjps = 0

        def forward(self, t, y):
            if torch.is_grad_enabled():
                self.vjps += 1
                if self.vjps == 7:
                    raise RuntimeError("boom in the adjoint")
            return -self.k * y

    before = _checkpoint_dirs()
    func = FailsInBackward()
    solver = pnode.ODESolver(func, method="rk4", options={"step_size": 0.05, "checkpoints": {"ram": 1, "disk": 2}})
    ys = solver(torch.ones(3, requires_grad=True), torch.tensor([0.0, 1.0]))
    with pytest.raises(RuntimeError, match="boom in the adjoint"):
        ys.sum().backward()
    assert _checkpoint_dirs() == before
    # and the solver still works
    func.vjps = -10**6
    y0 = torch.ones(3, requires_grad=True)
    (g,) = torch.autograd.grad(solver(y0, torch.tensor([0.0, 1.0]))[-1].sum(), [y0])
    assert torch.allclose(g, torch.exp(torch.tensor(-0.3)).expand(3), rtol=1e-7)


def test_two_forwards_then_backwards_with_checkpoints(mlp):
    solver = pnode.ODESolver(mlp, method="rk4", options={"step_size": 0.1, "checkpoints": 2})
    t = torch.tensor([0.0, 1.0])
    a, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    ya, yb = solver(a, t), solver(b, t)
    ga = torch.autograd.grad(ya.sum(), [a])[0]
    gb = torch.autograd.grad(yb.sum(), [b])[0]
    fa = torch.autograd.grad(pnode.odeint(mlp, a, t, method="rk4", options={"step_size": 0.1}).sum(), [a])[0]
    fb = torch.autograd.grad(pnode.odeint(mlp, b, t, method="rk4", options={"step_size": 0.1}).sum(), [b])[0]
    assert rel_err(ga, fa) < TOL and rel_err(gb, fb) < TOL


def test_custom_schedule_factory(mlp):
    from checkpoint_schedules import HRevolve

    y0, t, w = torch.randn(2, 3), torch.tensor([0.0, 0.5, 1.0]), torch.randn(3, 2, 3)
    ref, _ = _grads(mlp, "rk4", {"step_size": 0.05}, y0, t, w)
    got, stats = _grads(mlp, "rk4", {"step_size": 0.05, "checkpoints": lambda n: HRevolve(n, 2, 2)}, y0, t, w)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < TOL
    assert stats.checkpoints_disk + stats.checkpoints_ram > 0


@pytest.mark.parametrize("value, match", [(0, ">= 1"), ({"ram": -1}, "non-negative"), ({"gpu": 2}, "'ram' and 'disk'"),
                                          ("lots", "int, a dict or a schedule factory")])
def test_bad_checkpoint_options(value, match):
    with pytest.raises(pnode.InvalidArgumentError, match=match):
        pnode.ODESolver(lambda t, y: -y, options={"checkpoints": value})


def test_schedule_object_instead_of_factory_is_refused():
    from checkpoint_schedules import MultistageCheckpointSchedule

    with pytest.raises(pnode.InvalidArgumentError, match="factory"):
        pnode.ODESolver(lambda t, y: -y, options={"checkpoints": MultistageCheckpointSchedule(10, 2, 0)})


def test_petsc_trajectory_options_pass_through(mlp):
    """PETSc's own -ts_trajectory_* options reach PETSc: solution-only trajectories (PETSc recomputes each
    step's stages in the adjoint) give the same gradient; revolve-based ones need a PETSc built with
    revolve, and without it the error says so and points at options['checkpoints']."""
    y0, t, w = torch.randn(2, 3), torch.tensor([0.0, 1.0]), torch.randn(2, 2, 3)
    ref, _ = _grads(mlp, "rk4", {"step_size": 0.1}, y0, t, w)
    got, _ = _grads(mlp, "rk4", {"step_size": 0.1, "petsc": {"ts_trajectory_solution_only": 1}}, y0, t, w)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12
    with pytest.raises(pnode.PetscConfigurationError, match="checkpoints"):
        _grads(mlp, "rk4", {"step_size": 0.1, "petsc": {"ts_trajectory_max_cps_ram": 3}}, y0, t, w)


# Newton solved to rounding: the replayed stages then equal the stored run's to rounding.  (With the
# default snes_rtol, ARKIMEX/DIRK replays restarted at a checkpoint solve the first stage's slope
# f(t_n, y_n) exactly, where the stored run carried the last stage's slope, which meets it only to the
# Newton tolerance: measured up to 4e-12 apart.)
NEWTON_TIGHT = {"snes_rtol": 1e-13, "snes_atol": 1e-13, "snes_stol": 1e-16, "snes_max_it": 50,
                "snes_linesearch_type": "basic"}
IMPLICIT_CASES = [
    ("beuler", {"step_size": 0.1, "jacobian": "batched"}),
    ("cn", {"step_size": 0.1, "jacobian": "matrix_free"}),
    ("theta", {"step_size": 0.1, "theta": 0.7}),
    ("arkimex4", {"step_size": 0.1}),            # explicit first stage: start-slope solve at each restart
    ("arkimex4", {"jacobian": "batched"}),       # adaptive: the schedule runs in the backward pass
    ("dirkes324sal", {}),                        # stiffly accurate ESDIRK ('sal'), adaptive
    ("dirks212", {"step_size": 0.1}),
]


@pytest.mark.parametrize("method, base", IMPLICIT_CASES)
def test_implicit_gradients_equal_store_all_and_recompute_as_scheduled(method, base, mlp):
    y0 = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.35, 0.6, 1.0])
    w = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(2))
    base = {**base, "petsc": NEWTON_TIGHT}
    ref, full = _grads(mlp, method, base, y0, t, w, rtol=1e-4, atol=1e-6)
    got, stats = _grads(mlp, method, {**base, "checkpoints": 2}, y0, t, w, rtol=1e-4, atol=1e-6)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < TOL
    assert stats.steps == full.steps
    # the binomial schedule's own dry run, plus (adaptive) the replay of the whole forward it starts with
    replay = 0 if base.get("step_size") else full.steps
    assert stats.recomputed_steps == predicted_forward_steps(CheckpointPolicy.parse(2), full.steps) \
        - full.steps + replay
    assert stats.peak_stored_states <= 3 < full.peak_stored_states


def test_imex_gradients_equal_store_all_with_checkpoints(mlp):
    from pnode import IMEXField

    class Damping(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rates = torch.nn.Parameter(torch.tensor([1.0, 10.0, 40.0]))

        def forward(self, t, y):
            return -self.rates * y

    field = IMEXField(implicit=Damping(), explicit=mlp)
    y0, t, w = torch.randn(2, 3), torch.tensor([0.0, 0.3, 0.5]), torch.randn(3, 2, 3)
    for base in ({"step_size": 0.05}, {}):
        base = {**base, "petsc": NEWTON_TIGHT}
        ref, full = _grads(field, "arkimex3", base, y0, t, w, rtol=1e-4, atol=1e-6)
        got, stats = _grads(field, "arkimex3", {**base, "checkpoints": 2}, y0, t, w, rtol=1e-4, atol=1e-6)
        for a, b in zip(got, ref):
            assert rel_err(a, b) < TOL
        assert stats.recomputed_steps > 0 and stats.steps == full.steps

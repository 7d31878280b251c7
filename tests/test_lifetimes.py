"""PETSc objects are freed deterministically: when the one-shot odeint's graph is freed (or at once
without one), when a solver closes or is deleted, never left for the cyclic garbage collector.

The oracle is the number of live PETSc objects (wrappers with a non-null handle) that the garbage
collector can see, counted with the collector switched off, so nothing is collected behind our back.
"""

import gc

import pytest
import torch

import pnode
from pnode._petsc import PETSc

CASES = {
    "explicit": dict(method="rk4", options={"step_size": 0.1}),
    "adaptive": dict(method="dopri5"),
    "implicit": dict(method="beuler", options={"step_size": 0.1}),
    "imex-batched": dict(method="arkimex3", options={"jacobian": "batched"}),
    "checkpointed": dict(method="rk4", options={"step_size": 0.05, "checkpoints": 3}),
}


def live_petsc_objects() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, PETSc.Object) and o.handle)


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _loop(net, calls: int, backward: bool, **kwargs):
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    for _ in range(calls):
        ys = pnode.odeint(lambda t, y: net(y), y0, t, adjoint_params=tuple(net.parameters()), **kwargs)
        if backward:
            ys.pow(2).sum().backward()


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_shot_odeint_with_backward_frees_everything(case, net, no_gc):
    _loop(net, 2, True, **CASES[case])      # warm-up: PETSc's own once-per-process objects
    before = live_petsc_objects()
    _loop(net, 20, True, **CASES[case])
    assert live_petsc_objects() == before


@pytest.mark.parametrize("case", ["explicit", "implicit"])
def test_outputs_dropped_without_backward_and_no_grad_solves_free_everything(case, net, no_gc):
    _loop(net, 2, False, **CASES[case])
    before = live_petsc_objects()
    _loop(net, 10, False, **CASES[case])
    with torch.no_grad():
        _loop(net, 10, False, **CASES[case])
    assert live_petsc_objects() == before


def test_a_live_graph_holds_its_objects_until_it_is_freed(net, no_gc):
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    before = live_petsc_objects()
    ys = pnode.odeint(lambda t, y: net(y), y0, t, method="rk4", adjoint_params=tuple(net.parameters()))
    assert live_petsc_objects() > before      # the count sees the driver's objects: the test can fail
    ys.sum().backward()
    del ys
    assert live_petsc_objects() == before


def test_solver_deleted_before_backward_still_differentiates_then_frees(net, no_gc):
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    before = live_petsc_objects()
    ys = pnode.ODESolver(net_field(net), method="rk4", adjoint_params=tuple(net.parameters()))(y0, t)
    ys.sum().backward()                        # the graph kept the driver alive
    assert y0.grad is not None and torch.isfinite(y0.grad).all()
    del ys
    assert live_petsc_objects() == before


def test_reused_solver_rebuilt_for_a_new_shape_and_closed(net, no_gc):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    before = live_petsc_objects()
    solver = pnode.ODESolver(net_field(net), method="rk4", adjoint_params=tuple(net.parameters()))
    first = solver(torch.randn(4, 3, dtype=torch.float64, requires_grad=True), t)
    solver(torch.randn(5, 3, dtype=torch.float64), t).sum().backward()     # rebuilt for the new shape
    first.sum().backward()                     # the first graph still holds the first driver
    del first
    solver.close()
    assert live_petsc_objects() == before
    ys = solver(torch.randn(2, 3, dtype=torch.float64, requires_grad=True), t)   # usable after close
    solver.close()
    with pytest.raises(pnode.BackwardError, match="closed"):
        ys.sum().backward()


def net_field(net):
    return lambda t, y: net(y)

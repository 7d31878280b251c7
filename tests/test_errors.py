"""Every error case of DESIGN.md's "Errors" gives a pnode exception that says what to fix, an exception
raised inside ``func`` reaches the caller as itself, and the solver works again after any error."""

import pytest
import torch

import pnode
from pnode.errors import (
    InvalidArgumentError,
    MaxStepsError,
    NonFiniteError,
    ShapeMismatchError,
    SolverError,
    UnknownMethodError,
)


class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, t, y):
        return -self.k * y


T = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize("t, match", [
    (torch.tensor([0.0, 1.0, 0.5]), "strictly increasing or strictly decreasing"),
    (torch.tensor([0.0, 0.0, 1.0]), "strictly increasing"),
    (torch.tensor([[0.0, 1.0]]), "1-D"),
    (torch.tensor([0, 1]), "floating-point"),
    (torch.tensor([0.0, float("nan")]), "NaN"),
    ([0.0, 1.0], "torch.Tensor"),
])
def test_invalid_t(t, match):
    with pytest.raises(InvalidArgumentError, match=match):
        pnode.odeint(Decay(), torch.ones(2), t)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(UnknownMethodError) as info:
        pnode.odeint(Decay(), torch.ones(2), T, method="rk45")
    for name in ("dopri5", "rk4", "rk8vr", "euler"):
        assert name in str(info.value)


@pytest.mark.parametrize("options, match", [
    ({"stepsize": 0.1}, "unknown option"),
    ({"step_size": -0.1}, "positive"),
    ({"max_num_steps": 0}, "positive int"),
    ({"petsc": "ts_monitor"}, "dict of PETSc options"),
])
def test_bad_options(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        pnode.odeint(Decay(), torch.ones(2), T, options=options)


@pytest.mark.parametrize("kwargs, match", [({"rtol": -1.0}, "rtol"), ({"atol": "x"}, "atol")])
def test_bad_tolerances(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        pnode.odeint(Decay(), torch.ones(2), T, **kwargs)


def test_bad_state_dtype():
    with pytest.raises(InvalidArgumentError, match="dtype"):
        pnode.odeint(Decay(), torch.ones(2, dtype=torch.int64), T)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        pnode.odeint(Decay(), torch.ones(2, dtype=torch.complex128), T)


def test_wrong_output_shape_and_dtype():
    with pytest.raises(ShapeMismatchError, match=r"shape \(3,\) but the state has shape \(2,\)"):
        with torch.no_grad():
            pnode.odeint(lambda t, y: torch.ones(3), torch.ones(2), T)
    with pytest.raises(ShapeMismatchError, match="dtype"):
        with torch.no_grad():
            pnode.odeint(lambda t, y: y.float(), torch.ones(2), T)


def test_plain_function_tensors_are_found_or_given():
    """A plain function closing over tensors that require grad: pnode finds them from its graph (as
    torchdiffeq's odeint differentiates them), or takes them from adjoint_params."""
    k = torch.tensor(0.5, requires_grad=True)
    w = torch.tensor(2.0, requires_grad=True)
    y = pnode.odeint(lambda t, y: -k * w * y, torch.ones(2), T)
    gk, gw = torch.autograd.grad(y[-1].sum(), [k, w])
    # y(1) = exp(-k w): d/dk = -w exp(-k w), d/dw = -k exp(-k w), summed over two components
    assert gk.item() == pytest.approx(-2 * 2.0 * torch.exp(torch.tensor(-1.0)).item(), rel=1e-6)
    assert gw.item() == pytest.approx(-2 * 0.5 * torch.exp(torch.tensor(-1.0)).item(), rel=1e-6)
    y = pnode.odeint(lambda t, y: -k * y, torch.ones(2), T, adjoint_params=(k,))
    (g,) = torch.autograd.grad(y[-1].sum(), [k])
    assert g.item() == pytest.approx(-2 * torch.exp(torch.tensor(-0.5)).item(), rel=1e-6)


class Boom(RuntimeError):
    pass


class Exploding(torch.nn.Module):
    """Raises in the forward pass after ``after`` calls, or in the backward pass."""

    def __init__(self, after=None, in_backward=False):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.5))
        self.after, self.in_backward, self.calls = after, in_backward, 0

    def forward(self, t, y):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise Boom(f"boom at call {self.calls}")
        if self.in_backward and torch.is_grad_enabled():
            raise Boom("boom in backward")
        return -self.k * y


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_exception_in_func_forward_reaches_caller_and_solver_recovers(method):
    func = Exploding(after=5)
    solver = pnode.ODESolver(func, method=method, options={"step_size": 0.1})
    with pytest.raises(Boom, match="boom at call 6"):
        solver(torch.ones(3), T)
    func.after = None
    y = solver(torch.ones(3), T)
    assert torch.allclose(y[-1], torch.exp(torch.tensor(-0.5)) * torch.ones(3), atol=1e-6)


def test_exception_in_func_backward_reaches_caller_and_solver_recovers():
    func = Exploding(in_backward=True)
    solver = pnode.ODESolver(func, method="rk4", options={"step_size": 0.1})
    y0 = torch.ones(3, requires_grad=True)
    y = solver(y0, T)
    with pytest.raises(Boom, match="boom in backward"):
        y.sum().backward()
    func.in_backward = False
    y = solver(y0, T)
    (g,) = torch.autograd.grad(y[-1].sum(), [y0])
    # RK4 with h=0.1 reproduces exp(-0.5) to ~1e-8
    assert torch.allclose(g, torch.exp(torch.tensor(-0.5)).expand(3), rtol=1e-7)


class Blowup(torch.nn.Module):
    def forward(self, t, y):
        return y**2


@pytest.mark.parametrize("method, options", [("rk4", {"step_size": 0.1}), ("euler", {"step_size": 0.05})])
def test_nan_in_fixed_step_solve_is_detected(method, options):
    solver = pnode.ODESolver(Blowup(), method=method, options=options)
    with pytest.raises(NonFiniteError) as info:
        with torch.no_grad():
            solver(torch.full((2,), 10.0), torch.tensor([0.0, 5.0]))
    assert 0.0 < info.value.time <= 5.0
    with torch.no_grad():
        ok = solver(torch.full((2,), 0.1), torch.tensor([0.0, 1.0]))
        fresh = pnode.ODESolver(Blowup(), method=method, options=options)(torch.full((2,), 0.1),
                                                                          torch.tensor([0.0, 1.0]))
    assert torch.equal(ok, fresh)


def test_nan_in_adaptive_solve_is_detected():
    def nan_field(t, y):
        return y * float("nan") if t > 0.5 else -y

    with pytest.raises((NonFiniteError, SolverError)) as info:
        with torch.no_grad():
            pnode.odeint(nan_field, torch.ones(2), T, method="dopri5")
    assert "t=" in str(info.value)


def test_step_size_underflow_or_rejections_surface_with_reason_and_time():
    """y' = y^2 from y=1 blows up at t=1; adaptive steps shrink until PETSc gives up."""
    with pytest.raises(SolverError) as info:
        with torch.no_grad():
            pnode.odeint(Blowup(), torch.ones(1), torch.tensor([0.0, 2.0]), method="dopri5")
    err = info.value
    assert err.reason and 0.9 < err.time <= 1.0 + 1e-6, (err.reason, err.time)


def test_max_num_steps():
    with pytest.raises(MaxStepsError, match="max_num_steps") as info:
        with torch.no_grad():
            pnode.odeint(Decay(), torch.ones(2), torch.tensor([0.0, 10.0]), method="rk4",
                         options={"step_size": 0.01, "max_num_steps": 50})
    assert info.value.time == pytest.approx(0.5)


def test_parameters_changed_before_backward():
    func = Decay()
    y0 = torch.ones(2, requires_grad=True)
    y = pnode.odeint(func, y0, T, method="rk4")
    with torch.no_grad():
        func.k.add_(1.0)
    with pytest.raises(pnode.BackwardError, match="modified in place"):
        y.sum().backward()


@pytest.mark.parametrize("method, petsc, name", [
    ("dopri5", {"ts_max_steps": "many"}, "ts_max_steps"),            # not an int
    ("dopri5", {"ts_adapt_type": "bogus"}, "ts_adapt_type"),         # no such adaptor
    ("beuler", {"ts_rtol": "1e-3", "snes_max_it": "x"}, "snes_max_it"),   # the bad one of two
    ("beuler", {"ksp_type": "nonexistent"}, "ksp_type"),
])
def test_petsc_option_rejected_by_petsc_names_the_option(method, petsc, name):
    with torch.no_grad(), pytest.raises(InvalidArgumentError, match=rf"options\['petsc'\]\['{name}'\]"):
        pnode.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), method=method,
                     options={"petsc": petsc})


def test_meta_tensors_are_refused_with_the_argument_named():
    with pytest.raises(InvalidArgumentError, match="t is on the 'meta' device"):
        pnode.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3, device="meta"), adjoint_params=())
    with pytest.raises(InvalidArgumentError, match="y0 is on the 'meta' device"):
        pnode.odeint(lambda t, y: -y, torch.ones(2, device="meta"), torch.linspace(0, 1, 3), adjoint_params=())


def test_non_finite_vector_field_at_the_start_of_an_adaptive_solve():
    with pytest.raises(pnode.NonFiniteError, match="initial state"):
        with torch.no_grad():
            pnode.odeint(lambda t, y: y * float("inf"), torch.ones(2), torch.tensor([0.0, 1.0]))

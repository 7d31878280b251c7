"""The method table: names, PETSc types, defaults, and the schemes PETSc really runs."""

import pytest
import torch
from oracles import TABLEAUX, rel_err, rk_solve

import pnode
from pnode import _tableaux
from pnode.methods import METHODS, get_method


def test_every_petsc_rk_tableau_has_a_name():
    registered = {name for name, tab in _tableaux.TABLEAUX.items() if tab.family == "rk"}
    tableaux = {m.tableau for m in METHODS.values() if m.ts_type == "rk"} - registered
    assert tableaux == {"1fe", "2a", "2b", "3", "3bs", "4", "5f", "5dp", "5bs", "6vr", "7vr", "8vr"}
    for tableau in tableaux:
        # rk4 is torchdiffeq's 3/8 rule (test_tableaux.py); PETSc's classic RK4 is rk4classic
        name = "rk4classic" if tableau == "4" else "rk" + tableau
        assert get_method(name).tableau == tableau


@pytest.mark.parametrize("alias, petsc", [("euler", "rk1fe"), ("midpoint", "rk2b"), ("bosh3", "rk3bs"),
                                          ("dopri5", "rk5dp"), ("heun2", "rk2a"), ("adaptive_heun", "rk2a")])
def test_torchdiffeq_names(alias, petsc):
    assert get_method(alias).tableau == get_method(petsc).tableau


def test_names_are_case_insensitive_and_default_is_dopri5():
    assert get_method("DOPRI5").name == "dopri5"
    solver = pnode.ODESolver(lambda t, y: -y)
    assert solver.method.name == "dopri5"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_solves_exponential_decay(name):
    """Forward accuracy of every row against exp(-t), at the order the row claims."""
    method = METHODS[name]
    y0 = torch.ones(3)
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        # implicit rows at a looser tolerance: low-order ones would take ~1e4 Newton solves at 1e-10
        rtol = 1e-7 if method.implicit else 1e-10
        options = None if method.adaptive else {"step_size": 0.01}
        if name == "explicit_adams":
            # its default max_order=12 (Adams-Bashforth 11) is unstable here (h*lambda = -0.01), as in torchdiffeq
            options["max_order"] = 10
        solver = pnode.ODESolver(lambda t, y: -y, method=name, rtol=rtol, atol=rtol * 1e-2, options=options)
        ys = solver(y0, t)
    err = (ys[-1] - torch.exp(torch.tensor(-1.0))).abs().max().item()
    # implicit adaptive rows run at rtol 1e-7; the low-order ones (BDF2, ESDIRK 1(2), 2(1)) control a local
    # error estimate, so their global error is well above rtol
    bound = (1e-4 if method.implicit else 1e-8) if method.adaptive else 2 * 0.01**method.order
    assert err < bound, (name, err)
    assert solver.stats.method in (name, f"rk{method.tableau}")


@pytest.mark.parametrize("tableau", sorted(TABLEAUX))
def test_petsc_runs_the_tableau_we_name(tableau):
    """One fixed step of PETSc's tableau equals one step of the literature tableau (nonlinear f, so
    every coefficient matters)."""
    f = lambda t, y: torch.sin(3 * y) + t * y  # noqa: E731
    y0 = torch.tensor([0.3, -1.2, 2.0])
    t = torch.tensor([0.0, 0.37])
    with torch.no_grad():
        name = "rk4classic" if tableau == "4" else "rk" + tableau   # rk4 is the 3/8 rule
        got = pnode.odeint(f, y0, t, method=name, options={"step_size": 0.37})
    want = rk_solve(f, y0, [0.0, 0.37], [0.0, 0.37], tableau)
    assert rel_err(got, want) < 1e-14


def test_fixed_methods_step_on_output_grid_like_torchdiffeq():
    solver = pnode.ODESolver(lambda t, y: -y, method="rk4")
    t = torch.tensor([0.0, 0.1, 0.5, 0.6])
    with torch.no_grad():
        solver(torch.ones(1), t)
    assert torch.equal(solver.step_times, t)

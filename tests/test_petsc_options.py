"""PETSc options from Python and from the command line (which wins), -ts_monitor and -log_view."""

import subprocess
import sys
import textwrap

import torch

import pnode

SCRIPT = textwrap.dedent("""
    import sys, torch, pnode
    func = lambda t, y: -y
    solver = pnode.ODESolver(func, method="dopri5", options={"petsc": {"ts_rk_type": "3bs"}})
    with torch.no_grad():
        solver(torch.ones(3), torch.tensor([0.0, 1.0]))
    print("RAN", solver.stats.method, solver.stats.steps)
""")


def _run(*petsc_args):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *petsc_args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_python_petsc_options_apply():
    y0 = torch.ones(3)
    solver = pnode.ODESolver(lambda t, y: -y, method="dopri5", options={"petsc": {"ts_rk_type": "5bs"}})
    with torch.no_grad():
        solver(y0, torch.tensor([0.0, 1.0]))
    assert solver.stats.method == "rk5bs"
    # the option does not leak into the next solver
    other = pnode.ODESolver(lambda t, y: -y, method="dopri5")
    with torch.no_grad():
        other(y0, torch.tensor([0.0, 1.0]))
    assert other.stats.method == "dopri5"


def test_command_line_wins_over_python():
    assert "RAN rk3bs" in _run()
    assert "RAN rk8vr" in _run("-ts_rk_type", "8vr")


def test_ts_monitor_and_log_view():
    out = _run("-ts_monitor", "-log_view")
    assert "TS dt" in out                    # one line per step from -ts_monitor
    assert "Performance Summary" in out or "PETSc Performance" in out or "Event" in out


def test_fixed_step_by_command_line_adapt_none():
    out = _run("-ts_adapt_type", "none", "-ts_dt", "0.25")
    assert "RAN rk3bs" in out


IMPLICIT_SCRIPT = textwrap.dedent("""
    import torch, pnode
    func = lambda t, y: -50.0 * (y - torch.cos(t))
    solver = pnode.ODESolver(func, method="arkimex4", rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        solver(torch.ones(3), torch.tensor([0.0, 1.0]))
    print("RAN", solver.stats.newton_iterations, solver.stats.krylov_iterations)
""")


def test_snes_and_ksp_monitors_see_pnode_newton_loop():
    """pnode's Newton loop (a Python SNES) reports its residuals and linear solves to PETSc's monitors,
    and -snes_type newtonls replaces it with PETSc's loop."""
    def run(*args):
        proc = subprocess.run([sys.executable, "-c", IMPLICIT_SCRIPT, *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = run("-snes_monitor", "-ksp_monitor", "-snes_converged_reason")
    assert "SNES Function norm" in out and "KSP Residual norm" in out
    assert "Nonlinear solve converged due to CONVERGED_SNORM_RELATIVE" in out
    newton, krylov = map(int, out.split("RAN")[-1].split())
    assert newton > 0 and krylov == newton      # preonly: one block solve per Newton iteration
    assert "type: python" in run("-snes_view")
    assert "type: newtonls" in run("-snes_view", "-snes_type", "newtonls")

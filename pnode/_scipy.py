"""``method="scipy_solver"``: torchdiffeq's wrapper of ``scipy.integrate.solve_ivp``, forward only.

scipy integrates with NumPy, outside PETSc, so there is no discrete adjoint: a solve that asks for
gradients returns the solution with a graph whose backward raises
:class:`~pnode.errors.AdjointNotAvailableError` (methods with an adjoint are listed in the message).
``options["solver"]`` names scipy's method (``"RK45"`` by default, as torchdiffeq); ``min_step`` and
``max_step`` go to scipy (``min_step`` is LSODA's).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._spec import SolveSpec
from .errors import InvalidArgumentError, SolverError

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def solve_with_scipy(func: Callable, spec: SolveSpec, y0: torch.Tensor, rtol: float, atol: float,
                     solver: str | None, min_step: float | None, max_step: float | None) -> torch.Tensor:
    """``(len(t), N)`` float64 outputs of ``solve_ivp`` at the output times (integration time ``tau``)."""
    from scipy.integrate import solve_ivp

    name = solver or "RK45"
    if name not in SCIPY_SOLVERS:
        raise InvalidArgumentError(f"options['solver'] must be one of {', '.join(SCIPY_SOLVERS)} for "
                                   f"method='scipy_solver', got {solver!r}")
    layout, sign = spec.layout, spec.sign
    outputs = torch.empty(len(spec.taus), layout.size, dtype=torch.float64)
    outputs[0].copy_(y0)
    if len(spec.taus) == 1:
        return outputs

    def rhs(tau: float, y: np.ndarray) -> np.ndarray:
        out = np.empty_like(y)
        with torch.no_grad():
            result = layout.check_output(func(torch.scalar_tensor(sign * tau, dtype=spec.time_dtype),
                                              layout.pack(layout.views(np.ascontiguousarray(y)))))
        layout.write(out, result, sign)
        return out

    extra = {}
    if max_step is not None:
        extra["max_step"] = max_step
    if min_step is not None and name == "LSODA":
        extra["min_step"] = min_step
    solution = solve_ivp(rhs, (float(spec.taus[0]), float(spec.taus[-1])), y0.numpy(), method=name,
                         t_eval=spec.taus, rtol=rtol, atol=atol, **extra)
    if solution.status < 0 or solution.y.shape[1] != len(spec.taus):
        raise SolverError(f"scipy's {name} failed: {solution.message}", reason="SCIPY_FAILED",
                          time=sign * float(solution.t[-1]) if len(solution.t) else sign * float(spec.taus[0]))
    outputs.copy_(torch.from_numpy(solution.y.T))
    return outputs

"""One PETSc TS built from a method row, the options and the PETSc options database, driven forward
over the output times and backward through TSAdjoint.

The driver owns every PETSc object of one problem shape and reuses them across calls: a training loop
rebuilds nothing while shape and dtype stay the same.  It keeps the step times of the latest forward
solve, so a backward pass whose trajectory is gone (a second forward ran in between, or a second
backward) replays exactly the same steps before running the adjoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ._petsc import PETSc
from .bridge import vec_as_tensor
from .errors import InvalidArgumentError, MaxStepsError, NonFiniteError, PnodeError, SolverError
from .implicit import ImplicitProblem
from .methods import Method, by_petsc_type, running_tableau, set_tableau
from .options import OptionsScope, SolveOptions
from .problem import CallbackErrors, RHSProblem, VectorField
from .stats import SolveStats
from .timegrid import fixed_step_times, same_time_tolerance

_PETSC_ERR_FP = 72   # PETSC_ERR_FP: a floating-point exception (NaN/Inf in an adaptive error norm)
_REASONS = {v: k for k, v in vars(PETSc.TS.ConvergedReason).items() if not k.startswith("_")}
_FIX_HINT = {
    "DIVERGED_STEP_REJECTED": "too many rejected steps: loosen rtol/atol, raise -ts_max_reject, or use "
                              "a method suited to the problem (stiff systems need implicit methods)",
    "DIVERGED_NONLINEAR_SOLVE": "Newton diverged: try a smaller step or a better preconditioner",
}
_SNES_REASONS = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if not k.startswith("_")}


def _make_problem(field: VectorField, method: Method, n_local: int, n_params: int, comm, errors: CallbackErrors,
                  options: SolveOptions):
    """The callback object the method row's ``form`` asks for."""
    if method.form == "implicit":
        return ImplicitProblem(field, method, n_local, n_params, comm, errors, options)
    return RHSProblem(field, n_local, n_params, comm, errors)


@dataclass
class ForwardRecord:
    """What one forward solve needs to be replayed: its start state and accepted step times."""

    token: int
    step_times: np.ndarray          # accepted step boundaries, tau[0] first
    output_steps: list[int]         # step number at each output time
    y0: torch.Tensor                # flat float64 start state


class TSDriver:
    def __init__(self, field: VectorField, method: Method, n_local: int, options: SolveOptions,
                 rtol: float, atol: float, comm: PETSc.Comm, stats: SolveStats):
        self.field = field
        self.method = method
        self.options = options
        self.rtol, self.atol = rtol, atol
        self.comm = comm
        self.stats = stats
        self.errors = CallbackErrors()
        self.n_params = sum(p.numel() for p in field.params)
        self.problem = _make_problem(field, method, n_local, self.n_params, comm, self.errors, options)
        self.n_local = n_local
        self._token = 0
        self._trajectory_token: int | None = None   # which forward the stored trajectory belongs to
        self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        ts = PETSc.TS().create(self.comm)
        ts.setProblemType(PETSc.TS.ProblemType.NONLINEAR)
        ts.setType(self.method.ts_type)
        set_tableau(ts, self.method)
        self.sol = self.problem.J.createVecRight()
        self.problem.install(ts)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.setTolerances(rtol=self.rtol, atol=self.atol)
        ts.setMaxSteps(self.options.max_num_steps)
        ts.setErrorIfStepFails(False)
        fixed = self.options.step_size is not None or not self.method.adaptive
        # petsc4py has no TSAdapt object: the adaptor is chosen through the options database, where a
        # command-line -ts_adapt_type still wins
        self._defaults = {"ts_adapt_type": "none" if fixed else "basic", "ts_trajectory_type": "memory",
                          **self.problem.option_defaults}
        ts.setPreStep(self._pre_step)
        ts.setPostStep(self._post_step)
        self.ts = ts
        self._set_from_options()
        running = (ts.getType(), running_tableau(ts))
        same = running == (self.method.ts_type, self.method.tableau)
        actual = self.method if same else by_petsc_type(*running, form=self.method.form)
        if actual is None:
            ts.destroy()
            other = "an explicit" if self.method.form == "implicit" else "an implicit"
            raise InvalidArgumentError(
                f"PETSc TS type {ts.getType()!r} (from the options database) cannot run method "
                f"{self.method.name!r}'s callbacks: pick {other} method with method=... instead of overriding "
                "-ts_type across the explicit/implicit divide")
        self.running = actual
        if self.adaptive and not actual.adaptive:
            ts.destroy()
            raise InvalidArgumentError(
                f"method {actual.name!r} has no embedded error estimate, so it cannot adapt its steps "
                "(-ts_adapt_type asks for that); use a fixed step (options={'step_size': h}) or an adaptive "
                "method such as dopri5, bosh3, rk5bs or rk8vr")

    def _set_from_options(self, keep_trajectory: bool = True) -> None:
        """Apply the options database; also gives the TS a fresh in-memory trajectory (a memory
        trajectory reused for a longer run than it was set up for crashes PETSc), or none at all for a
        solve that needs no gradient."""
        ts = self.ts
        ts.removeTrajectory()
        if keep_trajectory:
            ts.setSaveTrajectory()
        with OptionsScope({**self._defaults, **self.options.petsc}):
            ts.setFromOptions()
            db = PETSc.Options()
            self.adaptive = db.getString("ts_adapt_type") != "none"
            dt = db.getReal("ts_dt", 0.0)
            self.option_step = dt if dt > 0 else None

    def destroy(self) -> None:
        for obj in (self.ts, self.sol):
            if obj is not None:
                obj.destroy()
        self.problem.destroy()

    # ------------------------------------------------------------------ step control callbacks
    def _pre_step(self, ts) -> None:
        try:
            k = ts.getStepNumber()
            tau = ts.getTime()
            if self._plan is not None:
                ts.setTimeStep(self._plan[k + 1] - self._plan[k])
                return
            target = self._taus[self._next_output]
            dt = ts.getTimeStep()
            if tau + 1.01 * dt >= target:      # land on the output time (stretching by at most 1%)
                ts.setTimeStep(target - tau)
        except BaseException as error:  # noqa: BLE001
            self.errors.record(error)
            raise

    def _post_step(self, ts) -> None:
        try:
            tau = ts.getTime()
            self._step_times.append(tau)
            if not self.adaptive or self._plan is not None:
                # fixed-step RK returns NaN silently; adaptive RK fails in its error norm instead
                norm = self.sol.norm(PETSc.NormType.NORM_INFINITY)
                if not math.isfinite(norm):
                    raise NonFiniteError(
                        f"the solution became {norm} at t={self.field.sign * tau:.6g} (step "
                        f"{ts.getStepNumber()}); the vector field produced non-finite values: lower the "
                        "step size, or check the model for overflow", reason="NONFINITE",
                        time=self.field.sign * tau)
            target = self._taus[self._next_output]
            if abs(tau - target) <= same_time_tolerance(target):
                self._outputs[self._next_output].copy_(vec_as_tensor(self.sol))
                self._output_steps.append(ts.getStepNumber())
                self._next_output += 1
                if self._next_output == len(self._taus):
                    ts.setConvergedReason(PETSc.TS.ConvergedReason.CONVERGED_USER)
        except BaseException as error:  # noqa: BLE001
            self.errors.record(error)
            raise

    # ------------------------------------------------------------------ forward
    def forward(self, y0: torch.Tensor, taus: np.ndarray, outputs: torch.Tensor,
                plan: np.ndarray | None = None, keep_trajectory: bool = True) -> ForwardRecord:
        """Solve from ``y0`` (flat float64) over increasing ``taus``; writes ``outputs[i] = y(taus[i])``."""
        ts = self.ts
        self._token += 1
        self._taus = taus
        self._outputs = outputs
        self._next_output = 1
        self._output_steps = [0]
        self._step_times = [float(taus[0])]
        outputs[0].copy_(y0)
        if plan is None and not self.adaptive:
            plan = fixed_step_times(taus, self.option_step or self.options.step_size)
        self._plan = plan
        if len(taus) > 1:
            self._trajectory_token = None
            self._set_from_options(keep_trajectory)
            vec_as_tensor(self.sol, readonly=False).copy_(y0)
            self.sol.stateIncrease()
            ts.setTime(float(taus[0]))
            ts.setStepNumber(0)
            ts.setMaxTime(float(taus[-1]))
            ts.setTimeStep(float(plan[1] - plan[0]) if plan is not None else self._first_step(y0, taus))
            limit = self.options.max_num_steps
            ts.setMaxSteps(limit if plan is None else min(limit, len(plan) - 1))
            self._run(ts.solve, self.sol)
            self._check_finished(taus)
            self._trajectory_token = self._token if keep_trajectory else None
        self.stats.steps += len(self._step_times) - 1
        if len(taus) > 1:
            self._count_iterations()
        return ForwardRecord(self._token, np.asarray(self._step_times), list(self._output_steps), y0.clone())

    def _count_iterations(self) -> None:
        ts, stats = self.ts, self.stats
        stats.rejected_steps += ts.getStepRejections()
        if self.method.implicit:
            stats.newton_iterations += ts.getSNESIterations()
            stats.krylov_iterations += ts.getKSPIterations()
            stats.nonlinear_solve_failures += ts.getSNESFailures()

    def _first_step(self, y0: torch.Tensor, taus: np.ndarray) -> float:
        """Initial step: the user's ``first_step``, else Hairer & Wanner's heuristic (II.4), as
        torchdiffeq and SciPy do, capped by the first output interval."""
        span = float(taus[1] - taus[0])
        first = self.option_step or self.options.first_step
        if first is not None:
            return min(first, span)
        order = self.running.order
        scale = self.atol + self.rtol * y0.abs()
        f0 = self.field.evaluate(float(taus[0]), y0)
        d0 = self._rms(y0 / scale)
        d1 = self._rms(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        y1 = y0 + h0 * f0
        f1 = self.field.evaluate(float(taus[0]) + h0, y1)
        d2 = self._rms((f1 - f0) / scale) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1, span)

    def _rms(self, x: torch.Tensor) -> float:
        local = float((x * x).sum())
        n = x.numel()
        if self.comm.getSize() > 1:
            local, n = self.comm.tompi4py().allreduce((local, n), op=_sum_pairs())
        return math.sqrt(local / max(n, 1))

    def _check_finished(self, taus: np.ndarray) -> None:
        reached = self._next_output == len(taus)
        reason = self.ts.getConvergedReason()
        if reached:
            return
        tau = self.ts.getTime()
        t = self.field.sign * tau
        name = _REASONS.get(reason, str(reason))
        if reason == PETSc.TS.ConvergedReason.CONVERGED_ITS:
            raise MaxStepsError(
                f"the solve stopped after {self.ts.getStepNumber()} steps at t={t:.6g} before reaching "
                f"t={self.field.sign * taus[-1]:.6g}; raise options['max_num_steps'] (now "
                f"{self.options.max_num_steps}) or loosen rtol/atol", reason="CONVERGED_ITS", time=t)
        hint = _FIX_HINT.get(name, "see PETSc's -ts_monitor and -ts_adapt_monitor output")
        if self.method.implicit:
            self._count_iterations()   # the statistics of a failed solve help diagnose it
            snes = _SNES_REASONS.get(self.ts.getSNES().getConvergedReason(), "")
            hint += f" (last Newton solve: {snes}, step size {self.ts.getTimeStep():.3g})"
            self._rebuild()   # a failed implicit solve leaves adaptor/SNES state that poisons the next one
        raise SolverError(f"PETSc TS stopped with reason {name} at t={t:.6g}: {hint}", reason=name, time=t)

    def _run(self, call, *args) -> None:
        """Run a PETSc call; re-raise a callback's exception as itself and turn PETSc failures into
        pnode exceptions (after which the TS is rebuilt, PETSc may have left it unusable)."""
        try:
            call(*args)
        except PETSc.Error as error:
            original = self.errors.pop()
            self._rebuild()
            if original is not None:
                raise original.with_traceback(original.__traceback__) from None
            tau = self.ts.getTime()
            if error.ierr == _PETSC_ERR_FP:
                raise NonFiniteError(
                    f"NaN or Inf appeared in the solve near t={self.field.sign * tau:.6g} (PETSc error 72, "
                    "floating point); the vector field produced non-finite values", reason="NONFINITE",
                    time=self.field.sign * tau) from None
            raise SolverError(f"PETSc failed with error {error.ierr} near t={self.field.sign * tau:.6g}: "
                              f"{error}", reason=f"PETSC_ERROR_{error.ierr}", time=self.field.sign * tau) from None
        finally:
            self.errors.pop()

    def _rebuild(self) -> None:
        old = self.ts
        time_now = old.getTime()
        self._build()
        self.ts.setTime(time_now)
        old.destroy()
        self._trajectory_token = None

    # ------------------------------------------------------------------ backward
    def backward(self, record: ForwardRecord, taus: np.ndarray, grad_outputs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Discrete adjoint: returns dL/dy0 (flat) and the local dL/dtheta (flat, not yet reduced)."""
        if self._trajectory_token != record.token:
            scratch = torch.empty(len(taus), self.n_local, dtype=torch.float64)
            saved = self.stats.steps, self.stats.rejected_steps
            self.forward(record.y0, taus, scratch, plan=record.step_times)
            self.stats.steps, self.stats.rejected_steps = saved
            record.token = self._token
        self._trajectory_token = None     # the adjoint consumes the trajectory
        lam = self.sol.duplicate()
        lam_t = vec_as_tensor(lam, readonly=False)
        lam_t.copy_(grad_outputs[-1])
        lam.stateIncrease()
        mu = None
        if self.n_params:
            mu = self.problem.Jp.createVecRight()
            mu.set(0.0)
        try:
            self.ts.setCostGradients([lam], [mu] if mu is not None else None)
            steps = record.output_steps
            for i in range(len(steps) - 1, 0, -1):
                n = steps[i] - steps[i - 1]
                if n:
                    self.ts.adjointSetSteps(n)
                    self._run(self.ts.adjointSolve)
                lam_t = vec_as_tensor(lam, readonly=False)
                lam_t.add_(grad_outputs[i - 1])
                lam.stateIncrease()
            grad_y0 = vec_as_tensor(lam).clone()
            grad_p = vec_as_tensor(mu).clone() if mu is not None else None
        finally:
            lam.destroy()
            if mu is not None:
                mu.destroy()
        return grad_y0, grad_p


def _sum_pairs():
    from mpi4py import MPI

    return MPI.Op.Create(lambda a, b, dt: (a[0] + b[0], a[1] + b[1]), commute=True)


def describe(mapping: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


__all__ = ["TSDriver", "ForwardRecord", "PnodeError"]

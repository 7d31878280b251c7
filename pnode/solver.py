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
from .distributed import agree_on_failure, allreduce_sum_, raise_agreed
from .errors import (
    InvalidArgumentError,
    MaxStepsError,
    NonFiniteError,
    PnodeError,
    RemoteRankError,
    SolverError,
)
from .methods import Method, by_petsc_type
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
        self.mpi = comm.tompi4py() if comm.getSize() > 1 else None   # None: a one-rank solve
        self.stats = stats
        self.errors = CallbackErrors()
        self.n_params = sum(p.numel() for p in field.params)
        self.problem = RHSProblem(field, n_local, self.n_params, comm, self.errors)
        self.n_local = n_local
        self._token = 0
        self._trajectory_token: int | None = None   # which forward the stored trajectory belongs to
        self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        ts = PETSc.TS().create(self.comm)
        ts.setProblemType(PETSc.TS.ProblemType.NONLINEAR)
        ts.setType(self.method.ts_type)
        if self.method.tableau:
            ts.setRKType(self.method.tableau)
        self.sol = self.problem.J.createVecRight()
        self.work = self.sol.duplicate()
        ts.setRHSFunction(self.problem.rhs, self.work)
        ts.setRHSJacobian(self.problem.rhs_jacobian, self.problem.J, self.problem.J)
        if self.problem.Jp is not None:
            ts.setRHSJacobianP(self.problem.rhs_jacobian_p, self.problem.Jp)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        ts.setTolerances(rtol=self.rtol, atol=self.atol)
        ts.setMaxSteps(self.options.max_num_steps)
        ts.setErrorIfStepFails(False)
        fixed = self.options.step_size is not None or not self.method.adaptive
        # petsc4py has no TSAdapt object: the adaptor is chosen through the options database, where a
        # command-line -ts_adapt_type still wins
        self._defaults = {"ts_adapt_type": "none" if fixed else "basic", "ts_trajectory_type": "memory"}
        ts.setPreStep(self._pre_step)
        ts.setPostStep(self._post_step)
        self.ts = ts
        self._set_from_options()
        running = (ts.getType(), ts.getRKType() if ts.getType() == "rk" else None)
        same = running == (self.method.ts_type, self.method.tableau)
        actual = self.method if same else by_petsc_type(*running)
        if actual is None:
            ts.destroy()
            raise InvalidArgumentError(
                f"PETSc TS type {ts.getType()!r} (from the options database) is not supported for explicit "
                "vector fields yet; use -ts_type rk with any -ts_rk_type")
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
        for obj in (self.ts, self.sol, self.work, self.problem.J, self.problem.Jp):
            if obj is not None:
                obj.destroy()

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
                # fixed-step RK returns NaN silently; adaptive RK fails in its error norm instead (a
                # global 2-norm: NaN on one rank reaches all, so every rank fails at the same step)
                if self.mpi is None and not math.isfinite(self.sol.norm(PETSc.NormType.NORM_INFINITY)):
                    raise self._nonfinite(ts, tau)
            target = self._taus[self._next_output]
            at_output = abs(tau - target) <= same_time_tolerance(target)
            if self.mpi is not None and at_output and (not self.adaptive or self._plan is not None):
                # a collective per output time, not per step: a rank that failed mid-interval stops
                # every rank at the next output time
                self._check_step_everywhere(ts, tau)
            if at_output:
                self._outputs[self._next_output].copy_(vec_as_tensor(self.sol))
                self._output_steps.append(ts.getStepNumber())
                self._next_output += 1
                if self._next_output == len(self._taus):
                    ts.setConvergedReason(PETSc.TS.ConvergedReason.CONVERGED_USER)
        except BaseException as error:  # noqa: BLE001
            self.errors.record(error)
            raise

    def _nonfinite(self, ts, tau: float) -> NonFiniteError:
        t = self.field.sign * tau
        return NonFiniteError(
            f"the solution became NaN or Inf at t={t:.6g} (step {ts.getStepNumber()}); the vector field "
            "produced non-finite values: lower the step size, or check the model for overflow",
            reason="NONFINITE", time=t)

    def _check_step_everywhere(self, ts, tau: float) -> None:
        """One allreduce per step: did any rank record a failure or hold a non-finite value?  Every rank
        gets the same answer, so every rank stops at the same step (a NaN-propagating MAX reduction, as
        in Vec.norm(NORM_INFINITY), may give different answers on different ranks)."""
        local = np.array([0.0 if np.isfinite(vec_as_tensor(self.sol).numpy()).all() else 1.0,
                          0.0 if self.errors.error is None else 1.0])
        allreduce_sum_(local, self.mpi)
        if local[1]:
            raise RemoteRankError("a rank failed", rank=-1, description="")   # settled by _run's agreement
        if local[0]:
            raise self._nonfinite(ts, tau)

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
        self.stats.rejected_steps += ts.getStepRejections() if len(taus) > 1 else 0
        return ForwardRecord(self._token, np.asarray(self._step_times), list(self._output_steps), y0.clone())

    def _first_step(self, y0: torch.Tensor, taus: np.ndarray) -> float:
        """Initial step: the user's ``first_step``, else Hairer & Wanner's heuristic (II.4), as
        torchdiffeq and SciPy do, capped by the first output interval."""
        span = float(taus[1] - taus[0])
        first = self.option_step or self.options.first_step
        if first is not None:
            return min(first, span)
        order = self.running.order
        scale = self.atol + self.rtol * y0.abs()
        f0 = self.local_call(self.field.evaluate, float(taus[0]), y0)
        d0, d1 = self._rms(y0 / scale, f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        y1 = y0 + h0 * f0
        f1 = self.local_call(self.field.evaluate, float(taus[0]) + h0, y1)
        (d2,) = self._rms((f1 - f0) / scale)
        d2 /= h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1, span)

    def _rms(self, *xs: torch.Tensor) -> list[float]:
        """Root-mean-square of each (distributed) tensor, all in one reduction."""
        sums = self.global_sum(np.array([float(torch.dot(x, x)) for x in xs] + [xs[0].numel()]),
                               what="the first-step estimate")
        return [math.sqrt(v / max(sums[-1], 1.0)) for v in sums[:-1]]

    # ------------------------------------------------------------------ MPI helpers
    def local_call(self, fn, *args):
        """Rank-local work that may raise (the user's func).  Under MPI a failure is recorded and the
        result poisoned with NaN, so this rank still reaches the next collective (``global_sum``), where
        every rank raises together."""
        if self.mpi is None:
            return fn(*args)
        if self.errors.error is None:
            try:
                return fn(*args)
            except BaseException as error:  # noqa: BLE001 - raised on every rank by global_sum
                self.errors.record(error)
        return torch.full((self.n_local,), math.nan, dtype=torch.float64)

    def global_sum(self, values: np.ndarray, what: str = "the solve") -> np.ndarray:
        """Sum of ``values`` over the ranks (identity on one rank), raising on every rank if any rank
        recorded a failure in :meth:`local_call`."""
        if self.mpi is None:
            return values
        failed = 1.0 if self.errors.error is not None else 0.0
        buffer = np.ascontiguousarray(np.append(np.asarray(values, dtype=np.float64), failed))
        allreduce_sum_(buffer, self.mpi)
        if buffer[-1]:
            self._raise_everywhere(self.errors.pop(), None, what)
        return buffer[:-1]

    def _raise_everywhere(self, local_error: BaseException | None, petsc_error: PETSc.Error | None,
                          what: str) -> None:
        """Collective (MPI only): if any rank failed, every rank rebuilds its TS and raises."""
        failed_rank, description, petsc_errors = agree_on_failure(
            self.mpi, local_error, extra=None if petsc_error is None else petsc_error.ierr,
            consequences=(NonFiniteError, RemoteRankError))
        ierrs = [e for e in petsc_errors if e is not None]
        if failed_rank is None and not ierrs:
            return
        self._rebuild()
        raise_agreed(self.mpi, local_error, failed_rank, description, what)
        self._raise_petsc(ierrs[0], petsc_error)

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
        raise SolverError(f"PETSc TS stopped with reason {name} at t={t:.6g}: {hint}", reason=name, time=t)

    def _run(self, call, *args, what: str = "the solve") -> None:
        """Run a PETSc call; re-raise a callback's exception as itself and turn PETSc failures into
        pnode exceptions (after which the TS is rebuilt, PETSc may have left it unusable).  Under MPI
        every rank takes part in one agreement afterwards, so a failure anywhere raises everywhere."""
        petsc_error = None
        try:
            call(*args)
        except PETSc.Error as error:
            petsc_error = error
        original = self.errors.pop()
        if self.mpi is not None:
            self._raise_everywhere(original, petsc_error, what)
            return
        if petsc_error is None:
            return
        self._rebuild()
        if original is not None:
            raise original.with_traceback(original.__traceback__) from None
        self._raise_petsc(petsc_error.ierr, petsc_error)

    def _raise_petsc(self, ierr: int, error: PETSc.Error | None) -> None:
        t = self.field.sign * self.ts.getTime()
        if ierr == _PETSC_ERR_FP:
            raise NonFiniteError(
                f"NaN or Inf appeared in the solve near t={t:.6g} (PETSc error 72, floating point); the "
                "vector field produced non-finite values", reason="NONFINITE", time=t) from None
        raise SolverError(f"PETSc failed with error {ierr} near t={t:.6g}: {error or 'on another rank'}",
                          reason=f"PETSC_ERROR_{ierr}", time=t) from None

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
        """Discrete adjoint: returns this rank's dL/dy0 (flat) and dL/dtheta (flat), where L is the sum of
        all ranks' losses."""
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
            # one agreement for the whole sweep: the RK adjoint has no collectives, and a failing rank
            # poisons its VJPs with NaN instead of raising
            self._run(self._adjoint_sweep, record.output_steps, lam, grad_outputs, what="the adjoint")
            grad_y0 = vec_as_tensor(lam).clone()
            grad_p = vec_as_tensor(mu).clone() if mu is not None else None
        finally:
            lam.destroy()
            if mu is not None:
                mu.destroy()
        if grad_p is not None and self.mpi is not None:
            # every rank accumulated its shard's parameter adjoint; one allreduce gives each rank the
            # gradient of the sum of all ranks' losses
            allreduce_sum_(grad_p.numpy(), self.mpi)
        return grad_y0, grad_p

    def _adjoint_sweep(self, steps: list[int], lam: PETSc.Vec, grad_outputs: torch.Tensor) -> None:
        for i in range(len(steps) - 1, 0, -1):
            n = steps[i] - steps[i - 1]
            if n:
                self.ts.adjointSetSteps(n)
                self.ts.adjointSolve()
            lam_t = vec_as_tensor(lam, readonly=False)
            lam_t.add_(grad_outputs[i - 1])
            lam.stateIncrease()


def describe(mapping: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in mapping.items())


__all__ = ["TSDriver", "ForwardRecord", "PnodeError"]

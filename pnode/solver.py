"""One PETSc TS built from a method row, the options and the PETSc options database, driven forward
over the output times and backward through TSAdjoint.

The driver owns every PETSc object of one problem shape and reuses them across calls: a training loop
rebuilds nothing while shape and dtype stay the same.  It keeps the step times of the latest forward
solve, so a backward pass whose trajectory is gone (a second forward ran in between, or a second
backward) replays exactly the same steps before running the adjoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._petsc import PETSc
from .bridge import vec_as_tensor
from .checkpointing import CheckpointPolicy, ScheduleRunner
from .distributed import agree_on_failure, allreduce_sum_, raise_agreed
from .errors import (
    InvalidArgumentError,
    MaxStepsError,
    NonFiniteError,
    PetscConfigurationError,
    RemoteRankError,
    SolverError,
    StepSizeUnderflowError,
)
from .implicit import ImplicitProblem
from .methods import Method, by_petsc_type, running_tableau, set_tableau
from .options import OptionsScope, SolveOptions
from .problem import CallbackErrors, RHSProblem, VectorField
from .stats import SolveStats
from .timegrid import fixed_step_times, same_time_tolerance

_REPLAY = {"ts_adapt_type": "none"}
_PETSC_ERR_FP = 72   # PETSC_ERR_FP: a floating-point exception (NaN/Inf in an adaptive error norm)
_REASONS = {v: k for k, v in vars(PETSc.TS.ConvergedReason).items() if not k.startswith("_")}
_FIX_HINT = {
    "DIVERGED_STEP_REJECTED": "too many rejected steps: loosen rtol/atol, raise -ts_max_step_rejections, or use "
                              "a method suited to the problem (stiff systems need implicit methods)",
    "DIVERGED_NONLINEAR_SOLVE": "Newton diverged: try a smaller step or a better preconditioner",
}
_UNDERFLOW = 1e-13   # a step this small relative to the time moves it by at most ~500 ulps
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
    runner: ScheduleRunner | None = None   # checkpointed fixed-step solves: the schedule, forward part done

    def release(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


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
        self.problem = _make_problem(field, method, n_local, self.n_params, comm, self.errors, options)
        self.n_local = n_local
        self.checkpoints = CheckpointPolicy.parse(options.checkpoints)
        self._capturing = True
        self._in_adjoint = False
        self._lam: PETSc.Vec | None = None
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

    def _set_from_options(self, keep_trajectory: bool = True, replay: bool = False) -> None:
        """Apply the options database; also gives the TS a fresh in-memory trajectory (a memory
        trajectory reused for a longer run than it was set up for crashes PETSc), or none at all for a
        solve that needs no gradient."""
        ts = self.ts
        ts.removeTrajectory()
        if keep_trajectory:
            ts.setSaveTrajectory()
        # a replay steps exactly by recorded step times: no controller, which would also leave its own
        # proposal, not the step taken, in PETSc's trajectory (wrong adjoint at a segment's first step)
        with OptionsScope({**self._defaults, **self.options.petsc}, force=_REPLAY if replay else None):
            ts.setFromOptions()
            if replay:
                return
            db = PETSc.Options()
            # measured: PETSc's adjoint then runs on lagged Jacobians and the gradients come out NaN
            self.lagged_jacobian = db.getInt("snes_lag_jacobian", 1) != 1
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
        if self._in_adjoint:        # PETSc re-stepping inside TSAdjoint (solution-only trajectories)
            return
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
        if self._in_adjoint:
            return
        try:
            tau = ts.getTime()
            if self._capturing:
                self._step_times.append(tau)
            if not self.adaptive or self._plan is not None:
                # fixed-step RK returns NaN silently; adaptive RK fails in its error norm instead (a
                # global 2-norm: NaN on one rank reaches all, so every rank fails at the same step)
                if self.mpi is None and not math.isfinite(self.sol.norm(PETSc.NormType.NORM_INFINITY)):
                    raise self._nonfinite(ts, tau)
            if not self._capturing:
                return
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
        """One allreduce: did any rank record a failure or hold a non-finite value?  Every rank gets the
        same answer, so every rank stops at the same step (a MAX reduction, as in
        Vec.norm(NORM_INFINITY), may give NaN on some ranks and a number on others)."""
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
        """Solve from ``y0`` (flat float64) over increasing ``taus``; writes ``outputs[i] = y(taus[i])``.

        ``keep_trajectory`` prepares the backward pass: the whole trajectory in memory, or with
        ``options["checkpoints"]`` what the schedule stores.  ``plan`` replays recorded step times."""
        if keep_trajectory and self.lagged_jacobian and self.method.implicit:
            raise InvalidArgumentError(
                "-snes_lag_jacobian (lagged Newton Jacobians) is only allowed in solves without gradients "
                "(torch.no_grad()): PETSc's adjoint would reuse lagged Jacobians; remove the option")
        ts = self.ts
        self._token += 1
        self._taus = taus
        self._outputs = outputs
        self._next_output = 1
        self._output_steps = [0]
        self._step_times = [float(taus[0])]
        self._capturing = True
        outputs[0].copy_(y0)
        if plan is None and not self.adaptive:
            plan = fixed_step_times(taus, self.option_step or self.options.step_size)
        self._plan = plan
        runner = None
        checkpointed = keep_trajectory and self.checkpoints is not None
        self._trajectory_token = None
        if len(taus) > 1 and checkpointed and plan is not None:
            # fixed steps: the schedule's forward part is this forward pass (it stores its checkpoints)
            runner = ScheduleRunner(self, self.checkpoints, plan, self._plan_output_steps(plan, taus))
            try:
                runner.run_forward(y0.numpy(), capture=True)
            except BaseException:
                runner.close()
                raise
            self._check_finished(taus)
            runner.trajectory_token = self._trajectory_token
        elif len(taus) > 1:
            keep = keep_trajectory and not checkpointed
            self._set_from_options(keep)
            self._start(y0.numpy(), float(taus[0]), 0,
                        float(plan[1] - plan[0]) if plan is not None else self._first_step(y0, taus))
            ts.setMaxTime(float(taus[-1]))
            limit = self.options.max_num_steps
            ts.setMaxSteps(limit if plan is None else min(limit, len(plan) - 1))
            self._run(ts.solve, self.sol)
            self._check_finished(taus)
            self._trajectory_token = self._token if keep else None
            self.stats.peak_stored_states = len(self._step_times) if keep else 0
        self.stats.steps += len(self._step_times) - 1
        if len(taus) > 1 and runner is None:
            self._count_iterations()
        return ForwardRecord(self._token, np.asarray(self._step_times), list(self._output_steps), y0.clone(),
                             runner)

    @staticmethod
    def _plan_output_steps(plan: np.ndarray, taus: np.ndarray) -> list[int]:
        return [int(i) for i in np.searchsorted(plan, taus)]

    def _start(self, state: np.ndarray, tau: float, step: int, dt: float) -> None:
        np.copyto(self.sol.getArray(), state)
        self.sol.stateIncrease()
        self.ts.setTime(tau)
        self.ts.setStepNumber(step)
        self.ts.setTimeStep(dt)
        # PETSc marks a restart only when a solve starts at step 0; an FSAL method (dopri5, bosh3) resumed
        # at a checkpoint would otherwise reuse the last stage of whatever step it computed before
        self.ts.restartStep()

    def replay(self, state: np.ndarray, plan: np.ndarray, n0: int, n1: int, keep_trajectory: bool,
               capture: bool = False) -> np.ndarray:
        """Steps n0..n1 of the step sequence ``plan`` from ``state`` (the solution at step n0); returns a
        copy of the solution at step n1.  With ``keep_trajectory`` PETSc keeps these steps' stages for
        :meth:`adjoint_steps`; with ``capture`` output times passed on the way are recorded."""
        ts = self.ts
        self._plan = plan
        self._capturing = capture
        self._set_from_options(keep_trajectory, replay=True)
        self._start(state, float(plan[n0]), n0, float(plan[n0 + 1] - plan[n0]))
        ts.setMaxTime(float(plan[n1]))
        ts.setMaxSteps(n1)
        self._run(ts.solve, self.sol)
        if ts.getStepNumber() != n1:
            self._raise_stopped(float(plan[n1]))
        self._trajectory_token = self._token if keep_trajectory else None
        return self.sol.getArray(readonly=True).copy()

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
        if self._next_output < len(taus):
            self._raise_stopped(float(taus[-1]))

    def _raise_stopped(self, target: float) -> None:
        """The solve ended before ``target`` (tau): raise what PETSc's converged reason says."""
        reason = self.ts.getConvergedReason()
        tau = self.ts.getTime()
        t = self.field.sign * tau
        name = _REASONS.get(reason, str(reason))
        if reason == PETSc.TS.ConvergedReason.CONVERGED_ITS:
            raise MaxStepsError(
                f"the solve stopped after {self.ts.getStepNumber()} steps at t={t:.6g} before reaching "
                f"t={self.field.sign * target:.6g}; raise options['max_num_steps'] (now "
                f"{self.options.max_num_steps}) or loosen rtol/atol", reason="CONVERGED_ITS", time=t)
        dt = self.ts.getTimeStep()
        # the controller shrank the step to rounding level: a blow-up or singularity, whatever the reason
        underflow = abs(dt) <= _UNDERFLOW * max(abs(tau), abs(target))
        hint = (f"step size underflow (dt={dt:.3g}): the solution probably blows up or the model is singular "
                "near this time; check the model and data there, or end the solve earlier" if underflow
                else _FIX_HINT.get(name, "see PETSc's -ts_monitor and -ts_adapt_monitor output"))
        if self.method.implicit:
            self._count_iterations()   # the statistics of a failed solve help diagnose it
            snes = _SNES_REASONS.get(self.ts.getSNES().getConvergedReason(), "")
            hint += f" (last Newton solve: {snes}, step size {dt:.3g})"
            self._rebuild()   # a failed implicit solve leaves adaptor/SNES state that poisons the next one
        error = StepSizeUnderflowError if underflow else SolverError
        raise error(f"PETSc TS stopped with reason {name} at t={t:.6g}: {hint}", reason=name, time=t)

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
        if "revolve" in str(error):
            raise PetscConfigurationError(
                "these -ts_trajectory_* options need a PETSc configured with --download-revolve (this one "
                "was not); use pnode's own bounded-memory adjoint instead: options={'checkpoints': K}"
            ) from None
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
    def adjoint_steps(self, n: int, agree: bool = True) -> None:
        """Run TSAdjoint ``n`` steps back from where the trajectory's adjoint stands.  ``agree=False``
        leaves error handling (and, under MPI, the agreement between ranks) to an enclosing ``_run``."""
        self.ts.adjointSetSteps(n)
        self._in_adjoint = True
        try:
            if agree:
                self._run(self.ts.adjointSolve, what="the adjoint")
            else:
                self.ts.adjointSolve()
        finally:
            self._in_adjoint = False

    def add_to_cost_gradient(self, values: np.ndarray) -> None:
        """lambda += values: an output time's cotangent, added when the adjoint reaches its step."""
        array = self._lam.getArray()
        array += values
        self._lam.stateIncrease()

    def backward(self, record: ForwardRecord, taus: np.ndarray, grad_outputs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Discrete adjoint: returns this rank's dL/dy0 (flat) and dL/dtheta (flat), where L is the sum of
        all ranks' losses (the parameter gradient is reduced once, after the sweep)."""
        lam = self.sol.duplicate()
        np.copyto(lam.getArray(), grad_outputs[-1].numpy())
        lam.stateIncrease()
        mu = None
        if self.n_params:
            mu = self.problem.Jp.createVecRight()
            mu.set(0.0)
        self._lam = lam
        try:
            self.ts.setCostGradients([lam], [mu] if mu is not None else None)
            if len(record.step_times) == 1:
                pass            # a single output time: y = y0, nothing to integrate back
            elif self.checkpoints is not None:
                self._backward_with_schedule(record, taus, grad_outputs)
            else:
                self._backward_store_all(record, taus, grad_outputs)
            grad_y0 = vec_as_tensor(lam).clone()
            grad_p = vec_as_tensor(mu).clone() if mu is not None else None
        finally:
            self._trajectory_token = None     # the adjoint consumed the trajectory
            record.release()
            self._lam = None
            lam.destroy()
            if mu is not None:
                mu.destroy()
        if grad_p is not None and self.mpi is not None:
            # every rank accumulated its shard's parameter adjoint; one allreduce gives each rank the
            # gradient of the sum of all ranks' losses
            allreduce_sum_(grad_p.numpy(), self.mpi)
        return grad_y0, grad_p

    def _backward_store_all(self, record: ForwardRecord, taus: np.ndarray, grad_outputs: torch.Tensor) -> None:
        if self._trajectory_token != record.token:
            # another forward ran since (or this record was already reversed): replay its steps exactly
            steps = len(record.step_times) - 1
            self.replay(record.y0.numpy(), record.step_times, 0, steps, keep_trajectory=True)
            self.stats.recomputed_steps += steps
        # one agreement for the whole sweep (MPI): the RK adjoint has no collectives, and a failing rank
        # poisons its VJPs with NaN instead of raising
        self._run(self._adjoint_sweep, record.output_steps, grad_outputs, what="the adjoint")

    def _adjoint_sweep(self, steps: list[int], grad_outputs: torch.Tensor) -> None:
        for i in range(len(steps) - 1, 0, -1):
            if steps[i] > steps[i - 1]:
                self.adjoint_steps(steps[i] - steps[i - 1], agree=False)
            self.add_to_cost_gradient(grad_outputs[i - 1].numpy())

    def _backward_with_schedule(self, record: ForwardRecord, taus: np.ndarray, grad_outputs: torch.Tensor) -> None:
        runner = record.runner
        if runner is None or runner.trajectory_token != self._trajectory_token or self._trajectory_token is None:
            # adaptive solve (step count known only now), or the forward part's state is gone: run the
            # whole schedule from y0 over the recorded steps
            if runner is not None:
                runner.close()
            runner = ScheduleRunner(self, self.checkpoints, record.step_times, record.output_steps)
            record.runner = runner
            runner.run_forward(record.y0.numpy(), capture=False)
        runner.run_reverse(grad_outputs)


__all__ = ["TSDriver", "ForwardRecord"]

"""The driver: one problem shape's PETSc objects, driven forward over the output times and backward
through TSAdjoint.

It owns the callbacks (a :class:`~pnode._protocols.Problem`), the TS (:class:`~pnode._ts.TimeStepper`)
and the solution Vec, and reuses them across calls: a training loop rebuilds nothing while shape and
dtype stay the same.  Each call's :class:`~pnode._spec.SolveSpec` is handed to the vector field at
entry.  Every forward pass returns a :class:`ForwardRecord` of its accepted step times, so a backward
pass whose trajectory is gone (a second forward ran in between, or a second backward) replays exactly
the same steps.  :meth:`Driver.close` frees every PETSc object at once (no reliance on the cyclic GC).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import _adjoint
from ._bridge import PETSC_DTYPE, vec_as_tensor
from ._checkpointing import ScheduleRunner
from ._failures import CallbackErrors, nonfinite_error, petsc_error, stopped_error
from ._field import StageGraphs, VectorField
from ._hooks import StepHooks
from ._implicit import ImplicitProblem
from ._options import SolveOptions
from ._petsc import PETSc
from ._protocols import Problem
from ._rhs import RHSProblem
from ._spec import SolveSpec
from ._stepping import Pass, first_step, fixed_grid, plan_output_steps, rms_all
from ._ts import TimeStepper
from .distributed import RankGroup
from .errors import AdjointNotAvailableError, BackwardError, InvalidArgumentError, NonFiniteError, RemoteRankError
from .methods import Method
from .stats import SolveStats


@dataclass(eq=False)
class ForwardRecord:
    """What one forward solve needs to be reversed or replayed."""

    token: int
    spec: SolveSpec
    taus: np.ndarray                # output times reached (an event solve's second is the event's)
    step_times: np.ndarray          # accepted step boundaries, tau[0] first
    output_steps: list[int]         # step number at each output time
    y0: torch.Tensor                # flat float64 start state
    runner: ScheduleRunner | None = None   # checkpointed fixed-step solves: the schedule, forward part done
    event_index: int | None = None  # which event function stopped an event solve
    interpolated: tuple[int, ...] = ()   # outputs interpolated inside a step (options['min_step'])

    def release(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


class Lease:
    """A claim on a driver: the driver closes (frees every PETSc object) when its last lease is
    released.  The solver that built it holds one, and so does every autograd graph of one of its
    forward passes; releasing on ``__del__`` makes the freeing deterministic (the driver itself sits
    in reference cycles through PETSc's callbacks, which only the cyclic collector would find)."""

    def __init__(self, driver: Driver):
        self.driver: Driver | None = driver
        driver.leases += 1

    def release(self) -> None:
        driver, self.driver = self.driver, None
        if driver is not None:
            driver.leases -= 1
            if driver.leases == 0:
                driver.close()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _make_problem(field: VectorField, method: Method, n_local: int, spec: SolveSpec, group: RankGroup,
                  errors: CallbackErrors, options: SolveOptions) -> Problem:
    """The callback object the method row's ``form`` asks for."""
    if method.form == "implicit":
        return ImplicitProblem(field, method, n_local, spec.param_layout, group, errors, options)
    return RHSProblem(field, n_local, spec.param_layout, group, errors)


class Driver:
    def __init__(self, func: Callable, method: Method, options: SolveOptions, rtol: float, atol: float,
                 group: RankGroup, stats: SolveStats, spec: SolveSpec):
        self.method, self.options, self.rtol, self.atol = method, options, rtol, atol
        self.group, self.stats = group, stats
        self.errors = CallbackErrors(poison=group.distributed)
        self.field = VectorField(func, spec.layout, spec.time_dtype, stats)
        self.field.bind(spec)
        if options.trace:
            self.field.use_trace()
        if options.keep_graph:
            if method.form != "rhs":
                raise InvalidArgumentError(
                    f"options['keep_graph'] keeps the stage graphs of explicit methods; {method.name!r} is implicit "
                    "(its adjoint needs the stage Jacobians, not the stage graphs): remove the option")
            self.field.graphs = StageGraphs()
        self.n_local = spec.layout.size
        self.problem = _make_problem(self.field, method, self.n_local, spec, group, self.errors, options)
        self.hooks = StepHooks(self)
        events = None if spec.event is None else (spec.event.count, self.hooks.event_indicator,
                                                  self.hooks.post_event)
        try:
            self.stepper = TimeStepper(method, self.problem, options, rtol, atol, group.comm, self._pre_step,
                                       self._post_step, events)
        except BaseException:
            self.problem.destroy()
            raise
        self.sol = self.problem.J.createVecRight()
        self._pass: Pass | None = None
        self.in_adjoint = False
        self._sweep: _adjoint.Sweep | None = None
        self._token = 0
        self._trajectory_token: int | None = None   # which forward the stored trajectory belongs to
        self.last_step_times = np.zeros(0)
        self.leases = 0
        self.stepping = False         # inside a TS solve or adjoint (the hooks' observer acts only then)

    @property
    def ts(self) -> PETSc.TS:
        return self.stepper.ts

    @property
    def running(self) -> Method:
        return self.stepper.running

    @property
    def current_pass(self) -> Pass | None:
        return self._pass

    def close(self) -> None:
        """Free every PETSc object of this driver now; it cannot be used afterwards."""
        if self.sol is None:
            return
        self.stepper.destroy()
        self.problem.destroy()
        self.sol.destroy()
        self.sol = None
        self._pass = self._sweep = self.hooks = None

    # ------------------------------------------------------------------ step callbacks
    def _pre_step(self, ts) -> None:
        if self.in_adjoint:        # PETSc re-stepping inside TSAdjoint (solution-only trajectories)
            return
        self.problem.begin_step(ts.getStepNumber(), ts.getTime(), self.sol.getArray(readonly=True))
        self.hooks.before_step(self._pass)
        run = self._pass
        if run.min_step is not None and run.capturing:
            run.step_start = (ts.getTime(), vec_as_tensor(self.sol).clone())
        try:
            dt = self._pass.next_step(ts.getStepNumber(), ts.getTime(), ts.getTimeStep())
            if dt is not None:
                ts.setTimeStep(dt)
        except BaseException as error:  # noqa: BLE001
            self.errors.record(error)
            raise

    def _post_step(self, ts) -> None:
        if self.in_adjoint:
            return
        try:
            self._after_step(ts)
        except BaseException as error:  # noqa: BLE001
            self.errors.record(error)
            raise

    def _after_step(self, ts) -> None:
        run, tau = self._pass, ts.getTime()
        self.hooks.after_step(ts, run, tau)
        if run.capturing:
            run.step_times.append(tau)
        if run.capturing and run.event is not None:
            if ts.getConvergedReason() == PETSc.TS.ConvergedReason.CONVERGED_EVENT:
                run.taus[run.next_output] = tau         # the event time is the last output time
                run.record_output(ts.getStepNumber(), vec_as_tensor(self.sol))
            elif run.event.horizon and run.at_output(tau):   # no event before the horizon
                run.record_output(ts.getStepNumber(), vec_as_tensor(self.sol))
                ts.setConvergedReason(PETSc.TS.ConvergedReason.CONVERGED_USER)
            return
        if run.capturing and run.min_step is not None:
            self._record_passed_outputs(ts, run, tau)
        fixed = run.plan is not None
        # fixed-step RK returns NaN silently; adaptive RK fails in its error norm instead (a global 2-norm:
        # NaN on one rank reaches all, so every rank fails at the same step)
        if fixed and not self.group.distributed and not math.isfinite(self.sol.norm(PETSc.NormType.NORM_INFINITY)):
            raise nonfinite_error(self.field.sign * tau, ts.getStepNumber())
        if not run.capturing or not run.at_output(tau):
            return
        if fixed and self.group.distributed:
            # a collective per output time, not per step: a rank that failed mid-interval stops every
            # rank at the next output time
            self._check_step_everywhere(ts, tau)
        if run.record_output(ts.getStepNumber(), vec_as_tensor(self.sol)):
            ts.setConvergedReason(PETSc.TS.ConvergedReason.CONVERGED_USER)

    def _record_passed_outputs(self, ts, run: Pass, tau: float) -> None:
        """Outputs inside the step that just ended (``min_step`` stepped past them), interpolated: by
        PETSc's dense output where the tableau has one (5dp in PETSc 3.26), else by the cubic Hermite
        polynomial through the step's end states and slopes."""
        passed = run.passed_outputs(tau)
        if not passed:
            return
        t0, y0 = run.step_start
        y1 = vec_as_tensor(self.sol).clone()
        if self.running.ts_type == "rk" and self.running.tableau == "5dp":
            scratch = self.sol.duplicate()
            try:
                values = []
                for i in passed:
                    ts.interpolate(float(run.taus[i]), scratch)
                    values.append(vec_as_tensor(scratch).clone())
            finally:
                scratch.destroy()
        else:
            self.stepping = False        # not a stage: step hooks must not see these evaluations
            try:
                f0, f1 = self.evaluate(t0, y0), self.evaluate(tau, y1)
            finally:
                self.stepping = True
            h = tau - t0
            values = []
            for i in passed:
                s = (float(run.taus[i]) - t0) / h
                values.append((1 + 2 * s) * (1 - s) ** 2 * y0 + s * (1 - s) ** 2 * h * f0
                              + s * s * (3 - 2 * s) * y1 + s * s * (s - 1) * h * f1)
        for value in values:
            run.interpolated.append(run.next_output)
            run.record_output(ts.getStepNumber(), value)

    def _check_step_everywhere(self, ts, tau: float) -> None:
        """Did any rank record a failure or hold a non-finite value?  Every rank gets the same answer, so
        every rank stops at the same step."""
        flags = np.array([0.0 if np.isfinite(vec_as_tensor(self.sol).numpy()).all() else 1.0,
                          0.0 if self.errors.error is None else 1.0])
        nonfinite, failed = self.group.any_rank(flags)
        if failed:
            raise RemoteRankError("a rank failed", rank=-1, description="")   # settled by run()'s agreement
        if nonfinite:
            raise nonfinite_error(self.field.sign * tau, ts.getStepNumber())

    # ------------------------------------------------------------------ forward
    def forward(self, spec: SolveSpec, y0: torch.Tensor) -> tuple[torch.Tensor, ForwardRecord]:
        """Solve from ``y0`` (flat float64) over ``spec.taus``; returns the outputs ``(len(taus), N)`` and
        the record a backward pass needs.  With ``spec.needs_grad`` the trajectory (or, with
        ``options["checkpoints"]``, what the schedule stores) is kept for the adjoint."""
        start = time.perf_counter()
        self.field.bind(spec)
        self.stats.reset_forward(self.running.name, self.ts.getType())
        keep = spec.needs_grad
        if keep and self.stepper.lagged_jacobian and self.method.implicit:
            raise InvalidArgumentError(
                "-snes_lag_jacobian (lagged Newton Jacobians) is only allowed in solves without gradients "
                "(torch.no_grad()): PETSc's adjoint would reuse lagged Jacobians; remove the option")
        # an event solve's last output time is found on the way
        taus = spec.taus if spec.event is None else np.array([spec.taus[0],
                                                               spec.taus[1] if spec.event.horizon else np.inf])
        outputs = torch.empty(len(taus), y0.numel(), dtype=PETSC_DTYPE)
        outputs[0].copy_(y0)
        self._token += 1
        self._trajectory_token = None
        plan = None
        step = self.stepper.option_step or self.options.step_size
        if not self.stepper.adaptive and spec.event is None:
            plan = fixed_grid(self.options.grid_constructor, self.field.func, spec, y0, taus, step)
        elif not self.stepper.adaptive and step is None:
            raise InvalidArgumentError(f"method {self.running.name!r} steps on a fixed grid: with event_fn give "
                                       "its step as options={'step_size': h}")
        checkpointed = keep and self.options.checkpoints is not None
        run = self._pass = Pass(taus, outputs, plan, spec.event)
        if plan is None and spec.event is None:
            run.min_step = self.options.min_step
        self.hooks.start_pass(spec, run, record_graphs=keep and not checkpointed)
        runner = None
        if len(taus) > 1 and checkpointed and plan is not None:
            # fixed steps: the schedule's forward part is this forward pass (it stores its checkpoints)
            runner = ScheduleRunner(self, self.options.checkpoints, plan, plan_output_steps(plan, taus))
            try:
                runner.run_forward(y0.numpy(), capture=True)    # its replays capture into this pass
                self._check_finished(run)
            except BaseException:
                runner.close()
                raise
            runner.trajectory_token = self._trajectory_token
        elif len(taus) > 1:
            store_all = keep and not checkpointed
            self.stepper.configure(store_all)
            dt = float(plan[1] - plan[0]) if plan is not None else self._first_step(y0, taus)
            self.stepper.start(self.sol, y0.numpy(), float(taus[0]), 0, dt)
            self.problem.restart()
            self.ts.setMaxTime(min(float(taus[-1]), 1e300))
            limit = self.options.max_num_steps
            self.ts.setMaxSteps(limit if plan is None else min(limit, len(plan) - 1))
            self.run(self.ts.solve, self.sol)
            self._check_finished(run)
            self._trajectory_token = self._token if store_all else None
            self.stats.peak_stored_states = len(run.step_times) if store_all else 0
        self.stats.steps += len(run.step_times) - 1
        if len(taus) > 1 and runner is None:
            self._count_iterations()
        record = ForwardRecord(self._token, spec, run.taus.copy(), np.asarray(run.step_times),
                               list(run.output_steps), y0.clone(), runner, run.event_index,
                               tuple(run.interpolated))
        self._pass = None
        self.hooks.record_graphs(False)      # evaluations after the solve (dL/dt, ...) are not stages
        self.last_step_times, self.last_taus, self.last_event_index = record.step_times, record.taus, run.event_index
        self.stats.forward_time = time.perf_counter() - start
        self.stats.communication_time = self.group.seconds    # since the call began (argument checks too)
        return outputs, record

    def _first_step(self, y0: torch.Tensor, taus: np.ndarray) -> float:
        """The user's first step (``-ts_dt`` or ``options['first_step']``), else the heuristic."""
        first = self.stepper.option_step or self.options.first_step
        if first is None and not self.stepper.adaptive:
            first = self.options.step_size       # fixed steps of an event solve
        if first is not None:
            return min(first, float(taus[1] - taus[0]))
        # tolerances may be one per component (options['norm'])
        rtol, atol = (torch.as_tensor(x, dtype=PETSC_DTYPE) for x in (self.rtol, self.atol))
        step = first_step(self.evaluate, self._rms, y0, taus, self.running.order, rtol, atol, self.field.sign)
        # torchdiffeq's min_step/max_step bound every step, the first one too
        low, high = self.options.min_step, self.options.max_step
        return min(max(step, low or 0.0), high or math.inf)

    def _rms(self, *xs: torch.Tensor) -> list[float]:
        return rms_all(lambda v: self.group.global_sum(v, self.errors, "the first-step estimate"), *xs)

    def evaluate(self, tau: float, y: torch.Tensor) -> torch.Tensor:
        """g(tau, y), rank-local; under MPI a failure is recorded and NaN returned (it is raised on every
        rank at the next :meth:`RankGroup.global_sum`)."""
        out = self.errors.call(self.field.evaluate, tau, y)
        return out if out is not None else torch.full_like(y, math.nan)

    def replay(self, state: np.ndarray, plan: np.ndarray, n0: int, n1: int, keep_trajectory: bool,
               capture: bool = False) -> np.ndarray:
        """Steps n0..n1 of the step sequence ``plan`` from ``state`` (the solution at step n0); returns a
        copy of the solution at step n1.  With ``keep_trajectory`` PETSc keeps these steps' stages for
        :meth:`adjoint_steps`; with ``capture`` output times passed on the way are recorded into the
        current forward pass."""
        previous = self._pass
        if capture:
            previous.plan = plan
        else:
            self._pass = Pass(None, None, plan)
        self.hooks.record_graphs(keep_trajectory)
        try:
            self.stepper.configure(keep_trajectory, replay=True)
            self.stepper.start(self.sol, state, float(plan[n0]), n0, float(plan[n0 + 1] - plan[n0]))
            self.problem.restart()
            self.ts.setMaxTime(float(plan[n1]))
            self.ts.setMaxSteps(n1)
            self.run(self.ts.solve, self.sol)
            if self.ts.getStepNumber() != n1:
                raise self._stopped(float(plan[n1]))
        finally:
            self._pass = previous
            self.hooks.record_graphs(False)
        self._trajectory_token = self._token if keep_trajectory else None
        return self.sol.getArray(readonly=True).copy()

    def _check_finished(self, run: Pass) -> None:
        if not run.finished:
            raise self._stopped(float(run.taus[-1]))

    def _stopped(self, target: float) -> Exception:
        error = stopped_error(self.ts, self.field.sign, target, self.options.max_num_steps, self.method.implicit)
        if self.method.implicit:
            self._count_iterations()   # the statistics of a failed solve help diagnose it
            self._reset_after_failure()   # a failed implicit solve leaves adaptor/SNES state behind
        return error

    def _count_iterations(self) -> None:
        ts, stats = self.ts, self.stats
        stats.rejected_steps += ts.getStepRejections()
        if self.method.implicit:
            counts = self.problem.take_iterations(ts)
            newton, krylov = counts if counts is not None else (ts.getSNESIterations(), ts.getKSPIterations())
            stats.newton_iterations += newton
            stats.krylov_iterations += krylov
            stats.nonlinear_solve_failures += ts.getSNESFailures()

    # ------------------------------------------------------------------ failures
    def run(self, call: Callable, *args, what: str = "the solve") -> None:
        """Run a PETSc call; re-raise a callback's exception as itself and turn PETSc failures into pnode
        exceptions (after which the TS is rebuilt: PETSc may have left it unusable).  Under MPI every
        rank takes part in one agreement afterwards, so a failure anywhere raises everywhere."""
        failure = None
        self.stepping = True
        try:
            call(*args)
        except PETSc.Error as error:
            failure = error
        finally:
            self.stepping = False
        original = self.errors.pop()
        if self.group.distributed:
            agreement = self.group.agree(original, None if failure is None else failure.ierr,
                                         consequences=(NonFiniteError, RemoteRankError))
            if not agreement.failed:
                return
            self._reset_after_failure()
            self.group.raise_agreed(agreement, original, what)
            raise petsc_error(agreement.petsc_code, failure, self._time()) from None
        if failure is None:
            return
        self._reset_after_failure()
        if original is not None:
            raise original.with_traceback(original.__traceback__) from None
        raise petsc_error(failure.ierr, failure, self._time()) from None

    def _time(self) -> float:
        return self.field.sign * self.ts.getTime()

    def _reset_after_failure(self) -> None:
        self.stepper.rebuild()
        self._trajectory_token = None

    # ------------------------------------------------------------------ backward (SegmentDriver)
    def adjoint_steps(self, n: int, agree: bool = True, settle: bool = True) -> None:
        """Run TSAdjoint ``n`` steps back from where the trajectory's adjoint stands.  ``agree=False``
        leaves error handling (and, under MPI, the agreement between ranks) to an enclosing :meth:`run`;
        ``settle=False`` leaves the deferred parameter VJPs to a later :meth:`settle_adjoint`."""
        self.in_adjoint = True
        self.problem.exact_jacobians(True)
        try:
            if agree:
                self.run(self._adjoint_pieces, n, settle, what="the adjoint")
            else:
                self._adjoint_pieces(n, settle)
        finally:
            self.in_adjoint = False
            self.problem.exact_jacobians(False)

    def _adjoint_pieces(self, n: int, settle: bool) -> None:
        # the problem may prepare the stages of a run of steps in batches: one adjointSolve per run
        while n > 0:
            piece = self.problem.adjoint_piece(self.ts.getStepNumber(), n)
            self.ts.adjointSetSteps(piece)
            self.ts.adjointSolve()
            n -= piece
            self.settle_adjoint(force=settle and n == 0)

    def settle_adjoint(self, force: bool = True) -> None:
        """Add the problem's deferred parameter VJPs into the running sweep's parameter gradient (without
        ``force`` only when they fill half the room for them)."""
        if self._sweep.mu is not None:
            self.problem.settle_adjoint(self._sweep.mu, force)

    def add_to_cost_gradient(self, values: np.ndarray) -> None:
        self._sweep.add_to_cost_gradient(values)

    def holds_trajectory_of(self, record: ForwardRecord) -> bool:
        return self._trajectory_token is not None and self._trajectory_token == record.token

    def forget_trajectory(self) -> None:
        self._trajectory_token = None
        self.hooks.record_graphs(None)

    def cost_gradient(self) -> PETSc.Vec:
        """The adjoint state lambda of the running backward pass."""
        return self._sweep.lam

    def backward(self, record: ForwardRecord, grad_outputs: torch.Tensor, outputs: torch.Tensor | None
                 ) -> _adjoint.Gradients:
        """The discrete adjoint of ``record``'s forward solve for the cotangents ``grad_outputs``
        ``(len(t), N)``; with ``outputs`` (the forward solution) also ``dL/dt``."""
        if self.sol is None:
            raise BackwardError("the solver that computed this output was closed (solver.close(), or a call "
                                "with another state shape rebuilt it) before backward(); call backward() first")
        used = [i for i in record.interpolated if bool(grad_outputs[i].abs().max() > 0)]
        if used:
            times = ", ".join(f"{record.spec.user_time(float(record.taus[i])):.6g}" for i in used)
            raise AdjointNotAvailableError(
                f"the outputs at t = {times} were interpolated inside a step (options['min_step'] kept the steps "
                "from landing on them); the discrete adjoint takes output cotangents only at step boundaries, so "
                "their gradient would not be exact: lower min_step below the spacing of t, or drop it")
        start = time.perf_counter()
        self.field.bind(record.spec)
        self.hooks.start_adjoint()
        self._sweep = _adjoint.Sweep(self, record)
        try:
            gradients = self._sweep.run(grad_outputs, outputs)
        finally:
            self._sweep = None
        self.stats.backward_time = time.perf_counter() - start
        self.stats.communication_time = self.group.seconds
        return gradients

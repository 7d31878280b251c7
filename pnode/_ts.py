"""One PETSc TS built from a method row, a problem's callbacks, pnode's options and the options database
(where the command line wins), and rebuilt when a failure may have left it unusable.

petsc4py 3.26 has no TSAdapt object, so pnode's defaults (adaptor, trajectory type, the Jacobian
strategy's KSP/PC) go into the options database around ``setFromOptions`` (:class:`OptionsScope`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._events import EVENT_TOLERANCE
from ._options import OptionsScope, SolveOptions
from ._petsc import PETSc
from ._protocols import Problem
from .errors import InvalidArgumentError
from .methods import Method, by_petsc_type, running_tableau, set_tableau

# a replay steps exactly by recorded step times: no controller, which would also leave its own proposal,
# not the step taken, in PETSc's trajectory (wrong adjoint at a segment's first step)
_REPLAY = {"ts_adapt_type": "none"}
# failed Newton solves an adaptive chord-Newton solve may retry (measured: van der Pol mu=1000 needs 1)
SNES_FAILURE_BUDGET = 10


class TimeStepper:
    """Owns the TS of one problem; :attr:`running` is the method PETSc actually runs after options."""

    def __init__(self, method: Method, problem: Problem, options: SolveOptions, rtol: float, atol: float,
                 comm: PETSc.Comm, pre_step: Callable, post_step: Callable,
                 events: tuple[int, Callable, Callable] | None = None):
        self.method, self.problem, self.options = method, problem, options
        self.rtol, self.atol, self.comm = rtol, atol, comm
        self._pre_step, self._post_step = pre_step, post_step
        self._events = events      # (count, indicator, post-event) of terminal events, or None
        self.ts: PETSc.TS | None = None
        self._tolerance_vecs: list[PETSc.Vec] = []    # per-component tolerances, destroyed with the TS
        self.ts = self._build()

    def _build(self) -> PETSc.TS:
        ts = PETSc.TS().create(self.comm)
        try:
            ts.setProblemType(PETSc.TS.ProblemType.NONLINEAR)
            ts.setType(self.method.ts_type)
            set_tableau(ts, self.method)
            self.problem.install(ts)
            ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
            ts.setTolerances(rtol=self._tolerance(self.rtol), atol=self._tolerance(self.atol))
            ts.setMaxSteps(self.options.max_num_steps)
            ts.setErrorIfStepFails(False)
            fixed = self.options.step_size is not None or not self.method.adaptive
            self._defaults = {"ts_adapt_type": "none" if fixed else "basic", "ts_trajectory_type": "memory",
                              **self.options.adapt, **self.problem.option_defaults}
            if not fixed and self.method.implicit and self.options.newton == "chord":
                # a Newton solve that fails on a step's kept Jacobian rejects the step, which is retried
                # smaller with a fresh one (PETSc's default ends the solve at the first failure).  A
                # budget, not unlimited: a func that returns NaN past some time would otherwise be chased
                # with ever smaller steps (PETSc's SNES stops on a NaN residual before any test of ours)
                self._defaults["ts_max_snes_failures"] = str(SNES_FAILURE_BUDGET)
            ts.setPreStep(self._pre_step)
            ts.setPostStep(self._post_step)
            if self._events is not None:
                count, indicator, post_event = self._events
                ts.setEventHandler([0] * count, [True] * count, indicator, post_event)
                ts.setEventTolerances(tol=EVENT_TOLERANCE)
            self._configure(ts, keep_trajectory=True)
            self.running = self._running_method(ts)
        except BaseException:
            ts.destroy()
            raise
        return ts

    def _tolerance(self, value):
        """A scalar tolerance, or one per component (``options['norm']``) as a Vec the TS keeps."""
        if isinstance(value, float):
            return value
        vec = self.problem.J.createVecRight()
        vec.setArray(value)
        self._tolerance_vecs.append(vec)
        return vec

    def _running_method(self, ts: PETSc.TS) -> Method:
        running = (ts.getType(), running_tableau(ts))
        same = running == (self.method.ts_type, self.method.tableau)
        actual = self.method if same else by_petsc_type(*running, form=self.method.form)
        if actual is None:
            other = "an explicit" if self.method.form == "implicit" else "an implicit"
            raise InvalidArgumentError(
                f"PETSc TS type {ts.getType()!r} (from the options database) cannot run method "
                f"{self.method.name!r}'s callbacks: pick {other} method with method=... instead of overriding "
                "-ts_type across the explicit/implicit divide")
        if self.adaptive and not actual.adaptive:
            raise InvalidArgumentError(
                f"method {actual.name!r} has no embedded error estimate, so it cannot adapt its steps "
                "(-ts_adapt_type asks for that); use a fixed step (options={'step_size': h}) or an adaptive "
                "method such as dopri5, bosh3, rk5bs or rk8vr")
        return actual

    def configure(self, keep_trajectory: bool, replay: bool = False) -> None:
        """Apply the options database before a solve; gives the TS a fresh in-memory trajectory (a memory
        trajectory reused for a longer run than it was set up for crashes PETSc), or none at all."""
        self._configure(self.ts, keep_trajectory, replay)

    def _configure(self, ts: PETSc.TS, keep_trajectory: bool, replay: bool = False) -> None:
        ts.removeTrajectory()
        if keep_trajectory:
            ts.setSaveTrajectory()
        rejected = None
        with OptionsScope({**self._defaults, **self.options.petsc}, force=_REPLAY if replay else None):
            try:
                ts.setFromOptions()
            except PETSc.Error as error:
                rejected = error
            if rejected is None and not replay:
                self._read_settings()
        if rejected is not None:   # outside the scope: each option is then tried alone
            raise self._rejected_option(rejected) from None

    def _read_settings(self) -> None:
        """What the options database decided (inside the options scope)."""
        db = PETSc.Options()
        # measured: PETSc's adjoint then runs on lagged Jacobians and the gradients come out NaN
        self.lagged_jacobian = db.getInt("snes_lag_jacobian", 1) != 1
        self.adaptive = db.getString("ts_adapt_type") != "none"
        dt = db.getReal("ts_dt", 0.0)
        self.option_step = dt if dt > 0 else None

    def _rejected_option(self, error: PETSc.Error) -> InvalidArgumentError:
        """Name the option PETSc rejected: each Python-given option is tried alone on a scratch TS (after
        checking that the database without them is accepted: else the command line is to blame)."""
        suspects = [None, *self.options.petsc.items()]
        for suspect in suspects:
            scratch = PETSc.TS().create(PETSc.COMM_SELF)
            try:
                scratch.setType(self.method.ts_type)
                set_tableau(scratch, self.method)
                with OptionsScope(dict([suspect]) if suspect else {}):
                    scratch.setFromOptions()
            except PETSc.Error:
                if suspect is None:
                    break
                key, value = suspect
                return InvalidArgumentError(
                    f"PETSc rejected options['petsc'][{key!r}] = {value!r} (PETSc error {error.ierr}): check "
                    f"the value's type and spelling against PETSc's manual page for -{key} (e.g. run with "
                    "-help)")
            finally:
                scratch.destroy()
        given = ", ".join(f"{k}={v!r}" for k, v in self.options.petsc.items()) or "none"
        return InvalidArgumentError(
            f"PETSc rejected its options (error {error.ierr}) while reading the options database; options from "
            f"Python: {given}; also check the command line and PETSC_OPTIONS")

    def start(self, sol: PETSc.Vec, state: np.ndarray, tau: float, step: int, dt: float) -> None:
        np.copyto(sol.getArray(), state)
        sol.stateIncrease()
        ts = self.ts
        ts.setTime(tau)
        ts.setStepNumber(step)
        ts.setTimeStep(dt)
        # PETSc marks a restart only when a solve starts at step 0; an FSAL method (dopri5, bosh3) resumed
        # at a checkpoint would otherwise reuse the last stage of whatever step it computed before
        ts.restartStep()

    def rebuild(self) -> None:
        """A fresh TS at the old one's time (after a failure PETSc may have left the TS unusable)."""
        old = self.ts
        self.ts = self._build()
        self.ts.setTime(old.getTime())
        old.destroy()

    def destroy(self) -> None:
        if self.ts is not None:
            self.ts.destroy()      # releases the callbacks PETSc holds (no reference cycle is left)
            self.ts = None
        for vec in self._tolerance_vecs:
            vec.destroy()
        self._tolerance_vecs.clear()
        self._pre_step = self._post_step = self._events = None

"""The per-evaluation and per-step hooks of the features that need them, kept out of the driver's
stepping loop: torchdiffeq's ``perturb`` and ``jump_t``, its ``callback_*`` step hooks, the kept stage
graphs of ``options['keep_graph']``, and PETSc's event indicator for terminal events.

:meth:`StepHooks.observe` is installed on the vector field (its ``nudge``) only when one of them is in
use; it learns which step attempt an evaluation belongs to from ``ts.getTime()`` and
``ts.getTimeStep()`` (in the adjoint the step is ``[t + dt, t]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._bridge import vec_as_tensor
from ._spec import SolveSpec
from ._stepping import Pass, StepCallbacks
from ._timegrid import same_time_tolerance

if TYPE_CHECKING:
    from ._driver import Driver


class StepHooks:
    """The hooks of one driver (it holds the driver's TS, pass and flags)."""

    def __init__(self, driver: Driver):
        self.driver = driver
        self.callbacks: StepCallbacks | None = None
        self.jumps: frozenset = frozenset()
        self.step_start = None

    # ------------------------------------------------------------------ set-up per forward pass
    def start_pass(self, spec: SolveSpec, run: Pass, record_graphs: bool) -> None:
        driver = self.driver
        landmarks, self.jumps = driver.options.landmarks(spec.sign)
        run.landmarks = (tuple(m for m in landmarks if run.taus[0] < m < run.taus[-1]) if run.plan is None
                         else ())
        self.callbacks = StepCallbacks.of(driver.field.func, driver.stepper.adaptive)
        needed = driver.options.perturb or self.jumps or self.callbacks is not None or driver.field.graphs is not None
        self.record_graphs(record_graphs)
        driver.field.nudge = self.observe if needed else None

    def start_adjoint(self) -> None:
        if self.callbacks is not None:
            self.callbacks.adjoint_step = None

    # ------------------------------------------------------------------ evaluations
    def observe(self, tau: float) -> float:
        """At every evaluation of the vector field while a TS call runs: tells the step callbacks and the
        kept graphs which attempt it belongs to, and for ``perturb`` / ``jump_t`` moves a stage at
        either end of the current step just inside it (the forward pass and the adjoint see the same
        times): returns +1 at the step's start, -1 at its end, 0 elsewhere (integration time)."""
        driver = self.driver
        if not driver.stepping:
            return 0.0
        now, dt = driver.ts.getTime(), driver.ts.getTimeStep()
        in_adjoint = driver.in_adjoint
        graphs = driver.field.graphs
        if graphs is not None and not in_adjoint:
            graphs.attempt = (now, dt)
        if self.callbacks is not None:
            if in_adjoint:
                self.callbacks.saw_adjoint(now, dt, driver.field.sign, self.adjoint_state)
            elif driver.current_pass is not None and driver.current_pass.capturing:
                self.callbacks.saw(now, dt)
        perturb = driver.options.perturb
        if not perturb and not self.jumps:
            return 0.0
        start, end = (now + dt, now) if in_adjoint else (now, now + dt)
        if tau != start and tau != end:
            return 0.0
        if not perturb and not self.at_jump(tau):
            return 0.0
        return 1.0 if tau == start else -1.0

    def at_jump(self, tau: float) -> bool:
        return any(abs(tau - j) <= same_time_tolerance(j) for j in self.jumps)

    def adjoint_state(self):
        """dL/dy at the current adjoint step, in the user's layout (for callback_step_adjoint)."""
        driver = self.driver
        return driver.field.layout.unflatten(vec_as_tensor(driver.cost_gradient()).clone())

    # ------------------------------------------------------------------ steps
    def before_step(self, run: Pass) -> None:
        if self.callbacks is not None and run.capturing:
            driver = self.driver
            self.step_start = driver.field.layout.unflatten(vec_as_tensor(driver.sol).clone())

    def after_step(self, ts, run: Pass, tau: float) -> None:
        graphs = self.driver.field.graphs
        if graphs is not None and graphs.recording:
            graphs.accept(tau)
        if self.callbacks is not None and run.capturing:
            self.callbacks.step_done(self.step_start, self.driver.field.sign, self.driver.stepper.adaptive)
        if self.jumps and self.at_jump(tau):
            ts.restartStep()     # func jumps here: no first-same-as-last reuse of the stage before it
            self.driver.problem.restart()

    def record_graphs(self, record: bool | None) -> None:
        """Start keeping the stage graphs of the coming steps (dropping older ones), stop (``False``:
        keep what is kept), or drop them all (``None``).  Implicit methods record their stage states the
        same way (for the adjoint's batched stage Jacobians)."""
        self.driver.problem.record_stages(record)
        graphs = self.driver.field.graphs
        if graphs is None:
            return
        if record is None or record:
            graphs.clear()
        graphs.recording = bool(record)

    # ------------------------------------------------------------------ terminal events
    def event_indicator(self, ts, t, U, values) -> None:
        """TSEvent's indicator: the event functions at (t, U) while a forward pass captures, a constant
        otherwise (replays and adjoint re-steps follow recorded steps and must not stop early)."""
        driver = self.driver
        run = driver.current_pass
        if run is None or not run.capturing or run.event is None:
            values[:] = 1.0
            return
        try:
            layout = driver.field.layout
            time_ = torch.scalar_tensor(driver.field.sign * t, dtype=layout.dtype)
            with torch.no_grad():
                found = run.event.values(time_, layout.pack(layout.views(U.getArray(readonly=True))))
            values[:] = found.detach().to("cpu", torch.float64).numpy()
        except BaseException as error:  # noqa: BLE001
            driver.errors.record(error)
            raise

    def post_event(self, ts, events, t, U, forward) -> None:
        run = self.driver.current_pass
        if forward and run is not None and run.capturing and run.event_index is None:
            run.event_index = int(events[0])

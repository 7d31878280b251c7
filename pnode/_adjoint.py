"""The backward pass: TSAdjoint swept over the output times, the cost-gradient Vecs, the parameter
gradient's reduction over ranks, and ``dL/dt`` from the trajectory.

Store-all: PETSc kept every step of the forward pass; the sweep runs the adjoint back from one output
time to the previous one, adding each output's cotangent when it gets there.  If another forward ran
since (or this record was already reversed), the record's accepted steps are replayed first, exactly.
With ``options["checkpoints"]`` a schedule runner (:mod:`pnode._checkpointing`) drives replays and
adjoint segments instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._bridge import vec_as_tensor
from ._checkpointing import ScheduleRunner

if TYPE_CHECKING:
    from ._driver import Driver, ForwardRecord


@dataclass
class Gradients:
    """What one backward pass returns, in the shapes autograd wants."""

    y0: torch.Tensor                      # flat float64, this rank's shard
    params: list[torch.Tensor]            # one per parameter, its shape and dtype (sum over ranks)
    t: torch.Tensor | None                # dL/dt (sum over ranks), or None when not asked


class Sweep:
    """One backward pass of ``driver`` over ``record``."""

    def __init__(self, driver: Driver, record: ForwardRecord):
        self.driver = driver
        self.record = record
        self.lam: object | None = None
        self.mu: object | None = None       # the parameter gradient (then each rank's probe entries)

    def add_to_cost_gradient(self, values: np.ndarray) -> None:
        """lambda += values: an output time's cotangent, added when the adjoint reaches its step."""
        array = self.lam.getArray()
        array += values
        self.lam.stateIncrease()

    def run(self, grad_outputs: torch.Tensor, outputs: torch.Tensor | None) -> Gradients:
        driver, record = self.driver, self.record
        lam = self.lam = driver.sol.duplicate()
        np.copyto(lam.getArray(), grad_outputs[-1].numpy())
        lam.stateIncrease()
        mu = None
        if driver.problem.Jp is not None:
            mu = self.mu = driver.problem.Jp.createVecRight()
            mu.set(0.0)
        restore = self._adjoint_tolerances()
        try:
            driver.ts.setCostGradients([lam], [mu] if mu is not None else None)
            if len(record.step_times) == 1:
                pass            # a single output time: y = y0, nothing to integrate back
            elif driver.options.checkpoints is not None:
                self._with_schedule(grad_outputs)
            else:
                self._store_all(grad_outputs)
            grad_y0 = vec_as_tensor(lam).clone()
            n_params = record.spec.param_layout.size
            grad_p = (vec_as_tensor(mu)[:n_params].clone() if mu is not None
                      else torch.zeros(0, dtype=torch.float64))
        finally:
            driver.problem.end_adjoint()
            restore()
            driver.forget_trajectory()     # the adjoint consumed the trajectory
            record.release()
            lam.destroy()
            if mu is not None:
                mu.destroy()
            self.lam = self.mu = None
        # every rank accumulated its shard's parameter adjoint; one allreduce gives each rank the
        # gradient of the sum of all ranks' losses
        driver.group.sum_(grad_p.numpy())
        grad_t = None if outputs is None else self._time_gradient(outputs, grad_outputs, grad_y0)
        return Gradients(grad_y0, record.spec.param_layout.split(grad_p), grad_t)

    def _adjoint_tolerances(self):
        """adjoint_rtol/adjoint_atol: the transposed linear solves' tolerances (implicit methods only);
        returns what restores the forward's."""
        driver, options = self.driver, self.driver.options
        if not driver.method.implicit or (options.adjoint_rtol is None and options.adjoint_atol is None):
            return lambda: None
        ksp = driver.ts.getSNES().getKSP()
        rtol, atol, divtol, max_it = ksp.getTolerances()
        ksp.setTolerances(rtol=options.adjoint_rtol or rtol, atol=options.adjoint_atol or atol)
        return lambda: ksp.setTolerances(rtol=rtol, atol=atol, divtol=divtol, max_it=max_it)

    def _store_all(self, grad_outputs: torch.Tensor) -> None:
        driver, record = self.driver, self.record
        if not driver.holds_trajectory_of(record):
            steps = len(record.step_times) - 1
            driver.replay(record.y0.numpy(), record.step_times, 0, steps, keep_trajectory=True)
            driver.stats.recomputed_steps += steps
        # one agreement for the whole sweep (MPI): the RK adjoint has no collectives, and a failing rank
        # poisons its VJPs with NaN instead of raising
        driver.run(self._sweep_outputs, record.output_steps, grad_outputs, what="the adjoint")

    def _sweep_outputs(self, steps: list[int], grad_outputs: torch.Tensor) -> None:
        for i in range(len(steps) - 1, 0, -1):
            if steps[i] > steps[i - 1]:
                self.driver.adjoint_steps(steps[i] - steps[i - 1], agree=False, settle=False)
            self.add_to_cost_gradient(grad_outputs[i - 1].numpy())
        self.driver.settle_adjoint()      # inside the run: under MPI a failure here is agreed on too

    def _with_schedule(self, grad_outputs: torch.Tensor) -> None:
        driver, record = self.driver, self.record
        runner = record.runner
        if runner is None or runner.trajectory_token is None or not driver.holds_trajectory_of(record):
            # adaptive solve (step count known only now), or the forward part's state is gone: run the
            # whole schedule from y0 over the recorded steps
            if runner is not None:
                runner.close()
            runner = ScheduleRunner(driver, driver.options.checkpoints, record.step_times, record.output_steps)
            record.runner = runner
            runner.run_forward(record.y0.numpy(), capture=False)
        runner.run_reverse(grad_outputs)

    def _time_gradient(self, outputs: torch.Tensor, grad_outputs: torch.Tensor,
                       grad_y0: torch.Tensor) -> torch.Tensor:
        """dL/dt_i = g_i . f(t_i, y_i) for i >= 1 and dL/dt_0 = -(dL/dy0 - g_0) . f(t_0, y_0): the exact
        derivatives of the ODE's solution (torchdiffeq's convention); the discrete solution's differ by
        the integration error."""
        driver, spec, taus = self.driver, self.record.spec, self.record.taus
        f = [driver.evaluate(float(tau), outputs[i]) for i, tau in enumerate(taus)]
        local = np.array([float(torch.dot(f[i], grad_outputs[i] if i else grad_y0 - grad_outputs[0]))
                          for i in range(len(taus))])
        # f is signed by the time direction; the dot products are local shards of global sums
        dots = driver.group.global_sum(local, driver.errors, what="the time gradient") * spec.sign
        dots[0] = -dots[0]
        if self.record.event_index is not None:
            dots[-1] = 0.0    # an event solve ignores t[1]: its end is the event time (see _events)
        return torch.from_numpy(dots)

"""PETSc callbacks for implicit and IMEX methods: the IFunction form ``F(t, u, u') = u' - g_im(t, u)``.

* IJacobian: ``dF/du + a dF/du' = a*I - dg_im/du``, a Jacobian strategy (:mod:`pnode._jacobian`) holds it.
* IJacobianP: ``dF/dtheta = -dg_im/dtheta``; the shared parameter shell (:mod:`pnode._shells`) whose
  transpose product is minus a parameter VJP.
* IMEX (ARKIMEX with a :class:`IMEXField`): ``g_ex`` goes through the RHS form (an
  :class:`~pnode._rhs.RHSProblem` on the explicit part), ``g_im`` through the IFunction; both terms'
  parameters receive gradients (PETSc sums the IJacobianP and RHSJacobianP contributions).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ._batching import PREPARED_ENTRIES, RECORD_ENTRIES, ParamProbes, StagePoints
from ._bridge import ParamLayout
from ._failures import CallbackErrors, guarded
from ._field import VectorField
from ._jacobian import make_strategy
from ._newton import ChordNewton, SlopePredictor, WeightedNewtonTest
from ._options import SolveOptions
from ._petsc import PETSc
from ._rhs import RHSProblem
from ._shells import ParamJacobian
from .distributed import RankGroup
from .methods import Method

# TS types whose stage slope is ``shift * (x - z)`` with one shift per stage solve (SlopePredictor)
PREDICTED_TS_TYPES = ("arkimex", "dirk")


class IMEXField(nn.Module):
    """A vector field split as ``f(t, y) = f_implicit(t, y) + f_explicit(t, y)`` (both trainable).

    With an ARKIMEX method (``arkimex``, ``arkimexl2``, ``arkimex3/4/5``) the implicit term is solved
    implicitly and the explicit term stepped explicitly: put stiff, cheap terms (a diffusion stencil,
    linear damping) in ``implicit`` and the non-stiff learned part in ``explicit``.  With any other
    method the field is integrated as the sum ``f``.
    """

    def __init__(self, implicit: Callable, explicit: Callable):
        super().__init__()
        self.implicit = implicit
        self.explicit = explicit

    def f_implicit(self, t: torch.Tensor, y):
        return self.implicit(t, y)

    def f_explicit(self, t: torch.Tensor, y):
        return self.explicit(t, y)

    def forward(self, t: torch.Tensor, y):
        a, b = self.f_implicit(t, y), self.f_explicit(t, y)
        return tuple(x + z for x, z in zip(a, b)) if isinstance(a, tuple) else a + b


def is_split(func: object) -> bool:
    """``func`` exposes an IMEX split (``f_implicit`` and ``f_explicit``)."""
    return callable(getattr(func, "f_implicit", None)) and callable(getattr(func, "f_explicit", None))


class ImplicitProblem:
    """The PETSc callbacks of one ODE system in IFunction form (implicit and IMEX methods; a
    :class:`~pnode._protocols.Problem`)."""

    def __init__(self, field: VectorField, method: Method, n_local: int, params: ParamLayout, group: RankGroup,
                 errors: CallbackErrors, options: SolveOptions):
        self.field = field
        self.method = method
        self.errors = errors
        self.params = params
        self.options = options
        split = method.imex and is_split(field.func)
        self.implicit_field = field.part(field.func.f_implicit) if split else field
        self.strategy = make_strategy(options.jacobian, self.implicit_field, n_local, group, errors,
                                      ts_type=method.ts_type)
        self.strategy.differences = options.chord_jacobian == "differences"
        # small and medium states: the adjoint's stage work in batches (pnode._batching).  Strategies built
        # on Jacobian blocks get them for the adjoint's stages ahead, from the stage states the forward
        # pass records (chord Newton's convergence test sees each converged stage); parameter VJPs are
        # deferred.  Above RECORD_ENTRIES torch's per-call cost no longer dominates (measured: no gain at
        # 9216 entries, 1.5-2.2x faster backward passes at 576-2304)
        blocks = getattr(self.strategy, "n_blocks", None)
        rows = n_local // blocks if blocks else 0
        self.stages = (StagePoints() if blocks and options.newton == "chord" and rows * n_local <= RECORD_ENTRIES
                       else None)
        self.probes = ParamProbes(params.size, n_local, enabled=self.stages is not None)
        self.explicit = (RHSProblem(field.part(field.func.f_explicit), n_local, params, group, errors,
                                    probe_columns=self.probes.capacity) if split else None)
        self._prepared_steps = (0, 0)       # steps whose stage Jacobians the field holds, [first, last)
        self._last_stage: tuple[float, bool] = (0.0, False)    # the latest residual's (time, start slope)
        self.J = self.strategy.matrix
        self._newton_test: WeightedNewtonTest | None = None
        self._chord: ChordNewton | None = None
        self._predictor: SlopePredictor | None = None
        self.exact_jacobians(False)
        self._point_p: tuple[float, torch.Tensor] | None = None
        self._residual = self.J.createVecRight()
        self._param_shell = (ParamJacobian(self.param_vjp, n_local, self.J.getSize()[0], params.size, group,
                                           probes=self.probes.capacity) if params.size else None)
        self.Jp = self._param_shell.mat if self._param_shell else None

    @property
    def option_defaults(self) -> dict[str, str]:
        defaults = dict(self.strategy.option_defaults)
        if self.options.theta is not None:
            defaults["ts_theta_theta"] = repr(self.options.theta)
        return defaults

    def install(self, ts) -> None:
        self._start_slope_state = None    # a Vec handle of this TS (see _stage_time)
        ts.setIFunction(self.ifunction, self._residual)
        ts.setIJacobian(self.ijacobian, self.J, self.J)
        if self.Jp is not None:
            ts.setIJacobianP(self.ijacobian_p, self.Jp)
        if self.explicit is not None:
            self.explicit.install(ts)
        elif self.method.imex:
            ts.setARKIMEXFullyImplicit(True)
        self.strategy.configure(ts.getSNES().getKSP())
        if self.options.newton == "chord":
            self._free_newton_test()
            self._newton_test = WeightedNewtonTest(ts, self.errors, self.strategy,
                                                   self._stage_converged if self.stages is not None else None)
            snes = ts.getSNES()
            snes.setConvergenceTest(self._newton_test)
            # pnode's Newton loop (before the options database is read: -snes_type still chooses PETSc's)
            # stage slopes affine in the unknown with one shift per stage: the derivative predictor applies
            predicted = self.options.predictor and self.method.ts_type in PREDICTED_TS_TYPES
            self._predictor = SlopePredictor(ts) if predicted else None
            self._chord = ChordNewton(self._newton_test, self._predictor)
            snes.setType(PETSc.SNES.Type.PYTHON)
            snes.setPythonContext(self._chord)

    def _free_newton_test(self) -> None:
        if self._newton_test is not None:
            self._newton_test.free()
            self._newton_test.ts = self._newton_test.on_converged = None
            self._newton_test = None
            self._chord.test = self._chord.predictor = None   # the SNES keeps its Python context until destroyed
            self._chord = self._predictor = None

    def take_iterations(self, ts) -> tuple[int, int] | None:
        """Newton and Krylov iterations of pnode's Newton loop since the last call (``None`` when PETSc's
        own SNES runs, ``-snes_type``: then the TS counts them)."""
        chord = self._chord
        if chord is None or ts.getSNES().getType() != PETSc.SNES.Type.PYTHON:
            return None
        counts = (chord.iterations, chord.linear_iterations)
        chord.iterations = chord.linear_iterations = 0
        return counts

    def restart(self) -> None:
        """The TS restarts (a solve's or replay's start, a jump): nothing carries over from the steps before."""
        if self._predictor is not None:
            self._predictor.restart()

    def begin_step(self, step: int, tau: float, state: np.ndarray) -> None:
        """A forward step starts: chord Newton evaluates this step's Jacobian afresh."""
        self.strategy.new_step()
        if self.stages is not None:
            self.stages.start_step(step, tau, state)

    def record_stages(self, record: bool | None) -> None:
        """Start recording the coming steps' stage states (dropping older ones), stop (``False``), or
        drop them all (``None``)."""
        if self.stages is None:
            return
        if record is None or record:
            self.stages.clear()
            self.implicit_field.forget_prepared()
            self._prepared_steps = (0, 0)
        self.stages.recording = bool(record)

    def _stage_converged(self, snes) -> None:
        tau, start_slope = self._last_stage
        if not start_slope:      # that solve's unknown is the start slope, not a stage state
            self.stages.add(tau, snes.getSolution().getArray(readonly=True))

    def adjoint_piece(self, step: int, n: int) -> int:
        """TSAdjoint is about to reverse steps ``step - n .. step - 1``.  Evaluates ahead the stage
        Jacobians of the recorded steps from ``step - 1`` back (as many as fit), and returns how many
        steps the next ``adjointSolve`` should reverse (all ``n`` when nothing was evaluated ahead: the
        callbacks then evaluate each stage)."""
        first, last = self._prepared_steps
        if first <= step - 1 < last:
            return min(n, step - first)
        if self.stages is None or not self.implicit_field.batchable or step - 1 not in self.stages.by_step:
            return n
        by_step, n_local = self.stages.by_step, self.J.getLocalSize()[0]
        entries = n_local * n_local // self.strategy.n_blocks        # one stage's Jacobian rows
        runs: list[list] = []           # the steps' points, last step first
        count, first = 0, step
        while first - 1 in by_step and (not runs or (count + len(by_step[first - 1])) * entries <= PREPARED_ENTRIES):
            runs.append(by_step.pop(first - 1))
            count += len(runs[-1])
            first -= 1
        points = [point for run in reversed(runs) for point in run]
        if not points or not self.implicit_field.prepare_jacobians(points, self.strategy.n_blocks):
            self._prepared_steps = (0, 0)
            return n
        self._prepared_steps = (first, step)
        return min(n, step - first)

    def settle_adjoint(self, mu, force: bool = True) -> None:
        """Turn the deferred parameter VJPs into gradient (``mu += ...``, one batched pass); without
        ``force`` only once half the probes are taken."""
        if self.probes.pending and (force or self.probes.half_full):
            self.errors.call(self._settle, mu)

    def _settle(self, mu) -> None:
        try:
            self.probes.settle(mu.getArray(), self.implicit_field, self.params, scale=-1.0)   # Jp = -dg/dtheta
        except BaseException:
            self.probes.clear()
            mu.getArray()[:self.params.size] = np.nan    # poison mode: every rank raises at the agreement
            raise
        finally:
            mu.stateIncrease()

    def end_adjoint(self) -> None:
        """The sweep is over: drop what it evaluated ahead and deferred."""
        self.probes.clear()
        self.implicit_field.forget_prepared()
        self._prepared_steps = (0, 0)

    def exact_jacobians(self, exact: bool) -> None:
        """The adjoint needs every stage's exact Jacobian; forward steps may reuse one per step (chord)."""
        self.strategy.reuse = self.options.newton == "chord" and not exact
        # the adjoint's parameter VJPs at a stage run on the graph of that stage's Jacobian
        self.implicit_field.keep_point_graph = exact
        if not exact:
            self.implicit_field.drop_point_graph()

    def destroy(self) -> None:
        self._free_newton_test()
        self.strategy.free()
        self._residual.destroy()
        if self._param_shell is not None:
            self._param_shell.free()
        if self.explicit is not None:
            self.explicit.destroy()
        self._point_p = None

    # --- forward -------------------------------------------------------------------------------
    def _stage_time(self, ts, t: float, X, Xdot) -> float:
        """PETSc's time ``t``, except in the start-slope solve of ARKIMEX/DIRK tableaux with an explicit
        first stage (``es*sal``, ``arkimex3/4/5`` made fully implicit).

        At a restarted step (every pnode solve starts with one, a checkpoint replay too) PETSc 3.26 solves
        ``F(t_n, y_n, ydot) = 0`` for the first stage's slope, but passes the stale ``stage_time`` of the
        TS's previous stage solve (0 in a new TS) instead of ``t_n``.  For a time-dependent ``f`` that
        made the first step of a reused solver (and of every replayed segment) differ from a new
        solver's.  That solve is recognisable: its unknown is the slope, so PETSc passes the SNES
        solution as ``Xdot`` (and always the same work Vec, the step's start state, as ``X``); the right
        time is the step's start, ``ts.getTime()``."""
        if self._start_slope_state is None and self.method.ts_type in ("arkimex", "dirk") \
                and self.explicit is None and Xdot.handle == ts.getSNES().getSolution().handle:
            self._start_slope_state = X.handle
        if self._start_slope_state is not None and X.handle == self._start_slope_state:
            return ts.getTime()
        return t

    @guarded(output=4)
    def ifunction(self, ts, t, X, Xdot, F):
        t = self._stage_time(ts, t, X, Xdot)
        if self._predictor is not None and self._predictor.probing:
            self._predictor.seen(t, Xdot)
            return
        start_slope = self._start_slope_state is not None and X.handle == self._start_slope_state
        out = F.getArray()
        self._last_stage = (t, start_slope)
        self.implicit_field.residual_into(t, X.getArray(readonly=True), Xdot.getArray(readonly=True), out)
        F.stateIncrease()

    @guarded()
    def ijacobian(self, ts, t, X, Xdot, shift, A, P):
        self.strategy.update(self._stage_time(ts, t, X, Xdot), X.getArray(readonly=True), shift)

    # --- adjoint -------------------------------------------------------------------------------
    @guarded()
    def ijacobian_p(self, ts, t, X, Xdot, shift, Jp):
        self._point_p = (t, torch.from_numpy(X.getArray(readonly=True)).clone())

    @guarded(output=1)
    def param_vjp(self, lam, out):
        array = out.getArray()
        if not self.probes.defer(self._point_p, lam.getArray(readonly=True), array):
            t, x = self._point_p
            grads = self.implicit_field.vjp(t, x.numpy(), lam.getArray(readonly=True), None)
            self.params.write(array, grads, scale=-1.0)
            array[self.params.size:] = 0.0
        out.stateIncrease()

"""When Newton's iteration of an implicit stage has converged, in the integrator's own error norm.

Chord Newton (``options['newton'] = 'chord'``, the default) keeps one Jacobian per step, so it converges
linearly; PETSc's default test (``||dx|| < 1e-8 ||x||`` in the 2-norm, or the residual down by 1e-8) then
stops where a component far smaller than the largest one (Robertson's ``y2 ~ 1e-5``) is still off in its
leading digits.  This test stops when the Newton update is small in the weighted RMS norm the step-size
controller uses, ``||dx_i / (atol + rtol |x_i|)||_rms <= kappa``, so every component is solved to a
fraction ``kappa`` of the accuracy asked of the step.  Newton tolerances given as PETSc options
(``-snes_rtol``, ``-snes_atol``, ``-snes_stol``) switch back to PETSc's own test with them.  The norm is a
PETSc Vec norm, so under MPI every rank takes the same decision.

:class:`ChordNewton` is the loop around the test, as PETSc's SNES: deciding on the update, it needs no
residual at the converged iterate and no line-search Jacobian product.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._petsc import PETSc

# the Newton error stays this fraction of the integration tolerance (diffrax's default is 1e-2; tighter
# here because the discrete adjoint treats the stage equations as solved exactly)
KAPPA = 1e-4
# an update this many times the rounding level of the iterate (in the same weighted norm) is noise: the
# iterate cannot be improved (a float32 field at rtol 1e-6 rounds at about 0.1 of the tolerance)
ROUNDING_FACTOR = 10.0
# updates shrinking slower than this: the kept Jacobian is too stale (it is evaluated afresh)
STALL_RATE = 0.5
DIVERGENCE_TOLERANCE = 1e4      # the residual grew this much: diverged (PETSc's default divtol)

_Reason = PETSc.SNES.ConvergedReason
PETSC_DEFAULTS = (1e-8, 1e-50, 1e-8)      # SNES rtol, atol, stol when nobody set them


def given_tolerances(snes) -> tuple[float, float, float] | None:
    """The SNES rtol, atol, stol if somebody set them (-snes_rtol, ...), else None (pnode's test)."""
    tolerances = tuple(snes.getTolerances()[:3])
    return None if tolerances == PETSC_DEFAULTS else tolerances


def _strictest(tolerance) -> float:
    """A scalar tolerance, or the smallest of per-component ones (``options['norm']`` weights components
    in the step control, may even ignore some; Newton solves every component to the strictest)."""
    if isinstance(tolerance, PETSc.Vec):
        return float(tolerance.min()[1])
    return float(tolerance)


class WeightedNewtonTest:
    """A SNES convergence test (``snes.setConvergenceTest``) in the weighted RMS norm of the update."""

    def __init__(self, ts: PETSc.TS, errors, strategy, on_converged=None):
        self.ts = ts
        self.on_converged = on_converged      # called with the SNES when a solve has converged
        self.errors = errors                  # a CallbackErrors
        self.strategy = strategy              # the Jacobian strategy (chord: it may hold a stale Jacobian)
        self._max_it = 50
        self._weights: PETSc.Vec | None = None
        self._scaled: PETSc.Vec | None = None
        self._previous = math.inf
        self._rate = 0.5           # unknown before the first two updates: |dx| itself must be small
        self._tolerances = (0.0, 0.0)
        self._given: tuple[float, float, float] | None = None
        self._fnorm0 = 0.0
        self._eps = float(torch.finfo(strategy.field.layout.dtype).eps)

    def __call__(self, snes, it: int, norms) -> int:
        try:
            reason = self._test(snes, it, norms)
            if reason > 0 and self.on_converged is not None:
                self.on_converged(snes)
            return reason
        except BaseException as error:  # noqa: BLE001 - re-raised by the driver after the solve
            self.errors.record(error)
            return _Reason.DIVERGED_USER

    def _test(self, snes, it: int, norms) -> int:
        _, _, fnorm = norms
        if not math.isfinite(fnorm):
            return self._fatal(_Reason.DIVERGED_FUNCTION_NANORINF)
        if it == 0:
            self._previous = math.inf
            self._rate = 0.5
            self._tolerances = tuple(_strictest(tol) for tol in self.ts.getTolerances())
            self._max_it = snes.getTolerances()[3]
            # Newton tolerances set by the user (-snes_rtol, ...) keep PETSc's meaning
            self._given = given_tolerances(snes)
            self._fnorm0 = fnorm
            return _Reason.CONVERGED_FNORM_ABS if fnorm == 0.0 else _Reason.ITERATING
        if self._given is not None:
            return self._petsc_test(it, norms)
        size = self._update_norm(snes)
        if not math.isfinite(size):
            return self._fatal(_Reason.DIVERGED_FUNCTION_NANORINF)
        # the remaining error after a contraction with rate rho is about rho / (1 - rho) * |dx|; the rate
        # is measured from the last two updates (before that, 1/2: |dx| itself must be small)
        if it > 1:
            self._rate = size / self._previous
        if fnorm > DIVERGENCE_TOLERANCE * self._fnorm0:     # PETSc's default divergence test
            return self._fail(_Reason.DIVERGED_DTOL)
        # every decision above and here uses global norms only, so all ranks take it together; the
        # Jacobian's freshness is a rank's own (a failed rank skips its callbacks) and only chooses
        # whether this rank evaluates its blocks afresh
        if self._rate < 1.0 and size * self._rate / (1.0 - self._rate) <= KAPPA:
            return _Reason.CONVERGED_SNORM_RELATIVE
        if self._at_rounding_level(snes, size):
            return _Reason.CONVERGED_SNORM_RELATIVE
        if self._rate >= STALL_RATE and it > 1 and not self.strategy.fresh:
            # the kept Jacobian is too stale for this stage: evaluate it at the next iterate (a fresh
            # Newton step may contract slowly far from the root: it goes on, up to -snes_max_it)
            self.strategy.new_step(exact=True)
            self._rate = 0.5
        self._previous = size
        if it >= self._max_it:
            return self._fail(_Reason.DIVERGED_MAX_IT)
        return _Reason.ITERATING

    @property
    def on_residual(self) -> bool:
        """The test in use is PETSc's, on the residual (Newton tolerances given as PETSc options)."""
        return self._given is not None

    def _petsc_test(self, it: int, norms) -> int:
        """PETSc's default test (SNESConvergedDefault) with the user's tolerances."""
        xnorm, ynorm, fnorm = norms
        rtol, atol, stol = self._given
        if fnorm < atol:
            return _Reason.CONVERGED_FNORM_ABS
        if fnorm <= rtol * self._fnorm0:
            return _Reason.CONVERGED_FNORM_RELATIVE
        if ynorm < stol * xnorm:
            return _Reason.CONVERGED_SNORM_RELATIVE
        if it >= self._max_it:
            return self._fail(_Reason.DIVERGED_MAX_IT)
        return _Reason.ITERATING

    def _fatal(self, reason: int) -> int:
        """A non-finite residual or update: a smaller step will not help, so the solve ends here (the TS
        would otherwise retry the step up to -ts_max_reject times).  The norms are global: every rank
        ends together."""
        self.ts.setConvergedReason(PETSc.TS.ConvergedReason.DIVERGED_NONLINEAR_SOLVE)
        return self._fail(reason)

    def _fail(self, reason: int) -> int:
        self.strategy.new_step(exact=True)      # the retried step starts with a fresh, exact Jacobian
        return reason

    def failed(self, reason: int) -> int:
        """A failure found outside the test (the Newton loop's line search): a NaN residual ends the
        solve (see :meth:`_fatal`), others let the TS retry the step."""
        return self._fatal(reason) if reason == _Reason.DIVERGED_FUNCTION_NANORINF else self._fail(reason)

    def _update_norm(self, snes) -> float:
        x, dx = snes.getSolution(), snes.getSolutionUpdate()
        if self._weights is None or self._weights.getLocalSize() != x.getLocalSize():
            self.free()
            self._weights, self._scaled = x.duplicate(), x.duplicate()
        rtol, atol = self._tolerances
        w = self._weights
        x.copy(w)
        w.abs()
        w.scale(rtol)
        w.shift(atol)
        self._scaled.pointwiseDivide(dx, w)
        return self._scaled.norm() / math.sqrt(max(1, x.getSize()))

    def _at_rounding_level(self, snes, size: float) -> bool:
        """The update is within ROUNDING_FACTOR of the iterate's own rounding in the weighted norm,
        ``eps |x_i| / w_i`` (the field's precision).  That rounding is at most ``eps / rtol``, so most
        updates are decided without computing it (the decision uses global norms: ranks agree)."""
        rtol = self._tolerances[0]
        if rtol > 0 and size > ROUNDING_FACTOR * self._eps / rtol:
            return False
        x, scaled = snes.getSolution(), self._scaled
        x.copy(scaled)
        scaled.abs()
        scaled.pointwiseDivide(scaled, self._weights)
        return size <= ROUNDING_FACTOR * self._eps * scaled.norm() / math.sqrt(max(1, x.getSize()))

    def free(self) -> None:
        for vec in (self._weights, self._scaled):
            if vec is not None:
                vec.destroy()
        self._weights = self._scaled = None


class SlopePredictor:
    """Where chord Newton starts a stage: at the point whose stage slope is the one extrapolated, linearly
    in time, from the last two converged stages (the last one's alone after a restart).

    PETSc starts each stage's Newton iteration from the previous stage's value (ARKIMEX, DIRK), which for
    a stiff system is thousands of tolerances away from the root (measured: the first update is 1e3-1e4
    in the weighted norm).  The stage slope is affine in the unknown, ``xdot = shift * (x - z)``, so the
    point where it equals a predicted slope ``k`` is ``x0 + (k - xdot(x0)) / shift``: the derivative
    predictor (robertson, arkimex4, 25 steps: 376 -> 265 Newton iterations per training step's forward
    pass; 290 with the last slope alone).  ``xdot(x0)`` and the stage time come from one residual
    callback that skips the field (:attr:`probing`); ``shift`` from the last stage's, rescaled by the
    step size (exact for singly diagonal tableaux; only the guess depends on it); each converged slope
    from the exact shift of its stage's Jacobian.  The carried slopes are dropped at every restart (a
    solve's start, a checkpoint replay, a jump), so a step's result depends on its start state and the
    steps taken since the restart only, as with first-same-as-last methods.
    """

    def __init__(self, ts: PETSc.TS):
        self.ts = ts
        self.probing = False            # the residual callback is asked for the stage slope only
        self._seen: list = []           # (stage time, slope) the callback saw while probing
        self._history: list = []        # the last two converged stages' (time, slope)
        self._shift = (0.0, 0.0)        # the last stage's (shift, step size)
        self._base: tuple | None = None
        self._probed = 0                # the handle of the Vec being probed

    def restart(self) -> None:
        self._history.clear()

    def seen(self, tau: float, xdot) -> None:
        """Called by the residual callback while probing with the stage time and the slope PETSc formed.
        A start-slope solve (its unknown is the slope itself, passed as ``xdot``) has no stage to predict."""
        if xdot.handle != self._probed:
            self._seen.append((tau, xdot.getArray(readonly=True).copy()))

    def _predicted(self, tau: float, shape) -> np.ndarray | None:
        history = [(t, k) for t, k in self._history if k.shape == shape]
        if not history:
            return None
        t1, k1 = history[-1]
        if len(history) == 1:
            return k1
        t0, k0 = history[0]
        if not abs(t1 - t0) > 1e-12 * max(1.0, abs(t1)):
            return k1
        return k1 + ((tau - t1) / (t1 - t0)) * (k1 - k0)

    def start(self, snes, x, residual) -> None:
        """Move ``x`` (PETSc's guess) to the predicted point."""
        self._base = None
        self._seen.clear()
        self._probed = x.handle
        self.probing = True
        try:
            snes.computeFunction(x, residual)
        finally:
            self.probing = False
        if not self._seen:
            return
        tau, slope = self._seen.pop()
        start = x.getArray()
        self._base = (tau, start.copy(), slope)
        shift, step = self._shift
        now = self.ts.getTimeStep()
        target = self._predicted(tau, slope.shape)
        if target is None or not shift > 0 or not now > 0:
            return
        start += (target - slope) * (now / (shift * step))
        x.stateIncrease()          # written through the array: cached norms of x are stale

    def converged(self, x, shift: float) -> None:
        """The stage converged at ``x``; ``shift`` is its Jacobian's."""
        if self._base is None or not shift > 0:
            self._history.clear()
            return
        tau, start, slope = self._base
        self._history = [*self._history[-1:], (tau, slope + shift * (x.getArray(readonly=True) - start))]
        self._shift = (shift, self.ts.getTimeStep())


class ChordNewton:
    """Chord Newton's loop, as PETSc's SNES (a Python SNES: ``snes.setType('python')``).

    PETSc's ``newtonls`` evaluates the residual at every new iterate, the last one included, and its
    backtracking line search applies the Jacobian once per iteration for the slope.  Chord Newton's
    test (:class:`WeightedNewtonTest`) decides on the update alone, so this loop stops without the
    residual at the converged iterate (about a quarter of the forward pass's residuals), re-forms the
    Jacobian only at a solve's start or when the test re-evaluated it, and backtracks (halving the step,
    at most :data:`MAX_HALVINGS` times) only when the residual's norm grew: the iterates are those of
    ``newtonls`` whenever its full step is accepted.  The Krylov solve is PETSc's KSP of this SNES, so
    ``-ksp_*`` and ``-pc_*`` options still apply; ``-snes_type`` chooses another SNES."""

    MAX_HALVINGS = 10

    def __init__(self, test: WeightedNewtonTest, predictor: SlopePredictor | None = None):
        self.test = test
        self.predictor = predictor
        # PETSc's linear-iteration counter cannot be set from Python, and the TS leaves the start-slope
        # solves out of its Newton count: the driver reads these instead (every solve of this SNES)
        self.iterations = 0
        self.linear_iterations = 0

    def solve(self, snes, b, x) -> None:
        try:
            self._solve(snes, x)
        except BaseException as error:  # noqa: BLE001 - re-raised by the driver as itself
            self.test.errors.record(error)
            raise

    def _solve(self, snes, x) -> None:
        test, strategy = self.test, self.test.strategy
        residual, y = snes.getFunction()[0], snes.getSolutionUpdate()
        ksp = snes.getKSP()
        jacobian, preconditioner = snes.getJacobian()[:2]
        form = True           # a solve's first Jacobian: its shift may be new
        # PETSc's test with the user's tolerances is relative to the residual at PETSc's own guess
        predictor = self.predictor if given_tolerances(snes) is None else None
        if predictor is not None:
            predictor.start(snes, x, residual)
        snes.computeFunction(x, residual)
        fnorm = residual.norm()
        snes.monitor(0, fnorm)            # -snes_monitor and friends: each residual the loop computes
        reason = test(snes, 0, (0.0, 0.0, fnorm))
        it = 0
        # under MPI every rank calls the Jacobian callback at every iteration, as newtonls does: whether the
        # kept matrix is still held is a rank's own state, and an assembled matrix's update is collective
        every_iteration = snes.getComm().getSize() > 1
        while reason == _Reason.ITERATING:
            if form or every_iteration or not strategy.holds_jacobian:
                snes.computeJacobian(x, jacobian, preconditioner)
                ksp.setOperators(jacobian, preconditioner)
                form = False
            else:
                strategy.reused()
            ksp.solve(residual, y)
            self.linear_iterations += ksp.getIterationNumber()
            if ksp.getConvergedReason() < 0:
                reason = test.failed(_Reason.DIVERGED_LINEAR_SOLVE)
                break
            x.axpy(-1.0, y)
            it += 1
            self.iterations += 1
            snes.setIterationNumber(it)
            if test.on_residual:
                # PETSc's test with the user's tolerances needs the residual at the new iterate first
                snes.computeFunction(x, residual)
                previous, fnorm = fnorm, residual.norm()
                snes.monitor(it, fnorm)
                reason = test(snes, it, (x.norm(), y.norm(), fnorm))
                if reason == _Reason.ITERATING and not fnorm <= previous:
                    fnorm, reason = self._backtrack_or_fail(snes, x, y, residual, previous)
                continue
            reason = test(snes, it, (0.0, 0.0, fnorm))
            if reason == _Reason.ITERATING:
                fnorm, reason = self._residual(snes, x, y, residual, fnorm)
                snes.monitor(it, fnorm)
        snes.setFunctionNorm(fnorm)
        snes.setConvergedReason(reason)
        if predictor is not None and reason > 0:
            predictor.converged(x, strategy.shift)

    def _residual(self, snes, x, y, residual, previous: float) -> tuple[float, int]:
        """The residual at the new iterate, backing off along the update if its norm grew."""
        snes.computeFunction(x, residual)
        fnorm = residual.norm()
        if not fnorm <= previous:          # grew (or NaN): back off along the update
            return self._backtrack_or_fail(snes, x, y, residual, previous)
        return fnorm, _Reason.ITERATING

    def _backtrack_or_fail(self, snes, x, y, residual, previous: float) -> tuple[float, int]:
        fnorm = self._backtrack(snes, x, y, residual, previous)
        if fnorm <= previous:
            return fnorm, _Reason.ITERATING
        return fnorm, self.test.failed(_Reason.DIVERGED_LINE_SEARCH if math.isfinite(fnorm)
                                       else _Reason.DIVERGED_FUNCTION_NANORINF)

    def _backtrack(self, snes, x, y, residual, previous: float) -> float:
        step = 1.0
        fnorm = math.inf
        for _ in range(self.MAX_HALVINGS):
            x.axpy(step / 2, y)              # x = x_old - (step / 2) * y
            step /= 2
            snes.computeFunction(x, residual)
            fnorm = residual.norm()
            if fnorm <= previous:
                break
        y.scale(step)                          # the update taken, for the test's contraction rate
        return fnorm

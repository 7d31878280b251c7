"""Failures, in one place: capturing exceptions raised inside PETSc callbacks (and poisoning outputs
under MPI), and translating PETSc's converged reasons and error codes into pnode exceptions.

Capture: PETSc turns a Python exception raised in a callback into ``PETSc.Error(101)``.  Every
callback is wrapped by :func:`guarded`, which keeps the first exception in a :class:`CallbackErrors`
so the driver re-raises it as itself.  In poison mode (a distributed solve) the callback does not raise
at all: it writes NaN into its output Vec so PETSc's global norms stop every rank together, instead of
one rank leaving a collective the others wait in (see :mod:`pnode.distributed` for the agreement).

Translation: plain functions beside the tables of PETSc's reasons and their fix hints.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._petsc import PETSc
from .errors import (
    MaxStepsError,
    NonFiniteError,
    PetscConfigurationError,
    SolverError,
    StepSizeUnderflowError,
)

TS_REASONS = {v: k for k, v in vars(PETSc.TS.ConvergedReason).items() if not k.startswith("_")}
SNES_REASONS = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if not k.startswith("_")}
FIX_HINTS = {
    "DIVERGED_STEP_REJECTED": "too many rejected steps: loosen rtol/atol, raise -ts_max_step_rejections, or use "
                              "a method suited to the problem (stiff systems need implicit methods)",
    "DIVERGED_NONLINEAR_SOLVE": "Newton diverged: try a smaller step or a better preconditioner",
}
DEFAULT_HINT = "see PETSc's -ts_monitor and -ts_adapt_monitor output"
PETSC_ERR_FP = 72       # PETSC_ERR_FP: a floating-point exception (NaN/Inf in an adaptive error norm)
UNDERFLOW = 1e-13       # a step this small relative to the time moves it by at most ~500 ulps


class CallbackErrors:
    """The first exception raised inside a PETSc callback of one solver, and whether callbacks poison
    (write NaN and return) instead of raising: they do in distributed solves."""

    def __init__(self, poison: bool) -> None:
        self.poison = poison
        self.error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    def pop(self) -> BaseException | None:
        error, self.error = self.error, None
        return error

    def call(self, fn: Callable, *args):
        """Run ``fn`` (rank-local work outside PETSc callbacks that may raise: the user's func).  Without
        poisoning its exception propagates as it is; in poison mode it is recorded and ``None`` returned,
        so the rank still reaches the next collective, where every rank raises together."""
        if not self.poison:
            return fn(*args)
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised on every rank at the next agreement
            self.record(error)
            return None


def guarded(output: int | None = None):
    """Decorate a callback method of an object with an ``errors`` attribute (:class:`CallbackErrors`).

    Any exception is recorded before PETSc turns it into error 101.  In poison mode the callback fills
    its output Vec (positional argument ``output``, if it has one) with NaN instead of raising; once a
    rank has failed, later calls on it only write NaN (the user's function is not called again on
    garbage): callbacks that merely record a point are skipped, and the products, guarded too, give NaN.
    """

    def decorate(method):
        def wrapper(self, *args):
            errors = self.errors
            if errors.poison and errors.error is not None:
                if output is not None:
                    args[output].set(math.nan)
                return None
            try:
                return method(self, *args)
            except BaseException as error:  # noqa: BLE001 - re-raised by the driver as itself
                errors.record(error)
                if not errors.poison:
                    raise
                if output is not None:
                    args[output].set(math.nan)
                return None

        wrapper.__name__ = method.__name__
        wrapper.__doc__ = method.__doc__
        return wrapper

    return decorate


# ---------------------------------------------------------------------------- translation
def nonfinite_error(t: float, step: int) -> NonFiniteError:
    return NonFiniteError(
        f"the solution became NaN or Inf at t={t:.6g} (step {step}); the vector field produced non-finite "
        "values: lower the step size, or check the model for overflow", reason="NONFINITE", time=t)


def stopped_error(ts, sign: float, target: float, max_num_steps: int, implicit: bool) -> SolverError:
    """The exception for a solve that ended before ``target`` (tau), from PETSc's converged reason."""
    reason = ts.getConvergedReason()
    tau = ts.getTime()
    t = sign * tau
    name = TS_REASONS.get(reason, str(reason))
    if reason == PETSc.TS.ConvergedReason.CONVERGED_ITS:
        return MaxStepsError(
            f"the solve stopped after {ts.getStepNumber()} steps at t={t:.6g} before reaching "
            f"t={sign * target:.6g}; raise options['max_num_steps'] (now {max_num_steps}) or loosen rtol/atol",
            reason="CONVERGED_ITS", time=t)
    dt = ts.getTimeStep()
    # the controller shrank the step to rounding level: a blow-up or singularity, whatever the reason
    underflow = abs(dt) <= UNDERFLOW * max(abs(tau), abs(target))
    hint = (f"step size underflow (dt={dt:.3g}): the solution probably blows up or the model is singular "
            "near this time; check the model and data there, or end the solve earlier" if underflow
            else FIX_HINTS.get(name, DEFAULT_HINT))
    if implicit:
        snes = SNES_REASONS.get(ts.getSNES().getConvergedReason(), "")
        hint += f" (last Newton solve: {snes}, step size {dt:.3g})"
    kind = StepSizeUnderflowError if underflow else SolverError
    return kind(f"PETSc TS stopped with reason {name} at t={t:.6g}: {hint}", reason=name, time=t)


def petsc_error(ierr: int, error: PETSc.Error | None, t: float) -> Exception:
    """The pnode exception for a PETSc error code raised by a TS call near time ``t``."""
    if "revolve" in str(error):
        return PetscConfigurationError(
            "these -ts_trajectory_* options need a PETSc configured with --download-revolve (this one was "
            "not); use pnode's own bounded-memory adjoint instead: options={'checkpoints': K}")
    if ierr == PETSC_ERR_FP:
        return NonFiniteError(
            f"NaN or Inf appeared in the solve near t={t:.6g} (PETSc error 72, floating point); the vector "
            "field produced non-finite values", reason="NONFINITE", time=t)
    return SolverError(f"PETSc failed with error {ierr} near t={t:.6g}: {error or 'on another rank'}",
                       reason=f"PETSC_ERROR_{ierr}", time=t)

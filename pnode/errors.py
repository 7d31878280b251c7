"""Exception types raised by pnode.

Every error says what was wrong and how to fix it.  Errors raised by the user's own vector field are
not wrapped: they reach the caller as themselves, with their own traceback.
"""

from __future__ import annotations


class PnodeError(Exception):
    """Base class of every exception pnode raises itself."""


class InvalidArgumentError(PnodeError, ValueError):
    """An argument of ``odeint``/``ODESolver`` is malformed (``t``, ``y0``, ``options``, ...)."""


class UnknownMethodError(InvalidArgumentError):
    """The ``method`` name is not in pnode's method table."""


class ShapeMismatchError(InvalidArgumentError):
    """The vector field returned a tensor whose shape or dtype differs from the state's."""


class AdjointNotAvailableError(PnodeError):
    """The chosen PETSc integrator has no discrete adjoint, so gradients cannot be computed."""


class PetscConfigurationError(PnodeError):
    """The installed PETSc cannot run pnode (for example, it was built with complex scalars)."""


class SolverError(PnodeError):
    """PETSc's time integrator stopped before the final time.

    Attributes
    ----------
    reason:
        PETSc's converged reason name (for example ``DIVERGED_STEP_REJECTED``), or a short pnode tag.
    time:
        The time at which the integrator stopped.
    """

    def __init__(self, message: str, *, reason: str, time: float):
        super().__init__(message)
        self.reason = reason
        self.time = time


class NonFiniteError(SolverError):
    """The solution or the vector field became NaN or Inf."""


class StepSizeUnderflowError(SolverError):
    """The step size fell to rounding level relative to the time (PETSc's minimum, 1e-20 by default):
    usually a finite-time blow-up of the solution or a singular model at :attr:`time`."""


class MaxStepsError(SolverError):
    """The integrator reached ``max_num_steps`` before the final time."""


class BackwardError(PnodeError):
    """The backward pass cannot be carried out as asked (for example, the parameters changed in place)."""


class RemoteRankError(PnodeError):
    """Another MPI rank of a distributed solve failed; this rank stops with it instead of waiting.

    The rank where the failure happened raises the original exception; every other rank raises this.

    Attributes
    ----------
    rank:
        The (lowest) rank that failed.
    description:
        ``"ExceptionType: message"`` of that rank's exception.
    """

    def __init__(self, message: str, *, rank: int, description: str):
        super().__init__(message)
        self.rank = rank
        self.description = description

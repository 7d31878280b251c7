"""Exception types raised by pnode.

Every error says what was wrong and how to fix it.  Errors raised by the user's own vector field are
not wrapped: they reach the caller as themselves, with their own traceback.
"""

from __future__ import annotations


class PnodeError(Exception):
    """Base class of every exception pnode raises itself.

    Catch it to handle any pnode failure; an exception raised inside your own vector field is not a
    ``PnodeError``: it reaches you as itself.

    Examples
    --------
    >>> import torch, pnode
    >>> try:
    ...     pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 0.0]), adjoint_params=())
    ... except pnode.PnodeError as error:
    ...     print(type(error).__name__)
    InvalidArgumentError
    """


class InvalidArgumentError(PnodeError, ValueError):
    """An argument of ``odeint``/``ODESolver`` is malformed (``t``, ``y0``, ``options``, ...).

    Also a :class:`ValueError`, so code written for torchdiffeq's argument checks keeps working.  The
    message names the argument and the fix.

    Examples
    --------
    >>> import torch, pnode
    >>> try:
    ...     pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), options={"stepsize": 0.1},
    ...                  adjoint_params=())
    ... except pnode.InvalidArgumentError as error:
    ...     print(str(error).splitlines()[0])
    unknown option(s) 'stepsize'; valid options:
    """


class UnknownMethodError(InvalidArgumentError):
    """The ``method`` name is not in pnode's method table; the message lists the valid names.

    Examples
    --------
    >>> import torch, pnode
    >>> try:
    ...     pnode.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk45",
    ...                  adjoint_params=())
    ... except pnode.UnknownMethodError as error:
    ...     print(str(error).splitlines()[0])
    unknown method 'rk45'; valid methods are:
    """


class ShapeMismatchError(InvalidArgumentError):
    """The vector field returned a tensor whose shape or dtype differs from the state's.

    Examples
    --------
    >>> import torch, pnode
    >>> try:
    ...     pnode.odeint(lambda t, y: y.sum(), torch.ones(2), torch.tensor([0.0, 1.0]), adjoint_params=())
    ... except pnode.ShapeMismatchError:
    ...     print("the field must return a tensor shaped like y")
    the field must return a tensor shaped like y
    """


class AdjointNotAvailableError(PnodeError):
    """The chosen integrator has no discrete adjoint, so gradients cannot be computed.

    ``bdf``, ``rosw`` and ``scipy_solver`` integrate forward only: the solve runs, and the backward pass
    raises this error, whose message lists the methods that have an adjoint.  Run such solves under
    :func:`torch.no_grad`, or pick one of the listed methods.

    Examples
    --------
    >>> import torch, pnode
    >>> y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    >>> ys = pnode.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="bdf")
    >>> try:
    ...     ys.sum().backward()
    ... except pnode.AdjointNotAvailableError as error:
    ...     print(str(error).split(" (")[0])
    method 'bdf' runs forward only
    """


class PetscConfigurationError(PnodeError):
    """The installed PETSc cannot run pnode, or cannot run what was asked of it.

    Raised for a PETSc built with complex or single-precision scalars (pnode needs real double
    precision), and for ``-ts_trajectory_*`` options that need external packages the build lacks
    (revolve, CAMS): use ``options["checkpoints"]`` instead.
    """


class SolverError(PnodeError):
    """PETSc's time integrator stopped before the final time.

    Raised for a failed Newton solve, too many rejected steps and the like; the message holds PETSc's
    converged reason (and the last SNES reason for implicit methods) and a hint.  The solver can be
    called again afterwards.

    Parameters
    ----------
    message : str
        What happened and how to fix it.
    reason : str
        PETSc's converged reason name (for example ``DIVERGED_STEP_REJECTED``), or a short pnode tag.
    time : float
        The time at which the integrator stopped.

    Attributes
    ----------
    reason : str
        As above.
    time : float
        As above.

    Examples
    --------
    >>> import pnode
    >>> error = pnode.SolverError("Newton failed", reason="DIVERGED_NONLINEAR_SOLVE", time=0.25)
    >>> (error.reason, error.time)
    ('DIVERGED_NONLINEAR_SOLVE', 0.25)
    """

    def __init__(self, message: str, *, reason: str, time: float):
        super().__init__(message)
        self.reason = reason
        self.time = time


class NonFiniteError(SolverError):
    """The solution or the vector field became NaN or Inf (:attr:`time` says when).

    Examples
    --------
    >>> import torch, pnode
    >>> t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> try:
    ...     pnode.odeint(lambda t, y: y * 1e300 * 1e300 * t, torch.ones(2, dtype=torch.float64), t, adjoint_params=())
    ... except pnode.NonFiniteError as error:
    ...     print(type(error).__name__, error.time)
    NonFiniteError 0.0
    """


class StepSizeUnderflowError(SolverError):
    """The step size fell to rounding level relative to the time (PETSc's minimum, 1e-20 by default).

    Usually a finite-time blow-up of the solution or a singular model at :attr:`time`.

    Examples
    --------
    >>> import torch, pnode
    >>> t = torch.tensor([0.0, 2.0], dtype=torch.float64)      # y' = y^2, y(0) = 1 blows up at t = 1
    >>> try:
    ...     pnode.odeint(lambda t, y: y * y, torch.ones(1, dtype=torch.float64), t, adjoint_params=())
    ... except pnode.SolverError as error:
    ...     print(isinstance(error, pnode.StepSizeUnderflowError) or isinstance(error, pnode.NonFiniteError),
    ...           round(error.time, 3))
    True 1.0
    """


class MaxStepsError(SolverError):
    """The integrator reached ``options["max_num_steps"]`` before the final time.

    Examples
    --------
    >>> import torch, pnode
    >>> t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> try:
    ...     pnode.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, method="rk4",
    ...                  options={"step_size": 0.01, "max_num_steps": 10}, adjoint_params=())
    ... except pnode.MaxStepsError as error:
    ...     print(type(error).__name__)
    MaxStepsError
    """


class BackwardError(PnodeError):
    """The backward pass cannot be carried out as asked.

    For example, a parameter of the vector field was changed in place between the forward and the
    backward pass (the stored trajectory no longer matches the model), as torch's own in-place checks
    would report.
    """


class RemoteRankError(PnodeError):
    """Another MPI rank of a distributed solve failed; this rank stops with it instead of waiting.

    The rank where the failure happened raises the original exception; every other rank raises this.

    Parameters
    ----------
    message : str
        What failed where.
    rank : int
        The (lowest) rank that failed.
    description : str
        ``"ExceptionType: message"`` of that rank's exception.

    Attributes
    ----------
    rank : int
        As above.
    description : str
        As above.

    Examples
    --------
    >>> import pnode
    >>> error = pnode.RemoteRankError("rank 1 failed", rank=1, description="ValueError: bad batch")
    >>> error.rank, error.description
    (1, 'ValueError: bad batch')
    """

    def __init__(self, message: str, *, rank: int, description: str):
        super().__init__(message)
        self.rank = rank
        self.description = description

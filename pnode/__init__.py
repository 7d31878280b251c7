"""pnode: neural ODEs trained with PETSc time integrators and reverse-accurate discrete adjoints."""

from . import nn as nn  # the public module pnode.nn (ODEBlock, CNF)
from ._api import ODESolver, last_stats, odeint, odeint_adjoint, odeint_event, odeint_with_jumps
from ._implicit import IMEXField
from .errors import (
                     AdjointNotAvailableError,
                     BackwardError,
                     InvalidArgumentError,
                     MaxStepsError,
                     NonFiniteError,
                     PetscConfigurationError,
                     PnodeError,
                     RemoteRankError,
                     ShapeMismatchError,
                     SolverError,
                     StepSizeUnderflowError,
                     UnknownMethodError,
)
from .methods import METHODS, available_methods, method_table
from .regularization import embedded_error_estimate, local_error_regularizer
from .stats import SolveStats

__version__ = "0.1.0"

__all__ = [
    "odeint", "odeint_adjoint", "odeint_event", "odeint_with_jumps", "ODESolver", "IMEXField", "SolveStats",
    "last_stats", "METHODS", "available_methods", "method_table", "PnodeError", "InvalidArgumentError",
    "UnknownMethodError", "ShapeMismatchError", "AdjointNotAvailableError", "PetscConfigurationError",
    "SolverError", "NonFiniteError", "MaxStepsError", "StepSizeUnderflowError", "BackwardError",
    "RemoteRankError", "embedded_error_estimate", "local_error_regularizer", "nn",
]

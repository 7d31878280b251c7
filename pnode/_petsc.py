"""The one place that imports petsc4py.

``petsc4py.init(sys.argv)`` must run before the first ``from petsc4py import PETSc`` or command-line
options (``-ts_type``, ``-log_view``, ...) are ignored, so every pnode module imports PETSc from here.
"""

from __future__ import annotations

import os
import sys

# PETSc's BLAS (OpenBLAS here) would start its own thread pool next to PyTorch's and the two fight for
# the cores: measured 1.45x slower training steps on 2 cores.  PETSc parallelises with MPI ranks, not
# BLAS threads, so default to one; an explicit setting by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import petsc4py  # noqa: E402

if not getattr(petsc4py, "_pnode_initialised", False):
    try:
        petsc4py.init(sys.argv)
    except Exception:  # PETSc already initialised by the user: their arguments were read then
        pass
    petsc4py._pnode_initialised = True

from petsc4py import PETSc  # noqa: E402

# sys.argv also holds the script's own arguments (argparse, pytest): don't list them as unused PETSc
# options at exit unless the user asks for it with -options_left.
if not PETSc.Options().hasName("options_left"):
    PETSc.Options().setValue("options_left", "0")

import numpy as np  # noqa: E402

from .errors import PetscConfigurationError  # noqa: E402


def check_scalar_type() -> None:
    """pnode needs real double-precision PETSc scalars (the default PETSc build)."""
    scalar = np.dtype(PETSc.ScalarType)
    if scalar != np.float64:
        raise PetscConfigurationError(
            f"this PETSc uses {scalar} scalars; pnode needs real double precision. Rebuild PETSc without "
            "--with-scalar-type=complex / --with-precision=single, or point PETSC_DIR/PETSC_ARCH at such a build.")


__all__ = ["PETSc", "check_scalar_type"]

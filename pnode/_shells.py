"""The parameter-Jacobian shell shared by every callback form.

PETSc's adjoint only applies ``Jp^T`` (``multTranspose``) of the parameter Jacobian, so the shell holds
no matrix: its transpose product is a parameter VJP supplied by the owning problem.  Parameters are
replicated: every rank owns a full copy of the parameter columns, so the parameter adjoint stays
rank-local during the sweep and is reduced once after it.
"""

from __future__ import annotations

from collections.abc import Callable

from ._petsc import PETSc
from .distributed import RankGroup


class ParamJacobian:
    """Python context of the shell Mat ``Jp``; ``transpose_product(lam, out)`` fills ``out = Jp^T lam``."""

    def __init__(self, transpose_product: Callable, n_local: int, n_global: int, n_params: int,
                 group: RankGroup, probes: int = 0):
        self._transpose_product = transpose_product
        # each rank's columns: the parameters, then the probe entries of deferred VJPs (pnode._batching)
        columns = n_params + probes
        self.mat = PETSc.Mat().createPython(((n_local, n_global), (columns, columns * group.size)), self,
                                            comm=group.comm)
        self.mat.setUp()

    def multTranspose(self, mat, x, y):  # noqa: N802 - PETSc's name
        self._transpose_product(x, y)

    def mult(self, mat, x, y):
        raise NotImplementedError("pnode's parameter Jacobian shell only supports transpose products")

    def free(self) -> None:
        # not named destroy: petsc4py calls a Python Mat context's destroy(mat) from MatDestroy
        self.mat.destroy()
        self._transpose_product = None    # drops the owner: no reference cycle through PETSc's context

"""The seams between the driver and its parts, written down.

* :class:`Problem`: what a callback object (``_rhs.RHSProblem``, ``_implicit.ImplicitProblem``) gives the
  driver: the Jacobian shells whose layouts size the solution and gradient Vecs, PETSc option defaults,
  and installing its callbacks on a TS.
* :class:`SegmentDriver`: what a checkpoint schedule runner (``_checkpointing.ScheduleRunner``) may ask of
  the driver: replay steps of a recorded step sequence, run the adjoint back over steps, add an output
  time's cotangent to the adjoint state, and count statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ._petsc import PETSc
from .stats import SolveStats


class Problem(Protocol):
    J: PETSc.Mat                 # state Jacobian (shell); its layout is the state's
    Jp: PETSc.Mat | None         # parameter Jacobian (shell), None without parameters
    option_defaults: Mapping[str, str]

    def install(self, ts: PETSc.TS) -> None:
        """Give ``ts`` this problem's callbacks and Jacobians (and its KSP/PC defaults)."""

    def restart(self) -> None:
        """The TS restarts (a solve's or a replay's start, a jump): forget what carries over between steps
        (implicit methods: the Newton predictor's last stage slope)."""

    def begin_step(self, step: int, tau: float, state: np.ndarray) -> None:
        """Forward step ``step`` starts at ``(tau, state)`` (implicit methods: chord Newton evaluates the
        step's Jacobian afresh; recorded steps note their stage states)."""

    def exact_jacobians(self, exact: bool) -> None:
        """``True`` while the adjoint runs: every stage's Jacobian is evaluated exactly."""

    def take_iterations(self, ts: PETSc.TS) -> tuple[int, int] | None:
        """Newton and Krylov iterations of pnode's own Newton loop since the last call (PETSc cannot count
        them), or ``None`` when the TS counts them."""

    def record_stages(self, record: bool | None) -> None:
        """Record the coming forward steps' stage states for the adjoint (``True``, dropping older
        ones), stop (``False``), or drop them (``None``)."""

    def adjoint_piece(self, step: int, n: int) -> int:
        """Before TSAdjoint reverses steps ``step - n .. step - 1``: prepare what the adjoint's stages
        need in batches; returns how many of the steps the next ``adjointSolve`` should reverse."""

    def settle_adjoint(self, mu: PETSc.Vec, force: bool = True) -> None:
        """Add the deferred parameter VJPs into the parameter gradient ``mu`` (without ``force``: only
        when the deferred ones fill half the room for them)."""

    def end_adjoint(self) -> None:
        """The backward sweep is over (or failed): drop what it prepared and deferred."""

    def destroy(self) -> None:
        """Free every PETSc object the problem created."""


class SegmentDriver(Protocol):
    stats: SolveStats

    def replay(self, state: np.ndarray, plan: np.ndarray, n0: int, n1: int, keep_trajectory: bool,
               capture: bool = False) -> np.ndarray:
        """Steps ``n0..n1`` of ``plan`` from ``state``; returns a copy of the state at step ``n1``.  With
        ``keep_trajectory`` PETSc keeps the steps' stages for :meth:`adjoint_steps`."""

    def adjoint_steps(self, n: int) -> None:
        """TSAdjoint ``n`` steps back from where the kept trajectory's adjoint stands."""

    def add_to_cost_gradient(self, values: np.ndarray) -> None:
        """lambda += values (an output time's cotangent)."""

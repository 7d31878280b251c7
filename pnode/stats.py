"""Statistics of one solve (forward and backward), reported after every call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class SolveStats:
    """Counters and timings of the latest forward solve and, once run, its backward pass.

    Every :class:`~pnode.ODESolver` holds one as ``solver.stats``, refreshed by each call;
    :func:`pnode.last_stats` returns the one of the latest :func:`~pnode.odeint` call.

    Attributes
    ----------
    method : str
        The method that ran, in pnode's naming (command-line options may override the Python choice).
    ts_type : str
        PETSc's TS type that ran.
    steps : int
        Accepted time steps of the forward solve.
    rejected_steps : int
        Rejected time steps of the forward solve.
    rhs_evals : int
        Evaluations of the vector field (forward, plus re-solves and ``dL/dt`` evaluations).
    vjp_evals : int
        Vector-Jacobian products, state and parameter ones of a stage counted once (one per stage per
        step; the implicit adjoint's batched pass counts one per stage point).
    vjp_fallbacks : int
        Parameter VJPs that could not reuse the fused pass (should stay 0).
    jvp_evals : int
        Jacobian-vector products (implicit methods, matrix-free Newton-Krylov).
    jacobian_assemblies : int
        Jacobian evaluations (dense or per-sample blocks; each Newton iteration of the assembled
        strategies, and each stage of the adjoint, evaluated ahead in vectorized passes for small
        states).
    jacobian_reuses : int
        Newton iterations of forward steps that reused the step's Jacobian instead (chord Newton,
        ``options['newton'] = 'chord'``).
    newton_iterations : int
        Nonlinear iterations of the forward solve (with pnode's chord loop, the ARKIMEX/DIRK start-slope
        solves included).
    krylov_iterations : int
        Linear iterations of the forward solve.
    nonlinear_solve_failures : int
        Newton solves that failed (the step was then retried with a smaller step).
    forward_time : float
        Wall-clock seconds of the forward solve.
    backward_time : float
        Wall-clock seconds of the backward pass.
    communication_time : float
        Seconds of those spent in pnode's own MPI collectives (0 on one rank).
    checkpoints_ram : int
        States the checkpointing schedule wrote to memory (``options["checkpoints"]``).
    checkpoints_disk : int
        States the checkpointing schedule wrote to disk.
    recomputed_steps : int
        Forward steps re-run to serve the adjoint (checkpointing, or a replayed trajectory).
    peak_stored_states : int
        Most solution states held at once for the adjoint (checkpoints plus the steps in PETSc's
        trajectory; without checkpointing, every step).

    Examples
    --------
    >>> import torch, pnode
    >>> solver = pnode.ODESolver(lambda t, y: -y, method="rk4", options={"step_size": 0.1})
    >>> with torch.no_grad():
    ...     _ = solver(torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    >>> solver.stats.steps, solver.stats.rhs_evals
    (10, 40)
    >>> solver.stats.as_dict()["method"]
    'rk4'
    """

    method: str = ""
    ts_type: str = ""
    steps: int = 0
    rejected_steps: int = 0
    rhs_evals: int = 0
    vjp_evals: int = 0
    vjp_fallbacks: int = 0
    jvp_evals: int = 0
    jacobian_assemblies: int = 0
    jacobian_reuses: int = 0
    newton_iterations: int = 0
    krylov_iterations: int = 0
    nonlinear_solve_failures: int = 0
    forward_time: float = 0.0
    backward_time: float = 0.0
    communication_time: float = 0.0
    checkpoints_ram: int = 0
    checkpoints_disk: int = 0
    recomputed_steps: int = 0
    peak_stored_states: int = 0

    def reset_forward(self, method: str, ts_type: str) -> None:
        """Zero every counter before a new forward solve of ``method`` (PETSc type ``ts_type``)."""
        for f in fields(self):
            setattr(self, f.name, f.default)
        self.method, self.ts_type = method, ts_type

    def as_dict(self) -> dict:
        """The statistics as a plain ``dict`` (field name -> value), e.g. for logging.

        Returns
        -------
        dict
            One entry per attribute.
        """
        return asdict(self)

    def __str__(self) -> str:
        implicit = (f", {self.newton_iterations} Newton / {self.krylov_iterations} Krylov its, "
                    f"{self.jacobian_assemblies} Jacobians ({self.jacobian_reuses} reused), {self.jvp_evals} JVPs"
                    if self.newton_iterations else "")
        return (f"{self.method} ({self.ts_type}): {self.steps} steps ({self.rejected_steps} rejected), "
                f"{self.rhs_evals} f evals, {self.vjp_evals} VJPs{implicit}, forward {self.forward_time:.3g}s, "
                f"backward {self.backward_time:.3g}s")

"""Statistics of one solve (forward and backward), reported after every call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class SolveStats:
    """Counters and timings of the latest forward solve and, once run, its backward pass.

    steps / rejected_steps: accepted and rejected time steps of the forward solve.
    rhs_evals: evaluations of the vector field (forward, plus re-solves and dL/dt evaluations).
    vjp_evals: autograd passes giving the state and parameter VJPs together (one per stage per step).
    vjp_fallbacks: parameter VJPs that could not reuse the fused pass (should stay 0; see problem.py).
    jvp_evals: Jacobian-vector products (implicit methods, matrix-free Newton-Krylov).
    jacobian_assemblies: Jacobian evaluations (dense or per-sample blocks; each Newton iteration of the
        assembled strategies, and each stage of the adjoint).
    newton_iterations / krylov_iterations: nonlinear and linear iterations of the forward solve.
    nonlinear_solve_failures: Newton solves that failed (the step was then retried with a smaller step).
    forward_time / backward_time: wall-clock seconds.
    communication_time: seconds of those spent in pnode's own MPI collectives (0 on one rank).
    checkpoints_ram / checkpoints_disk: states the checkpointing schedule wrote (options["checkpoints"]).
    recomputed_steps: forward steps re-run to serve the adjoint (checkpointing, or a replayed trajectory).
    peak_stored_states: most solution states held at once for the adjoint (checkpoints plus the steps in
        PETSc's trajectory; without checkpointing, every step).
    method / ts_type: what PETSc actually ran (command-line options may override the Python choice).
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
        for f in fields(self):
            setattr(self, f.name, f.default)
        self.method, self.ts_type = method, ts_type

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        implicit = (f", {self.newton_iterations} Newton / {self.krylov_iterations} Krylov its, "
                    f"{self.jacobian_assemblies} Jacobians, {self.jvp_evals} JVPs"
                    if self.newton_iterations else "")
        return (f"{self.method} ({self.ts_type}): {self.steps} steps ({self.rejected_steps} rejected), "
                f"{self.rhs_evals} f evals, {self.vjp_evals} VJPs{implicit}, forward {self.forward_time:.3g}s, "
                f"backward {self.backward_time:.3g}s")

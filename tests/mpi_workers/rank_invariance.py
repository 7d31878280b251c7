"""Worker for tests/test_distributed.py: solve one global batch sharded over however many ranks run this
script, and write (on rank 0) the step counts, gathered outputs and gradients to ``sys.argv[1]`` (.npz).

The global batch, the model and the loss weights are built from fixed seeds on every rank, so the
1-rank run is the oracle for the P-rank runs.  Run: mpiexec -n P python rank_invariance.py out.npz
"""

import sys

import numpy as np
import torch
from mpi4py import MPI

import pnode
from pnode.distributed import allreduce_gradients, shard

torch.set_default_dtype(torch.float64)
BATCH, DIM, WIDTH = 7, 3, 16          # 7 samples: uneven shards on 2 (4+3) and 3 (3+2+2) ranks
CASES = {
    "rk4_fixed": dict(method="rk4", options={"step_size": 0.05}),
    "dopri5_adaptive": dict(method="dopri5", rtol=1e-6, atol=1e-8),
    "bosh3_adaptive_backward_time": dict(method="bosh3", rtol=1e-5, atol=1e-7, reverse=True),
    # pnode-owned checkpointing: 3 states in RAM, the rest recomputed segment by segment
    "rk4_fixed_checkpointed": dict(method="rk4", options={"step_size": 0.05, "checkpoints": 3}),
    "dopri5_adaptive_checkpointed": dict(method="dopri5", rtol=1e-6, atol=1e-8, options={"checkpoints": 3}),
    # implicit methods, on a shorter span (each Newton and Krylov iteration is a collective, slow on
    # oversubscribed ranks): batched Jacobians (per-sample blocks, exact batched LU: rank-local linear
    # solves) and matrix-free Newton-Krylov (GMRES: global dot products in every Krylov iteration)
    "beuler_fixed_batched": dict(method="beuler", span=0.6, options={"step_size": 0.1, "jacobian": "batched"}),
    "cn_fixed_matrix_free": dict(method="cn", span=0.6, options={"step_size": 0.1, "jacobian": "matrix_free"}),
    "arkimex4_adaptive_batched": dict(method="arkimex4", span=0.6, rtol=1e-5, atol=1e-7,
                                      options={"jacobian": "batched"}),
    "arkimex3_adaptive_matrix_free": dict(method="arkimex3", span=0.6, rtol=1e-4, atol=1e-6,
                                          options={"jacobian": "matrix_free"}),
    "dirk_adaptive_batched_backward_time": dict(method="dirk", span=0.6, rtol=1e-4, atol=1e-6, reverse=True,
                                                options={"jacobian": "batched"}),
    # IMEX: a stiff linear term (trainable rates) implicit, the network explicit
    "imex_arkimex3_adaptive": dict(method="arkimex3", span=0.6, rtol=1e-4, atol=1e-6, imex=True,
                                   options={"jacobian": "batched"}),
    # checkpoint replays restart ARKIMEX mid-solve (its start-slope solve); 1 and 2 ranks only (time)
    "arkimex4_adaptive_batched_checkpointed": dict(method="arkimex4", span=0.6, rtol=1e-5, atol=1e-7, max_ranks=2,
                                                   options={"jacobian": "batched", "checkpoints": 2}),
}


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(DIM + 1, WIDTH, generator=g) * 0.5)
        self.b1 = torch.nn.Parameter(torch.randn(WIDTH, generator=g) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(WIDTH, DIM, generator=g) * 0.5)

    def forward(self, t, y):
        ty = torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)
        return torch.tanh(ty @ self.w1 + self.b1) @ self.w2


class Damping(torch.nn.Module):
    """The stiff implicit term of the IMEX cases: -rates * y (the largest rate sets the explicit stability limit)."""

    def __init__(self):
        super().__init__()
        self.rates = torch.nn.Parameter(torch.tensor([0.5, 5.0, 20.0]))

    def forward(self, t, y):
        return -self.rates * y


def run_case(comm, name, method, rtol=1e-7, atol=1e-9, options=None, reverse=False, imex=False,
             span=1.5, max_ranks=3):
    g = torch.Generator().manual_seed(1)
    y0_global = torch.randn(BATCH, DIM, generator=g)
    weights_global = torch.rand(5, BATCH, DIM, generator=g) + 0.5    # positive: no cancelling sums
    t = torch.linspace(0.0, span, 5)
    if reverse:
        t = t.flip(0)
    t.requires_grad_()
    y0 = shard(y0_global, comm).clone().requires_grad_()
    weights = shard(weights_global, comm, dim=1)
    field = pnode.IMEXField(implicit=Damping(), explicit=Field()) if imex else Field()
    solver = pnode.ODESolver(field, method=method, rtol=rtol, atol=atol, options=options, comm=comm)
    ys = solver(y0, t)
    head = torch.tensor(1.5, requires_grad=True)              # a parameter used outside the solve
    loss = head * (weights * ys).sum() + (ys ** 2).sum() * 0.1   # this rank's part of the global loss
    loss.backward()
    allreduce_gradients([head], comm)                          # pnode reduces only the field's own
    stats = solver.stats
    out = {
        "steps": np.array([stats.steps, stats.rejected_steps]),
        "iterations": np.array([stats.newton_iterations, stats.krylov_iterations]),
        "step_times": solver.step_times.numpy(),
        "loss": np.array(comm.allreduce(loss.item())),
        "ys": np.concatenate(comm.allgather(ys.detach().numpy()), axis=1),
        "grad_y0": np.concatenate(comm.allgather(y0.grad.numpy()), axis=0),
        "grad_t": t.grad.numpy(),
        "grad_params": np.concatenate([p.grad.reshape(-1).numpy() for p in field.parameters()]),
        "grad_outside_param": head.grad.reshape(1).numpy(),
    }
    # every rank must hold the same parameter gradient (the sum over all ranks' losses)
    spread = comm.allreduce(float(np.abs(out["grad_params"] - comm.bcast(out["grad_params"])).max()), op=MPI.MAX)
    out["param_grad_spread_across_ranks"] = np.array(spread)
    solver.close()
    return {f"{name}/{k}": v for k, v in out.items()}


def main(path):
    comm = MPI.COMM_WORLD
    results = {"size": np.array(comm.Get_size())}
    for name, case in CASES.items():
        if comm.Get_size() > case.get("max_ranks", 3):
            continue
        results.update(run_case(comm, name, **case))
    if comm.Get_rank() == 0:
        np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1])

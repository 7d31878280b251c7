"""The spiral neural ODE (examples/spiral.py) trained data-parallel under MPI with ``pnode-train``.

Every rank draws the same global batch of sub-trajectories (one seeded generator), keeps its shard, and
solves it with a distributed pnode solve; the loss is the global mean L1 error, so pnode's gradient is
the same on every rank and the replicas of the model stay identical.

    mpiexec -n 2 pnode-train examples/train_spiral.py --iterations 300 --checkpoint outputs/spiral.pt \\
        --resume -- --out outputs
    (or: mpiexec -n 2 python -m pnode.cli examples/train_spiral.py ...)
"""

from __future__ import annotations

import argparse
import os

import torch
from spiral import ODEFunc, get_batch, make_data, plot

import pnode
from pnode.distributed import shard
from pnode.training import TrainingTask


def setup(argv, comm) -> TrainingTask:
    parser = argparse.ArgumentParser(prog="train_spiral.py")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (sharded over the ranks)")
    parser.add_argument("--batch-time", type=int, default=10)
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--report-every", type=int, default=100)
    args, _petsc_args = parser.parse_known_args(argv)

    torch.manual_seed(args.seed)                      # the same initial model on every rank
    generator = torch.Generator().manual_seed(args.seed)
    t, y0, y = make_data()
    func = ODEFunc()
    optimizer = torch.optim.Adam(func.parameters(), lr=args.lr)
    solver = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol, comm=comm)

    def loss(iteration: int) -> torch.Tensor:
        batch_y0, batch_t, batch_y = get_batch(t, y, args.batch_time, args.batch_size, generator)
        pred = solver(shard(batch_y0, comm), batch_t)
        # this rank's share of the global mean: pnode sums the ranks' gradients
        return (pred - shard(batch_y, comm, dim=1)).abs().sum() / batch_y.numel()

    def report(iteration: int, losses: list[float]) -> None:
        with torch.no_grad():
            full = pnode.odeint(func, y0, t, method=args.method, rtol=args.rtol, atol=args.atol)
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "spiral_mpi.png")
        plot(path, t.numpy(), y.numpy(), full.numpy(), losses, iteration)
        print(f"           whole-trajectory L1 error {(full - y).abs().mean().item():.4e}; plot: {path}",
              flush=True)

    return TrainingTask(model=func, optimizer=optimizer, loss=loss, generator=generator, solver=solver,
                        report=report, report_every=args.report_every)

"""A small training script for pnode-train (tests/test_training.py): a 2-D neural ODE fitted to a
linear ODE's trajectories, data drawn from a seeded generator and sharded over the ranks."""

import argparse
import time

import torch

import pnode
from pnode.distributed import shard
from pnode.training import TrainingTask

A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)


def setup(argv, comm) -> TrainingTask:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per iteration (to be killed mid-way)")
    parser.add_argument("--fail-at", type=int, default=0, help="raise on rank 1 at this iteration (outside pnode)")
    parser.add_argument("--lbfgs", action="store_true", help="L-BFGS with a line search instead of Adam")
    args = parser.parse_args(argv)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    field = lambda t, y: model(y)  # noqa: E731
    optimizer = (torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=3, line_search_fn="strong_wolfe")
                 if args.lbfgs else torch.optim.Adam(model.parameters(), lr=0.02))
    evaluations = [0]
    solver = pnode.ODESolver(field, method="rk4", options={"step_size": 0.1},
                             adjoint_params=tuple(model.parameters()), comm=comm)
    generator = torch.Generator().manual_seed(4)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)

    def loss(iteration: int) -> torch.Tensor:
        evaluations[0] += 1
        if args.lbfgs:      # a line search re-evaluates the same batch: draw it once per iteration
            generator.manual_seed(4 + iteration)
        if args.fail_at == iteration and comm.Get_rank() == 1:
            raise RuntimeError("data loading failed on rank 1")
        y0 = torch.randn(9, 2, generator=generator, dtype=torch.float64)
        target = torch.stack([y0 @ torch.linalg.matrix_exp(A * float(s)).T for s in t])
        pred = solver(shard(y0, comm), t)
        time.sleep(args.sleep)
        return (pred - shard(target, comm, dim=1)).pow(2).sum() / target.numel()

    return TrainingTask(model=model, optimizer=optimizer, loss=loss, generator=generator, solver=solver,
                        progress=lambda: f"evaluations {evaluations[0]}")

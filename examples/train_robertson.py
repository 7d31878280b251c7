"""Stiff Robertson kinetics (examples/robertson.py) trained data-parallel under MPI with ``pnode-train``.

The data are trajectories from a batch of initial compositions (scipy Radau, log-spaced times up to
t=100); the batch is sharded over the ranks and every rank integrates its shard with an L-stable ARKIMEX
4(3) and a block-diagonal Jacobian (one 3x3 block per sample, factorised by a batched LU), so the Newton
solves stay rank-local and their iteration counts do not depend on the shard size.  The loss is the global
mean squared error, so pnode's parameter gradient is the same on every rank.  Rank 0 prints progress, and
writes a plot with what the best explicit method (dopri5) costs on the same solve.

    mpiexec -n 2 pnode-train examples/train_robertson.py --iterations 30 --log-every 5 -- --out outputs
    (or: mpiexec -n 2 python -m pnode.cli examples/train_robertson.py ...)
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from robertson import SCALE, TRUE_RATES, Kinetics, explicit_attempt, robertson_rhs

import pnode
from pnode.distributed import shard
from pnode.training import TrainingTask


def make_batch(t: np.ndarray, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial compositions y1 in [0.5, 1], y2 = 0, y3 = 1 - y1 and their Radau trajectories (t, B, 3)."""
    from scipy.integrate import solve_ivp

    k = torch.tensor(TRUE_RATES, dtype=torch.float64)
    y1 = np.linspace(1.0, 0.5, n_samples)
    y0 = np.stack([y1, np.zeros_like(y1), 1.0 - y1], axis=1)
    paths = []
    for start in y0:
        sol = solve_ivp(lambda s, y: robertson_rhs(torch.from_numpy(y), *k).numpy(), (t[0], t[-1]), start,
                        method="Radau", t_eval=t, rtol=1e-10, atol=1e-14)
        paths.append(sol.y.T)
    return torch.from_numpy(y0), torch.from_numpy(np.stack(paths, axis=1))


def plot(path: str, t: np.ndarray, data: np.ndarray, pred: np.ndarray, losses: list[float], note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    samples = sorted({0, data.shape[1] // 2, data.shape[1] - 1})
    for i, (name, scale) in enumerate([("y1", 1.0), ("y2 x 1e4", 1e4), ("y3", 1.0)]):
        for j, b in enumerate(samples):
            axes[0].semilogx(t[1:], data[1:, b, i] * scale, "o", ms=2.5, color=f"C{i}", alpha=0.4 + 0.3 * j,
                             label=f"{name} data" if j == 0 else None)
            axes[0].semilogx(t[1:], pred[1:, b, i] * scale, "-", color=f"C{i}", alpha=0.4 + 0.3 * j,
                             label=f"{name} model" if j == 0 else None)
    axes[0].set(title=f"Robertson kinetics, samples {samples}: data (Radau) vs neural ODE", xlabel="t")
    axes[0].legend(fontsize=7)
    axes[1].semilogy(np.arange(1, len(losses) + 1), losses)
    axes[1].set(title="training loss (global batch)", xlabel="iteration")
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def setup(argv, comm) -> TrainingTask:
    parser = argparse.ArgumentParser(prog="train_robertson.py")
    parser.add_argument("--batch-size", type=int, default=16, help="initial compositions (sharded over ranks)")
    parser.add_argument("--method", default="arkimex4")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-10)
    parser.add_argument("--t-end", type=float, default=100.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--explicit-max-steps", type=int, default=3000)
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--report-every", type=int, default=1000)
    args, _petsc_args = parser.parse_known_args(argv)

    torch.manual_seed(0)                              # the same initial model on every rank
    t_np = np.concatenate([[0.0], np.logspace(-5, np.log10(args.t_end), 24)])
    t = torch.from_numpy(t_np)
    y0, data = make_batch(t_np, args.batch_size)     # every rank builds the same data (cheap)
    model = Kinetics()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    solver = pnode.ODESolver(model, method=args.method, rtol=args.rtol, atol=args.atol,
                             options={"jacobian": "batched"}, comm=comm)
    local_y0, local_data = shard(y0, comm), shard(data, comm, dim=1)
    explicit_cost: list[str] = []

    def loss(iteration: int) -> torch.Tensor:
        pred = solver(local_y0, t)
        # this rank's share of the global mean: pnode sums the ranks' gradients
        return ((pred - local_data) * SCALE).pow(2).sum() / data.numel()

    def report(iteration: int, losses: list[float]) -> None:
        with torch.no_grad():
            full = pnode.ODESolver(model, method=args.method, rtol=args.rtol, atol=args.atol,
                                   options={"jacobian": "batched"})
            pred = full(y0, t)
        if not explicit_cost:   # once: the explicit method's cost does not change with training
            explicit_cost.append(explicit_attempt(model, y0[0], t, args.explicit_max_steps, args.rtol))
        rates = torch.exp(model.log_rates.detach()).tolist()
        note = (f"iteration {iteration}: rates {rates[0]:.4g}, {rates[1]:.4g}, {rates[2]:.4g} (true 0.04, 3e7, 1e4); "
                f"\nrtol {args.rtol:g}: {args.method} takes {full.stats.steps} steps for the whole batch; "
                f"explicit {explicit_cost[0]} for one sample")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "robertson_mpi.png")
        plot(path, t_np, data.numpy(), pred.numpy(), losses, note)
        print("           " + note.replace("\n", "\n           ") + f"\n           plot: {path}", flush=True)

    return TrainingTask(model=model, optimizer=optimizer, loss=loss, solver=solver, report=report,
                        report_every=args.report_every)

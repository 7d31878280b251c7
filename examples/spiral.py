"""Fit the classic spiral neural ODE (Chen et al. 2018's demo) with pnode.

Data: the cubic spiral dy/dt = (y**3) A, A = [[-0.1, 2], [-2, -0.1]], y(0) = (2, 0), sampled at 1000
times on [0, 25] by a tight pnode dopri5 solve.  Model: dy/dt = MLP(y**3).  Each iteration fits a batch
of short random sub-trajectories; every few iterations the whole trajectory is predicted and the
fitted curve is plotted against the data.

    python examples/spiral.py --iters 600 --out outputs
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import pnode

TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)


class Lambda(nn.Module):
    def forward(self, t, y):
        return (y**3) @ TRUE_A


class ODEFunc(nn.Module):
    def __init__(self, width: int = 50):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 2)).double()
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.1)
                nn.init.zeros_(m.bias)

    def forward(self, t, y):
        return self.net(y**3)


def make_data(n_times: int = 1000, t_end: float = 25.0):
    t = torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        y = pnode.odeint(Lambda(), y0, t, method="dopri5", rtol=1e-10, atol=1e-12)
    return t, y0, y


def get_batch(t, y, batch_time: int, batch_size: int, generator: torch.Generator):
    starts = torch.randint(0, len(t) - batch_time, (batch_size,), generator=generator)
    batch_y0 = y[starts]                                        # (B, 1, 2)
    batch_t = t[:batch_time] - t[0]
    batch_y = torch.stack([y[starts + i] for i in range(batch_time)], dim=0)   # (T, B, 1, 2)
    return batch_y0, batch_t, batch_y


def plot(path, t, y, pred, losses, iteration):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].plot(t, y[:, 0, 0], "g-", label="data x")
    axes[0].plot(t, y[:, 0, 1], "b-", label="data y")
    axes[0].plot(t, pred[:, 0, 0], "g--", label="model x")
    axes[0].plot(t, pred[:, 0, 1], "b--", label="model y")
    axes[0].set(title="trajectories", xlabel="t")
    axes[0].legend(fontsize=8)
    axes[1].plot(y[:, 0, 0], y[:, 0, 1], "g-", label="data")
    axes[1].plot(pred[:, 0, 0], pred[:, 0, 1], "b--", label="model")
    axes[1].set(title="phase portrait", xlabel="x", ylabel="y", xlim=(-2.2, 2.2), ylim=(-2.2, 2.2))
    axes[1].legend(fontsize=8)
    axes[2].semilogy(losses)
    axes[2].set(title="training loss (batch L1)", xlabel="iteration")
    fig.suptitle(f"pnode spiral neural ODE, iteration {iteration}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--batch-time", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--test-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args, _petsc_args = parser.parse_known_args(argv)   # the rest are PETSc options (-ts_monitor, ...)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t, y0, y = make_data()
    func = ODEFunc()
    optimizer = torch.optim.Adam(func.parameters(), lr=args.lr)
    train = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
    evaluate = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
    losses = []
    start = time.perf_counter()
    print(f"training a {sum(p.numel() for p in func.parameters())}-parameter neural ODE with "
          f"{args.method} (rtol {args.rtol:g}) for {args.iters} iterations")
    for it in range(1, args.iters + 1):
        optimizer.zero_grad()
        batch_y0, batch_t, batch_y = get_batch(t, y, args.batch_time, args.batch_size, generator)
        pred = train(batch_y0, batch_t)
        loss = (pred - batch_y).abs().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        s = train.stats
        elapsed = time.perf_counter() - start
        eta = elapsed / it * (args.iters - it)
        print(f"iter {it:4d}  loss {loss.item():.4e}  steps {s.steps:3d} (+{s.rejected_steps} rejected)  "
              f"forward {s.forward_time * 1e3:6.1f} ms  backward {s.backward_time * 1e3:6.1f} ms  "
              f"elapsed {elapsed:5.1f}s  eta {eta:5.1f}s", flush=True)
        if it % args.test_every == 0 or it == args.iters:
            with torch.no_grad():
                full = evaluate(y0, t)
                test_loss = (full - y).abs().mean().item()
            print(f"           whole-trajectory L1 error {test_loss:.4e} ({evaluate.stats.steps} steps)")
            path = os.path.join(args.out, "spiral.png")
            plot(path, t.numpy(), y.numpy(), full.numpy(), losses, it)
    print(f"done in {time.perf_counter() - start:.1f}s; plot written to {os.path.join(args.out, 'spiral.png')}")
    return losses


if __name__ == "__main__":
    main()

"""Train a neural ODE on Robertson's stiff chemical kinetics with an implicit pnode method.

Robertson (1966): y1' = -k1 y1 + k3 y2 y3,  y2' = k1 y1 - k3 y2 y3 - k2 y2^2,  y3' = k2 y2^2 with
k1 = 0.04, k2 = 3e7, k3 = 1e4: time scales from 1e-8 to 1e5, the classic stiff test.  Data: scipy's Radau
(rtol 1e-10) at log-spaced times.  Model: mass-action kinetics with learnable log-rate constants (started
a factor of ~3 off) plus a small MLP correction, integrated with an L-stable ARKIMEX 4(3) (``arkimex4``)
and trained through PETSc's discrete adjoint.  The same forward solve with the best explicit method
(dopri5) is attempted for comparison: its stability limit, not accuracy, sets its step.

    python examples/robertson.py --iters 25 --out outputs
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

import pnode

TRUE_RATES = (0.04, 3e7, 1e4)
SCALE = torch.tensor([1.0, 1e4, 1.0], dtype=torch.float64)   # y2 is ~1e-5: weigh species alike


def robertson_rhs(y: torch.Tensor, k1, k2, k3) -> torch.Tensor:
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2, k2 * y2 * y2], dim=-1)


def make_data(t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.integrate import solve_ivp

    y0 = np.array([1.0, 0.0, 0.0])
    k = torch.tensor(TRUE_RATES, dtype=torch.float64)
    sol = solve_ivp(lambda s, y: robertson_rhs(torch.from_numpy(y), *k).numpy(), (t[0], t[-1]), y0,
                    method="Radau", t_eval=t, rtol=1e-10, atol=1e-14)
    return torch.from_numpy(y0), torch.from_numpy(sol.y.T.copy())


class Kinetics(nn.Module):
    """Mass action with learnable log-rates, plus an MLP correction (in scaled units, started at zero)."""

    def __init__(self, width: int = 16):
        super().__init__()
        start = torch.log(torch.tensor(TRUE_RATES, dtype=torch.float64)) + torch.tensor([1.0, -1.2, 0.9])
        self.log_rates = nn.Parameter(start)
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 3)).double()
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, t, y):
        k1, k2, k3 = torch.exp(self.log_rates).unbind()
        return robertson_rhs(y, k1, k2, k3) + 1e-3 * self.net(y * SCALE) / SCALE


def explicit_attempt(model: nn.Module, y0: torch.Tensor, t: torch.Tensor, max_steps: int, rtol: float) -> str:
    start = time.perf_counter()
    solver = pnode.ODESolver(model, method="dopri5", rtol=rtol, atol=1e-10, options={"max_num_steps": max_steps})
    try:
        with torch.no_grad():
            solver(y0, t)
        return f"dopri5: {solver.stats.steps} steps, {time.perf_counter() - start:.2f}s"
    except pnode.MaxStepsError as error:
        return (f"dopri5: gave up after {max_steps} steps at t={error.time:.3g} of {float(t[-1]):g} "
                f"({time.perf_counter() - start:.2f}s)")


def plot(path: str, t: np.ndarray, data: np.ndarray, pred: np.ndarray, losses: list[float], note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, scale) in enumerate([("y1", 1.0), ("y2 x 1e4", 1e4), ("y3", 1.0)]):
        axes[0].semilogx(t[1:], data[1:, i] * scale, "o", ms=3, color=f"C{i}", label=f"{name} data (Radau)")
        axes[0].semilogx(t[1:], pred[1:, i] * scale, "-", color=f"C{i}", label=f"{name} model")
    axes[0].set(title="Robertson kinetics: data vs trained neural ODE", xlabel="t")
    axes[0].legend(fontsize=7)
    axes[1].semilogy(losses)
    axes[1].set(title="training loss", xlabel="iteration")
    fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--method", default="arkimex4")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--t-end", type=float, default=100.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--explicit-max-steps", type=int, default=5000)
    parser.add_argument("--out", default="outputs")
    args, _petsc_args = parser.parse_known_args(argv)

    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    t_np = np.concatenate([[0.0], np.logspace(-5, np.log10(args.t_end), 24)])
    y0, data = make_data(t_np)
    t = torch.from_numpy(t_np)
    model = Kinetics()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    solver = pnode.ODESolver(model, method=args.method, rtol=args.rtol, atol=1e-10)
    losses = []
    start = time.perf_counter()
    print(f"training on Robertson kinetics with {args.method} (rtol {args.rtol:g}), {len(t)} log-spaced times "
          f"up to t={args.t_end:g}")
    for it in range(1, args.iters + 1):
        optimizer.zero_grad()
        pred = solver(y0, t)
        loss = ((pred - data) * SCALE).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        s = solver.stats
        if it == 1 or it % 10 == 0 or it == args.iters:
            rates = torch.exp(model.log_rates.detach()).tolist()
            print(f"iter {it:3d}  loss {loss.item():.3e}  rates {rates[0]:.4g} {rates[1]:.4g} {rates[2]:.4g}  "
                  f"{s.steps} steps, {s.newton_iterations} Newton its, forward {s.forward_time:.2f}s "
                  f"backward {s.backward_time:.2f}s", flush=True)
    implicit_time = time.perf_counter() - start
    with torch.no_grad():
        pred = solver(y0, t)
    implicit = f"{args.method}: {solver.stats.steps} steps, {solver.stats.forward_time:.2f}s per forward solve"
    explicit = explicit_attempt(model, y0, t, args.explicit_max_steps, args.rtol)
    note = f"same forward solve, rtol {args.rtol:g}: {implicit}; {explicit}"
    print(note)
    path = os.path.join(args.out, "robertson.png")
    plot(path, t_np, data.numpy(), pred.numpy(), losses, note)
    print(f"trained in {implicit_time:.1f}s; plot written to {path}")
    return losses


if __name__ == "__main__":
    main()

"""A latent ODE for irregularly sampled time series (Chen et al. 2018, section 5), trained with pnode.

Data (generated here): 2-D spirals x(t) = r(t) (cos(phi + d t), sin(phi + d t)), r(t) = r0 + g t, with a
random direction d = +-1, phase phi, start radius r0 and growth g per trajectory, on a grid of
--n-times (default 80) times in [0, 10].  Each trajectory is observed, with Gaussian noise (std 0.05), at
a random --observed-fraction (default 40%) of the grid times in the observation window [0, 5] only: the
observation times differ from one trajectory to the next.

Model (a VAE): a GRU encoder runs backwards in time over each trajectory's observations (the hidden state
is updated at observed times only, with the time gap as an input) and gives q(z0 | x) = N(mu, sigma^2);
the latent state z(t) follows dz/dt = f(z), an MLP in a ``pnode.nn.ODEBlock`` called with the grid
times (``block(z0, t)``: the latent trajectory; dopri5, PETSc's discrete adjoint) for the whole batch at
once; a small MLP decodes z(t) into x(t).  Loss: the negative ELBO with a Gaussian likelihood (std
0.05) on the observed points and the KL divergence to N(0, I).

Baseline: the same encoder and VAE loss, but the latent trajectory comes from a GRU rolled forward over
the time grid (input: the time step), not from an ODE; trained for the same number of iterations with
the same optimizer (Adam; --anneal < 1 divides the learning rate by 10 for the last part).  Evaluation
on held-out trajectories (posterior means, noiseless targets): interpolation MSE at the unobserved grid
times inside [0, 5], extrapolation MSE on (5, 10].

    python examples/latent_ode.py --out outputs     # 1000 iterations; 227 s at load average 5-6, 262 s at 9
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

import pnode

NOISE_STD = 0.05


@dataclass
class SpiralData:
    t: torch.Tensor          # (T,) grid times
    truth: torch.Tensor      # (N, T, 2) noiseless
    noisy: torch.Tensor      # (N, T, 2)
    mask: torch.Tensor       # (N, T) 1 where observed (inside the observation window only)
    n_observed_times: int    # grid points in the observation window [0, t_obs]


def make_spirals(n: int, *, n_times: int = 41, t_end: float = 10.0, t_obs: float = 5.0,
                 observed_fraction: float = 0.5, generator: torch.Generator) -> SpiralData:
    t = torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
    direction = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    phase = 2 * math.pi * torch.rand(n, generator=generator).double()
    r0 = 0.5 + 0.5 * torch.rand(n, generator=generator).double()
    growth = 0.05 + 0.1 * torch.rand(n, generator=generator).double()
    angle = phase[:, None] + direction[:, None] * t[None, :]
    radius = r0[:, None] + growth[:, None] * t[None, :]
    truth = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    noisy = truth + NOISE_STD * torch.randn(truth.shape, generator=generator, dtype=torch.float64)
    n_window = int((t <= t_obs + 1e-12).sum())
    mask = (torch.rand(n, n_times, generator=generator) < observed_fraction).double()
    mask[:, n_window:] = 0.0
    mask[:, 0] = torch.where(mask[:, :n_window].sum(1) == 0, 1.0, mask[:, 0])   # at least one observation
    return SpiralData(t, truth, noisy, mask, n_window)


class BackwardGRUEncoder(nn.Module):
    """q(z0 | observations): a GRU run from the last grid time of the window back to t[0], updating its
    hidden state only where the trajectory is observed (input: x, and the time gap since the last update)."""

    def __init__(self, latent: int, hidden: int):
        super().__init__()
        self.cell = nn.GRUCell(3, hidden)
        self.head = nn.Linear(hidden, 2 * latent)
        self.hidden = hidden

    def forward(self, t: torch.Tensor, x: torch.Tensor, mask: torch.Tensor):
        n, steps = x.shape[0], x.shape[1]
        h = x.new_zeros(n, self.hidden)
        last = t[steps - 1].expand(n).clone()
        for i in range(steps - 1, -1, -1):
            gap = (last - t[i]).unsqueeze(1)
            update = self.cell(torch.cat([x[:, i], gap], dim=1), h)
            m = mask[:, i:i + 1]
            h = m * update + (1 - m) * h
            last = torch.where(m[:, 0] > 0, t[i].expand(n), last)
        mean, log_var = self.head(h).chunk(2, dim=1)
        return mean, log_var


class LatentDynamics(nn.Module):
    """dz/dt = f(z): the vector field pnode integrates."""

    def __init__(self, latent: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, latent))

    def forward(self, t, z):
        return self.net(z)


def decoder(latent: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(latent, width), nn.Tanh(), nn.Linear(width, 2))


class LatentODE(nn.Module):
    """Encoder, latent ``pnode.nn.ODEBlock`` (dz/dt = f(z), the trajectory at the grid times), decoder."""

    def __init__(self, latent: int = 4, hidden: int = 25, width: int = 32, rtol: float = 1e-4,
                 atol: float = 1e-5, method: str = "dopri5"):
        super().__init__()
        self.encoder = BackwardGRUEncoder(latent, hidden)
        self.dynamics = LatentDynamics(latent, width)
        self.decode = decoder(latent, width)
        # two blocks on the same field (parameters shared): one for training solves, one for
        # predictions, so each keeps its own solver statistics
        self.latent_ode = pnode.nn.ODEBlock(self.dynamics, method=method, rtol=rtol, atol=atol)
        self.prediction_ode = pnode.nn.ODEBlock(self.dynamics, method=method, rtol=rtol, atol=atol)

    @property
    def solver(self) -> pnode.ODESolver:
        """The training block's solver (its ``stats`` and ``step_times`` describe the latest solve)."""
        return self.latent_ode.solver

    @property
    def predictor(self) -> pnode.ODESolver:
        return self.prediction_ode.solver

    def latent_path(self, z0: torch.Tensor, t: torch.Tensor, predict: bool = False) -> torch.Tensor:
        """z at every time of ``t`` (shape (N, T, latent)); the block's own output, (T, N, latent), is
        kept as ``last_solution`` (what pnode.local_error_regularizer takes with ``solver``)."""
        self.last_solution = (self.prediction_ode if predict else self.latent_ode)(z0, t)
        return self.last_solution.transpose(0, 1)


class LatentRNN(nn.Module):
    """The baseline: the same encoder; z(t) from a GRU rolled forward over the grid instead of an ODE."""

    def __init__(self, latent: int = 4, hidden: int = 25, width: int = 32):
        super().__init__()
        self.encoder = BackwardGRUEncoder(latent, hidden)
        self.lift = nn.Linear(latent, hidden)
        self.cell = nn.GRUCell(1, hidden)
        self.out = nn.Linear(hidden, latent)
        self.decode = decoder(latent, width)

    def latent_path(self, z0: torch.Tensor, t: torch.Tensor, predict: bool = False) -> torch.Tensor:
        h = torch.tanh(self.lift(z0))
        path = [z0]
        for i in range(1, len(t)):
            h = self.cell((t[i] - t[i - 1]).expand(z0.shape[0], 1), h)
            path.append(self.out(h))
        return torch.stack(path, dim=1)


def negative_elbo(model, data: SpiralData, idx: torch.Tensor, generator: torch.Generator):
    """Per-trajectory negative ELBO (observed points only), the sample z0, and the reconstruction MSE."""
    window = data.n_observed_times
    t = data.t[:window]
    x, mask = data.noisy[idx, :window], data.mask[idx, :window]
    mean, log_var = model.encoder(t, x, mask)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    z0 = mean + torch.exp(0.5 * log_var) * eps
    path = model.latent_path(z0, t)
    pred = model.decode(path)
    sq = ((pred - x) ** 2).sum(-1) * mask
    nll = (sq / (2 * NOISE_STD**2)).sum(1)
    kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1)
    mse = sq.sum() / (2 * mask.sum())
    return (nll + kl).mean() / window, mse, t


@torch.no_grad()
def evaluate(model, data: SpiralData):
    """Interpolation MSE at unobserved window times and extrapolation MSE beyond the window (truth)."""
    window = data.n_observed_times
    mean, _ = model.encoder(data.t[:window], data.noisy[:, :window], data.mask[:, :window])
    pred = model.decode(model.latent_path(mean, data.t, predict=True))
    err = ((pred - data.truth) ** 2).mean(-1)                       # (N, T)
    unobserved = (1 - data.mask[:, :window])
    interp = float((err[:, :window] * unobserved).sum() / unobserved.sum())
    extrap = float(err[:, window:].mean())
    return interp, extrap, pred


def train(model, data: SpiralData, *, iters: int, batch: int, lr: float, seed: int, label: str,
          log_every: int = 50, extra_loss=None, anneal: float = 0.75):
    """Adam on the negative ELBO, the learning rate divided by 10 after the ``anneal`` fraction of the
    iterations; ``extra_loss(model, t, it)`` (optional) is added to each iteration's loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for it in range(1, iters + 1):
        if it == int(anneal * iters) + 1:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        idx = torch.randperm(data.truth.shape[0], generator=generator)[:batch]
        optimizer.zero_grad()
        loss, mse, t = negative_elbo(model, data, idx, generator)
        total = loss if extra_loss is None else loss + extra_loss(model, t, it)
        total.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if it % log_every == 0 or it == iters:
            steps = f"  steps {model.solver.stats.steps}" if hasattr(model, "solver") else ""
            print(f"{label:>10} iter {it:4d}  -elbo/T {float(loss.detach()):8.3f}  "
                  f"recon mse {float(mse.detach()):.4f}{steps}  {time.perf_counter() - start:5.1f}s", flush=True)
    return losses, time.perf_counter() - start


def plot(path, data: SpiralData, preds: dict, losses: dict, metrics: dict, n_show: int = 3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_show + 1, figsize=(4.2 * (n_show + 1), 4.2))
    window = data.n_observed_times
    t_obs = float(data.t[window - 1])
    for k in range(n_show):
        ax = axes[k]
        truth, m = data.truth[k].numpy(), data.mask[k].bool().numpy()
        ax.plot(truth[:, 0], truth[:, 1], color="0.6", lw=1, label="truth")
        ax.plot(data.noisy[k, m, 0].numpy(), data.noisy[k, m, 1].numpy(), "k.", ms=5, label="observed")
        for (name, pred), style in zip(preds.items(), ("C0", "C3")):
            p = pred[k].numpy()
            ax.plot(p[:window, 0], p[:window, 1], "-", color=style, lw=1.8, label=f"{name} (t <= {t_obs:.3g})")
            ax.plot(p[window - 1:, 0], p[window - 1:, 1], ":", color=style, lw=1.8, label=f"{name} extrapolated")
        ax.set(title=f"held-out trajectory {k}", aspect="equal")
        if k == 0:
            ax.legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    for name, curve in losses.items():
        ax.plot(curve, label=f"{name}: interp {metrics[name][0]:.4f}, extrap {metrics[name][1]:.3f}")
    ax.set(title="training -ELBO per time (MSE on test in legend)", xlabel="iteration", yscale="symlog")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--train", type=int, default=256, help="training trajectories")
    parser.add_argument("--test", type=int, default=64, help="held-out trajectories")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latent", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--n-times", type=int, default=80, help="grid times on [0, 10]")
    parser.add_argument("--observed-fraction", type=float, default=0.4,
                        help="share of the window's grid times each trajectory is observed at")
    parser.add_argument("--anneal", type=float, default=1.0, help="lr drops 10x after this fraction (1: never)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default="outputs")
    args, _petsc_args = parser.parse_known_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    sizes = {"n_times": args.n_times, "observed_fraction": args.observed_fraction}
    train_set = make_spirals(args.train, generator=g, **sizes)
    test_set = make_spirals(args.test, generator=g, **sizes)
    print(f"{args.train} training / {args.test} test spirals; each observed at "
          f"{float(train_set.mask.sum(1).mean()):.1f} random times of {train_set.n_observed_times} in "
          f"[0, {float(train_set.t[train_set.n_observed_times - 1]):g}], extrapolated to {float(train_set.t[-1]):g}")

    results, losses, preds = {}, {}, {}
    for name, model in (("latent ODE", LatentODE(args.latent, rtol=args.rtol, atol=args.atol).double()),
                        ("RNN", LatentRNN(args.latent).double())):
        torch.manual_seed(args.seed)
        curve, seconds = train(model, train_set, iters=args.iters, batch=args.batch, lr=args.lr, seed=args.seed,
                               label=name, log_every=args.log_every, anneal=args.anneal)
        interp, extrap, pred = evaluate(model, test_set)
        results[name], losses[name], preds[name] = (interp, extrap, seconds, curve[0], curve[-1]), curve, pred
        extra = f", prediction solve {model.predictor.stats.rhs_evals} f evals" if name == "latent ODE" else ""
        print(f"{name}: test interpolation MSE {interp:.5f}, extrapolation MSE {extrap:.5f}, "
              f"training {seconds:.1f}s{extra}")

    path = os.path.join(args.out, "latent_ode.png")
    plot(path, test_set, preds, losses, results)
    print("\n{:<11} {:>12} {:>12} {:>10} {:>12}".format("model", "interp MSE", "extrap MSE", "train s", "final -elbo"))
    for name, (interp, extrap, seconds, _, last) in results.items():
        print(f"{name:<11} {interp:12.5f} {extrap:12.5f} {seconds:10.1f} {last:12.3f}")
    print(f"plot written to {path}")
    return results


if __name__ == "__main__":
    main()

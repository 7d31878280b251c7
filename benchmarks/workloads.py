"""The seed workloads timed against torchdiffeq: the digits ODE-block classifier and the 2-D CNF.

digits: examples/classify_digits.py's model (conv stem, 16-channel conv ODE block, linear head; float32),
    batch 64, RK4 with 4 fixed steps on [0, 1]; one epoch = 23 iterations over the 1437 training images
    (no augmentation).  Time per epoch and the process's peak RSS growth while training.
    Variants: pnode (every step's state kept for the adjoint, the field re-evaluated in each VJP), pnode
    with ``options={"keep_graph": True}`` (graph-keeping: the forward's stage graphs reused by the
    adjoint's VJPs), pnode with ``options={"checkpoints": 2}`` (memory-lean: Revolve with 2 stored states,
    recomputing), torchdiffeq ``odeint`` (backpropagation through the solver's operations) and
    ``odeint_adjoint`` (continuous adjoint, solved backwards).
cnf: examples/cnf_toy.py's flow network (MLP 3-64-64-64-2, tanh; float64), batch 256, RK4 with 8 fixed
    steps, exact trace and Hutchinson's (Rademacher noise), the density's negative log-likelihood plus
    both RNODE regularizers.  Time per training iteration.  The torchdiffeq side integrates the same
    augmented dynamics (written below, FFJORD-style) with torchdiffeq's RK4 on the same steps.  Variants:
    pnode, pnode with ``keep_graph``, torchdiffeq ``odeint`` and ``odeint_adjoint``.

All variants run the same scheme (``rk4``: the 3/8-rule RK4, pnode's and torchdiffeq's) on the same
steps, 4 vector-field evaluations per step.  Every (workload, variant)
runs in its own process; the variants are run in alternation, ``--rounds`` times, and the table gives
the median over the rounds.

    python benchmarks/workloads.py [--rounds 3] [--threads 1]   ->  benchmarks/results/workloads.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from _common import peak_rss_bytes, run_child, time_steps, write_table  # noqa: E402

DIGITS_VARIANTS = ["pnode", "pnode_keep_graph", "pnode_checkpoints2", "torchdiffeq", "torchdiffeq_adjoint"]
CNF_VARIANTS = ["pnode", "pnode_keep_graph", "torchdiffeq", "torchdiffeq_adjoint"]
MODES = {"pnode": {}, "pnode_keep_graph": {"keep_graph": True}, "pnode_checkpoints2": {"checkpoints": 2}}
WORKLOADS = [("digits", v) for v in DIGITS_VARIANTS] + [
    (f"cnf_{trace}", v) for trace in ("exact", "hutchinson") for v in CNF_VARIANTS]


# ------------------------------------------------------------------------------------ digits
def digits_child(variant: str, iterations: int) -> dict:
    import torch
    from classify_digits import ConvODEFunc, DigitClassifier, load_data
    from torch import nn
    from torch.nn import functional as F

    from pnode.nn import ODEBlock

    torch.manual_seed(0)
    x_train, y_train, _, _ = load_data(0)
    func = ConvODEFunc(16).float()
    step = 0.25
    if variant.startswith("pnode"):
        block = ODEBlock(func, method="rk4", options={"step_size": step, **MODES[variant]})
    else:
        import torchdiffeq

        adjoint = variant == "torchdiffeq_adjoint"

        class TorchdiffeqBlock(nn.Module):
            def __init__(self):
                super().__init__()
                self.func = func
                self.t = torch.tensor([0.0, 1.0])

            def forward(self, x):
                integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
                kwargs = {"adjoint_params": tuple(self.func.parameters())} if adjoint else {}
                return integrate(self.func, x, self.t, method="rk4", options={"step_size": step}, **kwargs)[-1]

        block = TorchdiffeqBlock()
    model = DigitClassifier(16, block).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 64
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    batches = [order[i:i + batch] for i in range(0, len(x_train), batch)]

    def train_step(index):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        loss.backward()
        optimizer.step()

    base = peak_rss_bytes()
    for index in batches[:2]:                     # warm-up (PETSc objects, allocator)
        train_step(index)
    times = []
    for index in batches[:iterations] if iterations else batches:
        start = time.perf_counter()
        train_step(index)
        times.append(time.perf_counter() - start)
    per_iteration = sum(times) / len(times)
    return {"seconds_per_epoch": per_iteration * len(batches), "seconds_per_iteration": per_iteration,
            "measured_iterations": len(times), "peak_rss_growth": peak_rss_bytes() - base,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------ CNF
def _torchdiffeq_cnf(net, trace: str):
    """The CNF's augmented field for torchdiffeq, FFJORD-style (noise held on the module per solve)."""
    import torch
    from torch import nn

    class Dynamics(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.noise = None

        def forward(self, t, state):
            z = state[0]
            with torch.enable_grad():
                if not z.requires_grad:
                    z = z.requires_grad_(True)
                dz = self.net(t, z)
                if trace == "exact":
                    rows = [torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0] for i in range(z.shape[1])]
                    divergence = sum(row[:, i] for i, row in enumerate(rows))
                    frobenius = sum(row.pow(2).sum(-1) for row in rows)
                else:
                    (ej,) = torch.autograd.grad(dz, z, self.noise, create_graph=True)
                    divergence = (ej * self.noise).sum(-1)
                    frobenius = ej.pow(2).sum(-1)
            return dz, -divergence, dz.pow(2).sum(-1), frobenius

    return Dynamics()


def cnf_child(workload: str, variant: str, iterations: int) -> dict:
    import numpy as np
    import torch
    from cnf_toy import FlowNet, sample_density

    from pnode.nn import CNF, sample_noise, standard_normal_log_prob

    trace = workload.split("_", 1)[1]
    torch.manual_seed(0)
    net = FlowNet(64, 3).double()
    with torch.no_grad():                       # a non-trivial field (the example starts at zero output)
        torch.nn.init.normal_(net.out.weight, std=0.3)
    rng = np.random.default_rng(0)
    step, batch, weight = 0.125, 256, 0.01
    regs = ("kinetic_energy", "jacobian_frobenius")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    if variant.startswith("pnode"):
        cnf = CNF(net, trace=trace, noise="rademacher", regularization=regs, method="rk4",
                  options={"step_size": step, **MODES[variant]})

        def objective(x):
            out = cnf(x)
            return -out.log_prob.mean() + weight * sum(r.mean() for r in out.regularization.values())
    else:
        import torchdiffeq

        dynamics = _torchdiffeq_cnf(net, trace)
        adjoint = variant == "torchdiffeq_adjoint"

        def objective(x):
            dynamics.noise = sample_noise(x.shape, "rademacher")
            zeros = torch.zeros(len(x), dtype=x.dtype)
            state = (x, zeros, zeros, zeros)
            integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
            kwargs = {"adjoint_params": tuple(net.parameters())} if adjoint else {}
            z, delta, kinetic, frobenius = (s[-1] for s in integrate(dynamics, state, t, method="rk4",
                                                                     options={"step_size": step}, **kwargs))
            log_prob = standard_normal_log_prob(z) - delta
            return -log_prob.mean() + weight * (kinetic.mean() + frobenius.mean())

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train_step():
        x = torch.tensor(sample_density("8gaussians", batch, rng), dtype=torch.float64)
        optimizer.zero_grad()
        loss = objective(x)
        loss.backward()
        optimizer.step()
        return loss.item()

    base = peak_rss_bytes()
    median, best = time_steps(train_step, warmup=2, repeats=iterations)
    return {"seconds_per_iteration": median, "min_seconds": best,
            "peak_rss_growth": peak_rss_bytes() - base, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------ driver
def child(workload: str, variant: str, iterations: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if workload == "digits":
        return digits_child(variant, iterations)
    return cnf_child(workload, variant, iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default=None)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--iterations", type=int, default=0,
                        help="timed iterations per process (default: a whole epoch for digits, 8 for the CNF)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the variants")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    args, _ = parser.parse_known_args()
    if args.child:
        iterations = args.iterations or (0 if args.workload == "digits" else 8)
        print(json.dumps(child(args.workload, args.variant, iterations, args.threads)))
        return

    started = time.perf_counter()
    measured: dict[tuple[str, str], list[dict]] = {key: [] for key in WORKLOADS}
    for round_ in range(args.rounds):
        for workload, variant in WORKLOADS:          # alternate: every variant once per round
            print(f"round {round_ + 1}/{args.rounds}: {workload} / {variant} ...", flush=True)
            measured[(workload, variant)].append(run_child(
                __file__, ["--workload", workload, "--variant", variant, "--iterations", str(args.iterations),
                           "--threads", str(args.threads)]))

    def summary(workload, variant, key):
        runs = [r for r in measured[(workload, variant)] if "error" not in r]
        return statistics.median(r[key] for r in runs) if runs else None

    rows, ratios = [], []
    for workload in dict.fromkeys(w for w, _ in WORKLOADS):
        key = "seconds_per_epoch" if workload == "digits" else "seconds_per_iteration"
        unit = "s/epoch" if workload == "digits" else "s/iter"
        variants = [v for w, v in WORKLOADS if w == workload]
        pnode_time = summary(workload, "pnode", key)
        pnode_mem = summary(workload, "pnode", "peak_rss_growth")
        for variant in variants:
            runs = measured[(workload, variant)]
            errors = [r["error"] for r in runs if "error" in r]
            value = summary(workload, variant, key)
            memory = summary(workload, variant, "peak_rss_growth")
            if value is None:
                rows.append([workload, variant, "failed", "", "", "", str(errors[0])[:60]])
                continue
            spread = ", ".join(f"{r[key]:.3f}" for r in runs if "error" not in r)
            rows.append([workload, variant, f"{value:.3f} {unit}",
                         f"{pnode_time / value:.2f}" if pnode_time else "", f"{memory / 2**20:.1f}",
                         f"{pnode_mem / memory:.2f}" if pnode_mem and memory > 0 else "", f"rounds: {spread}"])
            if variant != "pnode" and pnode_time:
                ratios.append(f"{workload}: pnode / {variant} time = {pnode_time / value:.2f}"
                              + (f", peak RSS growth = {pnode_mem / memory:.2f}" if pnode_mem and memory > 0 else ""))
    load = os.getloadavg()
    notes = (f"Median over {args.rounds} alternating rounds, each (workload, variant) in its own process; torch "
             f"threads {args.threads or 'default'}; 'pnode/x' is pnode's time (or peak RSS growth) divided by the "
             f"variant's (below 1: pnode is faster / leaner).\n" + "\n".join(ratios)
             + f"\nload average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
             f"whole run {time.perf_counter() - started:.0f} s; {os.cpu_count()} cores")
    write_table("workloads.md", ["workload", "variant", "time", "pnode/x time", "peak RSS MiB", "pnode/x RSS",
                                 "note"], rows, notes)


if __name__ == "__main__":
    main()

"""Training-step cost of an explicit neural ODE: pnode vs plain-torch autograd vs torchdiffeq.

Problem "mlp": B=512, D=32, MLP 32-128-128-32 (tanh), rk4, 100 fixed steps on [0, 1], float64.
Problem "tiny": the 2-D spiral field MLP 2-50-2 on y**3, B=16, rk4, 100 steps.
rk4 is torchdiffeq's (Kutta's 3/8 rule) in every variant, plain torch included.
Variants: plain-torch autograd through the RK4 loop; pnode in its default memory-lean mode (the adjoint
re-evaluates each stage for its VJP) and with ``options["keep_graph"]`` (the adjoint reuses the forward
pass's stage graphs); torchdiffeq ``odeint`` and ``odeint_adjoint``.
Each (problem, variant) runs in its own process, ``--rounds`` times in alternating order (the machine is
shared: the best round's median counts): time per training step (forward + backward, median of
``--repeats``) and the process's peak RSS growth during training.

    python benchmarks/explicit.py [--repeats 10] [--rounds 2]   ->  benchmarks/results/explicit.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_rss_bytes, run_child, time_steps, write_table  # noqa: E402

PROBLEMS = {
    "mlp": dict(batch=512, dim=32, widths=(128, 128), cube=False, steps=100),
    "tiny": dict(batch=16, dim=2, widths=(50,), cube=True, steps=100),
}
VARIANTS = ["plain_torch", "pnode", "pnode_keep_graph", "torchdiffeq", "torchdiffeq_adjoint"]


def build(problem: str):
    import torch
    from torch import nn

    spec = PROBLEMS[problem]
    torch.manual_seed(0)
    dims = (spec["dim"], *spec["widths"], spec["dim"])
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    net = nn.Sequential(*layers).double()

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y**3 if spec["cube"] else y)

    func = Field()
    y0 = torch.randn(spec["batch"], spec["dim"], dtype=torch.float64) * (0.5 if spec["cube"] else 1.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return func, y0, t, 1.0 / spec["steps"]


def child(problem: str, variant: str, repeats: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    func, y0, t, h = build(problem)
    params = list(func.parameters())

    if variant == "plain_torch":
        def solve(y):
            n = round(1 / h)
            for k in range(n):     # Kutta's 3/8 rule, torchdiffeq's (and pnode's) rk4
                tk = torch.tensor(k * h, dtype=torch.float64)
                k1 = func(tk, y)
                k2 = func(tk + h / 3, y + (h / 3) * k1)
                k3 = func(tk + 2 * h / 3, y + h * (k2 - k1 / 3))
                k4 = func(tk + h, y + h * (k1 - k2 + k3))
                y = y + (h / 8) * (k1 + 3 * (k2 + k3) + k4)
            return y
        forward = lambda: solve(y0)  # noqa: E731
    elif variant.startswith("pnode"):
        import pnode

        options = {"step_size": h, "keep_graph": variant.endswith("keep_graph")}
        solver = pnode.ODESolver(func, method="rk4", options=options)
        forward = lambda: solver(y0, t)[-1]  # noqa: E731
    elif variant.startswith("torchdiffeq"):
        import torchdiffeq

        integrate = torchdiffeq.odeint_adjoint if variant.endswith("adjoint") else torchdiffeq.odeint
        kwargs = {"adjoint_params": tuple(params)} if variant.endswith("adjoint") else {}
        forward = lambda: integrate(func, y0, t, method="rk4", options={"step_size": h}, **kwargs)[-1]  # noqa: E731
    else:
        raise ValueError(variant)

    def step():
        for p in params:
            p.grad = None
        loss = forward().pow(2).mean()
        loss.backward()

    base = peak_rss_bytes()
    median, best = time_steps(step, warmup=2, repeats=repeats)
    return {"median_s": median, "min_s": best, "peak_rss_growth": peak_rss_bytes() - base,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--problem", default=None)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    args, _ = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args.problem, args.variant, args.repeats, args.threads)))
        return

    rows = []
    summary = []
    for problem in PROBLEMS:
        results = {}
        for round_ in range(args.rounds):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                print(f"running {problem} / {variant} (round {round_ + 1}) ...", flush=True)
                r = run_child(__file__, ["--problem", problem, "--variant", variant,
                                         "--repeats", str(args.repeats), "--threads", str(args.threads)])
                best = results.get(variant)
                if best is None or "error" in best or ("error" not in r and r["median_s"] < best["median_s"]):
                    results[variant] = r
        base = results["plain_torch"].get("median_s")
        for variant, r in results.items():
            if "error" in r:
                rows.append([problem, variant, "failed", "", "", "", str(r["error"])[:60]])
                continue
            rows.append([problem, variant, f"{r['median_s'] * 1e3:.1f}", f"{r['min_s'] * 1e3:.1f}",
                         f"{r['median_s'] / base:.2f}" if base else "",
                         f"{r['peak_rss_growth'] / 2**20:.1f}", ""])
        for mine in ("pnode", "pnode_keep_graph"):
            if "error" in results[mine]:
                continue
            p = results[mine]["median_s"]
            for other in ("plain_torch", "torchdiffeq", "torchdiffeq_adjoint"):
                if "error" not in results[other]:
                    summary.append(f"{problem}: {mine} / {other} = {p / results[other]['median_s']:.2f}")
    load = os.getloadavg()[0]
    summary.append(f"torch threads: {args.threads or 'default'}; load average at the end: {load:.1f}")
    notes = ("Time per training step (forward + backward), ms; ratio to plain-torch autograd through the "
             "same RK4 loop; peak RSS growth while training, MiB.\n" + "\n".join(summary))
    write_table("explicit.md", ["problem", "variant", "median ms", "min ms", "x plain", "peak MiB", "note"],
                rows, notes)


if __name__ == "__main__":
    main()

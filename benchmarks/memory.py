"""Memory and time of one training step vs the number of steps N and of checkpoints K.

Problem: B=64, D=16, MLP 16-64-64-16 (tanh), rk4 with N fixed steps on [0, 1], float64.
Variants: pnode storing every step ("all"), pnode with K = 32, 8, ceil(log2 N) checkpoints (binomial
schedule), torchdiffeq direct backprop (odeint) and torchdiffeq odeint_adjoint.  Each run is its own
process: peak RSS growth during the step, pnode's peak number of stored states (and their bytes: a
checkpoint is one state; PETSc's trajectory keeps the state and the 4 RK4 stages of each step it holds),
and the wall time of the step.

    python benchmarks/memory.py [--sizes 100 1000 10000]  ->  benchmarks/results/memory.md, memory.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, peak_rss_bytes, run_child, write_table  # noqa: E402

B, D, WIDTH = 64, 16, 64
STATE_BYTES = B * D * 8


def build():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(),
                        nn.Linear(WIDTH, D)).double()

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return Field(), torch.randn(B, D, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)


def child(n_steps: int, variant: str) -> dict:
    func, y0, t = build()
    h = 1.0 / n_steps
    extra = {}
    if variant.startswith("pnode"):
        import pnode

        k = variant.split(":")[1]
        options = {"step_size": h} if k == "all" else {"step_size": h, "checkpoints": int(k)}
        solver = pnode.ODESolver(func, method="rk4", options=options)
        forward = lambda: solver(y0, t)[-1]  # noqa: E731
    else:
        import torchdiffeq

        adjoint = variant == "torchdiffeq_adjoint"
        integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        forward = lambda: integrate(func, y0, t, method="rk4", options={"step_size": h})[-1]  # noqa: E731

    def step():
        for p in func.parameters():
            p.grad = None
        forward().pow(2).mean().backward()

    base = peak_rss_bytes()
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    if variant.startswith("pnode"):
        s = solver.stats
        held = s.peak_stored_states
        # checkpoints are single states; trajectory steps hold the state and 4 stages
        trajectory_steps = held if k == "all" else 1
        extra = {"stored_states": held, "stored_bytes": (held - trajectory_steps) * STATE_BYTES
                 + trajectory_steps * 5 * STATE_BYTES, "recomputed": s.recomputed_steps}
    return {"seconds": elapsed, "rss_growth": peak_rss_bytes() - base, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int)
    parser.add_argument("--variant")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args, _ = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args.n, args.variant)))
        return

    rows, results = [], {}
    for n in args.sizes:
        log_k = math.ceil(math.log2(n))
        variants = ["pnode:all", "pnode:32", "pnode:8", f"pnode:{log_k}", "torchdiffeq", "torchdiffeq_adjoint"]
        for variant in dict.fromkeys(variants):
            print(f"N={n} {variant} ...", flush=True)
            r = run_child(__file__, ["--n", str(n), "--variant", variant], timeout=3600)
            results[(n, variant)] = r
            if "error" in r:
                rows.append([n, variant, "failed", "", "", "", "", str(r["error"])[:50]])
                continue
            rows.append([n, variant, f"{r['seconds']:.2f}", f"{r['rss_growth'] / 2**20:.1f}",
                         r.get("stored_states", ""), f"{r['stored_bytes'] / 2**20:.2f}" if "stored_bytes" in r else "",
                         r.get("recomputed", ""), ""])
    notes = []
    for n in args.sizes:
        log_k = math.ceil(math.log2(n))
        ck, direct, full = results.get((n, f"pnode:{log_k}")), results.get((n, "torchdiffeq")), \
            results.get((n, "pnode:all"))
        if ck and direct and full and not any("error" in r for r in (ck, direct, full)):
            notes.append(f"N={n}, K=ceil(log2 N)={log_k}: pnode RSS growth / torchdiffeq direct = "
                         f"{ck['rss_growth'] / max(direct['rss_growth'], 1):.3f}; stored-state bytes / direct RSS "
                         f"growth = {ck['stored_bytes'] / max(direct['rss_growth'], 1):.4f}; time / pnode store-all = "
                         f"{ck['seconds'] / full['seconds']:.2f} (recomputed {ck['recomputed']} steps = "
                         f"{ck['recomputed'] / n:.1f} N)")
    path = write_table("memory.md", ["N", "variant", "step s", "RSS growth MiB", "stored states", "stored MiB",
                                     "recomputed", "note"], rows,
                       "One training step (forward + backward) per process.\n" + "\n".join(notes))
    plot(results, args.sizes, os.path.join(RESULTS, "memory.png"))
    print(f"plot: {os.path.join(RESULTS, 'memory.png')} (table {path})")


def plot(results, sizes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {"pnode:all": "pnode, every step", "pnode:32": "pnode, K=32", "pnode:8": "pnode, K=8",
              "log": "pnode, K=ceil(log2 N)", "torchdiffeq": "torchdiffeq odeint (backprop)",
              "torchdiffeq_adjoint": "torchdiffeq odeint_adjoint"}
    for key, label in labels.items():
        xs, ys = [], []
        for n in sizes:
            variant = f"pnode:{math.ceil(math.log2(n))}" if key == "log" else key
            r = results.get((n, variant))
            if r and "error" not in r:
                xs.append(n)
                ys.append(max(r["rss_growth"], 1) / 2**20)
        if xs:
            ax.loglog(xs, ys, "o-", label=label)
    ax.set(xlabel="steps N", ylabel="peak RSS growth in one training step (MiB)",
           title=f"memory vs steps (B={B}, D={D}, rk4)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

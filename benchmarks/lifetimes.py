"""RSS of one-shot ``pnode.odeint`` + ``backward()`` calls in a loop, with the garbage collector left
alone (PETSc objects must be freed when each call's graph goes, not by the cyclic collector).

    python benchmarks/lifetimes.py explicit|implicit|checkpointed [N=10000]

Prints the seconds per call, RSS after 1,000 calls (warm-up) and every 2,000 after, the growth per
1,000 calls after warm-up, and the live PETSc objects at the end (docs/benchmarks.md has the table).
"""

from __future__ import annotations

import gc
import sys
import time

import torch

import pnode

CASES = {
    "explicit": dict(method="rk4", options={"step_size": 0.1}),
    "implicit": dict(method="beuler", options={"step_size": 0.1}),
    "checkpointed": dict(method="rk4", options={"step_size": 0.05, "checkpoints": 3}),
}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def live_petsc_objects() -> int:
    from petsc4py import PETSc  # after pnode, which initialises it with the command line

    return sum(1 for o in gc.get_objects() if isinstance(o, PETSc.Object) and o.handle)


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "explicit"
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()

    def field(t, y):
        return net(y)

    y0 = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    marks = []
    start = time.perf_counter()
    for i in range(calls):
        ys = pnode.odeint(field, y0, t, adjoint_params=tuple(net.parameters()), **CASES[kind])
        ys.pow(2).sum().backward()
        if i + 1 == min(1000, calls) or (i + 1) % 2000 == 0 or i + 1 == calls:
            marks.append((i + 1, rss_mib()))
    per_call = (time.perf_counter() - start) / calls
    (n0, r0), (n1, r1) = marks[0], marks[-1]
    growth = (r1 - r0) / max(n1 - n0, 1) * 1000
    print(f"{kind}: {calls} calls, {per_call:.4f} s/call, RSS MiB at {marks}, growth after warm-up "
          f"{growth:.3f} MiB per 1000 calls, live PETSc objects {live_petsc_objects()}")


if __name__ == "__main__":
    main()

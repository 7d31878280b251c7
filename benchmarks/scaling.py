"""Data-parallel scaling of a compute-bound training step: 1 rank vs 2 ranks under mpiexec.

Problem: B=4096 samples, D=64, MLP 64-256-256-64 (tanh), rk4 with 10 fixed steps on [0, 1], float64;
a training step is forward + backward (PETSc TSAdjoint).  Each configuration runs in its own
``mpiexec`` job; the global batch is the same, sharded over the ranks.  Communication share: the time
spent inside pnode's collectives (argument check, failure agreements, per-output NaN checks, the one
parameter-gradient allreduce), measured on rank 0 by timing those functions; it includes waiting for
the slower rank, so load imbalance shows up there too.

    python benchmarks/scaling.py [--repeats 5]   ->  benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_table  # noqa: E402

BATCH, DIM, WIDTH, STEPS = 4096, 64, 256, 10
CONFIGS = [  # (ranks, torch threads per rank)
    (1, 1),
    (1, 2),
    (2, 1),
]


def child(repeats: int) -> None:
    import statistics

    import torch
    from mpi4py import MPI
    from torch import nn

    import pnode
    from pnode.distributed import shard

    comm = MPI.COMM_WORLD

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(),
                        nn.Linear(WIDTH, DIM)).double()
    y0 = shard(torch.randn(BATCH, DIM, dtype=torch.float64), comm)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solver = pnode.ODESolver(lambda t, y: net(y), method="rk4", options={"step_size": 1.0 / STEPS},
                             adjoint_params=tuple(net.parameters()), comm=comm)

    def step():
        net.zero_grad()
        solver(y0, t)[-1].pow(2).sum().backward()

    for _ in range(2):
        step()
    times, comm_times, cpu_times = [], [], []
    for _ in range(repeats):
        comm.Barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        # every collective pnode makes in a call (argument checks, step agreement, the gradient's
        # reduction) is timed into the solve's statistics
        comm_times.append(solver.stats.communication_time)
    # the slowest rank sets the pace
    median = comm.allreduce(statistics.median(times), op=MPI.MAX)
    cpu = comm.allreduce(statistics.median(cpu_times), op=MPI.MAX)
    share = statistics.median(c / s for c, s in zip(comm_times, times))
    if comm.Get_rank() == 0:
        print(json.dumps({"median_s": median, "min_s": min(times), "comm_share": share, "cpu_s": cpu,
                          "steps": solver.stats.steps}))


def run(ranks: int, threads: int, repeats: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + \
        env.get("PYTHONPATH", "")
    command = [sys.executable, __file__, "--child", "--repeats", str(repeats)]
    if ranks > 1:
        command = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), *command]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.repeats)
        return
    load = os.getloadavg()[0]
    results = {config: run(*config, args.repeats) for config in CONFIGS}
    base = results[(1, 1)].get("median_s")
    rows = []
    for (ranks, threads), r in results.items():
        if "error" in r:
            rows.append([ranks, threads, "error", r["error"], "", "", "", ""])
            continue
        cpu_base = results[(1, 1)].get("cpu_s")
        rows.append([ranks, threads, f"{r['median_s']:.3f}", f"{base / r['median_s']:.2f}x" if base else "",
                     f"{r['cpu_s']:.3f}", f"{cpu_base / r['cpu_s']:.2f}x" if cpu_base else "",
                     f"{100 * r['comm_share']:.1f}%", r["steps"]])
    notes = (f"B={BATCH}, D={DIM}, MLP {DIM}-{WIDTH}-{WIDTH}-{DIM}, rk4, {STEPS} fixed steps, float64; "
             f"median of {args.repeats} training steps (forward + TSAdjoint backward), slowest rank.\n"
             "Speed-up is against 1 rank with 1 thread.  CPU s/step: process CPU time of the busiest rank (it\n"
             "counts MPI's busy-waiting too); on a loaded machine it shows how the work divides when wall\n"
             f"time cannot.  Machine: {os.cpu_count()} cores, load average "
             f"{load:.2f} when the run started (other jobs share the cores: timings are noisy).")
    header = ["ranks", "threads/rank", "s/step (wall)", "speed-up", "CPU s/step (busiest rank)", "CPU speed-up",
              "comm share", "steps"]
    write_table("scaling.md", header, rows, notes)


if __name__ == "__main__":
    main()

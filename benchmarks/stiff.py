"""Training a stiff neural ODE: pnode's implicit/IMEX methods vs explicit PyTorch peers, and Newton/Krylov
iterations vs batch size.

Model: Robertson kinetics (k1=0.04, k2=3e7, k3=1e4) with learnable log-rates plus an MLP rate correction
``1e-2 * y * mlp(y * scale)`` (3-16-3, tanh), float64; ``--batch`` initial conditions (y1 from 1 to 0.7,
y3 = 1 - y1); 12 output times 0 and log-spaced from 1e-5 to T; loss = mean of the squared scaled outputs.
All solvers use rtol 1e-6, atol 1e-10 (pnode also rtol 1e-8, to compare at equal accuracy).

Part 1 (train): one training step (forward + backward) per variant, each in its own process, at a short
horizon where the explicit peers finish (``--t-short``) and a long one where they are stability-limited
(``--t-long``); explicit peers are stopped after ``--cap-s`` seconds or ``--max-steps`` steps, and their
time is then reported as a lower bound extrapolated linearly in t from the forward progress they made.
Accuracy: the largest relative error of the final state over samples and species against scipy Radau
(rtol 1e-12, atol 1e-22) on the same model.

Part 2 (scan): pnode arkimex4 at ``--t-scan`` for batch sizes ``--scan-batches`` (distinct initial
conditions), jacobian 'batched' (per-sample blocks, exact batched LU) and 'matrix_free' (JVP + GMRES):
Newton and Krylov iterations per step and time per step.

Part 3 (diffrax): the same model in JAX (benchmarks/_diffrax_peer.py, parameters copied from the torch
model) trained with diffrax ``Kvaerno5`` + ``PIDController`` (same rtol/atol) + ``RecursiveCheckpointAdjoint``,
``jax.vmap`` over samples, float64, the step (loss + grad) compiled ahead of time, against pnode arkimex4
(jacobian 'batched'), for each horizon in ``--horizons`` and batch in ``--batches``: one process per cell
runs both, alternating timed steps, with compile time reported apart; final-state error of each against
scipy Radau; pnode's Newton and Krylov iterations per step; peak RSS growth during the timed steps; the
relative difference of the two losses and gradients (same model, both solvers at rtol 1e-6).  ``--trace``
runs pnode with ``options['trace']`` (the field's ``torch.jit.trace`` for its no-grad evaluations).

    python benchmarks/stiff.py --threads 1 [--quick]   ->  benchmarks/results/stiff.md
    python benchmarks/stiff.py --threads 1 --parts diffrax --batches 4 64 --horizons 1 --repeats 2   (short)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_rss_bytes, run_child  # noqa: E402

RATES = (0.04, 3e7, 1e4)
SCALE = (1.0, 1e4, 1.0)
RTOL, ATOL = 1e-6, 1e-10
N_OUT = 12

# name -> (library, method, rtol); pnode variants first
VARIANTS = {
    "pnode arkimex4": ("pnode", "arkimex4", RTOL),
    "pnode arkimex4 rtol1e-8": ("pnode", "arkimex4", 1e-8),
    "pnode dirkes324sal": ("pnode", "dirkes324sal", RTOL),
    "pnode IMEX arkimex4": ("pnode_imex", "arkimex4", RTOL),
    "torchdiffeq dopri5": ("torchdiffeq", "dopri5", RTOL),
    "torchdiffeq dopri5 adjoint": ("torchdiffeq_adjoint", "dopri5", RTOL),
    "torchode dopri5": ("torchode", "dopri5", RTOL),
    "torchode tsit5": ("torchode", "tsit5", RTOL),
}
QUICK_VARIANTS = ["pnode arkimex4", "pnode IMEX arkimex4", "torchdiffeq dopri5", "torchdiffeq dopri5 adjoint",
                  "torchode tsit5"]


PARTS = ("train", "scan", "diffrax")
RAW: list[dict] = []   # every child's result, written to results/stiff.json


class GaveUp(Exception):
    """Raised from inside a peer's vector field when its step or wall-time cap is reached."""


# ---------------------------------------------------------------------------------------------- model
def build(batch: int, t_end: float):
    import numpy as np
    import torch
    from torch import nn

    scale = torch.tensor(SCALE, dtype=torch.float64)

    class MassAction(nn.Module):
        """Robertson's mass-action kinetics with learnable log-rate constants (the stiff part)."""

        def __init__(self):
            super().__init__()
            self.log_rates = nn.Parameter(torch.log(torch.tensor(RATES, dtype=torch.float64)))

        def forward(self, t, y):
            k1, k2, k3 = torch.exp(self.log_rates).unbind()
            y1, y2, y3 = y.unbind(-1)
            return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2, k2 * y2 * y2], -1)

    class Correction(nn.Module):
        """A learned relative rate correction (non-stiff): 1e-2 * y * mlp(y * scale)."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()

        def forward(self, t, y):
            return 1e-2 * y * self.net(y * scale)

    class Kinetics(nn.Module):
        def __init__(self):
            super().__init__()
            self.mass = MassAction()
            self.correction = Correction()

        def forward(self, t, y):
            return self.mass(t, y) + self.correction(t, y)

    torch.manual_seed(0)
    model = Kinetics()
    y1 = torch.linspace(1.0, 0.7, batch, dtype=torch.float64)
    y0 = torch.stack([y1, torch.zeros_like(y1), 1.0 - y1], -1)
    t = torch.from_numpy(np.concatenate([[0.0], np.logspace(-5, math.log10(t_end), N_OUT - 1)]))
    return model, y0, t, scale


def reference(batch: int, t_end: float):
    """Final state of the same model by scipy Radau at rtol 1e-12 (exact Jacobian from torch).

    The samples are independent, so the Jacobian is block diagonal: it is handed to Radau as a sparse
    matrix of per-sample 3x3 blocks (sparse LU), which keeps batch 1024 cheap."""
    import numpy as np
    import torch
    from scipy.integrate import solve_ivp
    from scipy.sparse import bsr_matrix

    model, y0, t, _ = build(batch, t_end)
    zero = torch.zeros((), dtype=torch.float64)
    one_sample = lambda z: model(zero, z)  # noqa: E731
    blocks = torch.func.vmap(torch.func.jacrev(one_sample))
    index, pointer = np.arange(batch), np.arange(batch + 1)

    def rhs(s, y):
        return model(zero, torch.from_numpy(y).view(batch, 3)).reshape(-1).numpy()

    def jac(s, y):
        return bsr_matrix((blocks(torch.from_numpy(y).view(batch, 3)).numpy(), index, pointer),
                          shape=(3 * batch, 3 * batch)).tocsc()

    with torch.no_grad():
        sol = solve_ivp(rhs, (0.0, t_end), y0.reshape(-1).numpy(), method="Radau", rtol=1e-12, atol=1e-22,
                        jac=jac)
    return np.asarray(sol.y[:, -1]).reshape(batch, 3)


# ---------------------------------------------------------------------------------------------- peers
def capped(func, cap_s: float, max_evals: int):
    """Wrap ``func`` to count evaluations, remember the latest time and stop at the caps."""
    import torch
    from torch import nn

    class Capped(nn.Module):
        def __init__(self):
            super().__init__()
            self.func = func
            self.evals = 0
            self.t_last = 0.0
            self.deadline = math.inf
            self.forward_s = None

        def forward(self, t, y):
            self.evals += 1
            self.t_last = float(t.max()) if isinstance(t, torch.Tensor) else float(t)
            if self.evals > max_evals or time.perf_counter() > self.deadline:
                raise GaveUp(f"{self.evals} evals, t={self.t_last:.3g}")
            return self.func(t, y)

        def arm(self):
            self.evals, self.t_last, self.deadline = 0, 0.0, time.perf_counter() + cap_s
            self.forward_s = None

    return Capped()


def peer_forward(kind: str, method: str, rtol: float, field, y0, t, max_steps: int):
    """A function running the peer's forward solve, returning (final state, steps taken)."""

    if kind.startswith("torchdiffeq"):
        import torchdiffeq

        adjoint = kind.endswith("adjoint")
        integrate = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        kwargs = {"adjoint_params": tuple(field.parameters())} if adjoint else {}

        def forward():
            out = integrate(field, y0, t, rtol=rtol, atol=ATOL, method=method,
                            options={"max_num_steps": max_steps}, **kwargs)
            return out, None
        return forward
    if kind == "torchode":
        import torchode as to

        term = to.ODETerm(field)
        step = {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[method](term=term)
        controller = to.PIDController(atol=ATOL, rtol=rtol, pcoeff=0.2, icoeff=0.5, dcoeff=0.0, term=term)
        solver = to.AutoDiffAdjoint(step, controller, max_steps=max_steps)
        t_eval = t.expand(y0.shape[0], -1)

        def forward():
            sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval), term=term)
            if bool((sol.status != 0).any()):
                raise GaveUp(f"torchode status {sol.status.tolist()} (max_steps {max_steps})")
            return sol.ys.transpose(0, 1), int(sol.stats["n_steps"].max())
        return forward
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------- child
def child(variant: str, batch: int, t_end: float, repeats: int, threads: int, cap_s: float, max_steps: int,
          budget_s: float, jacobian: str = "batched") -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    kind, method, rtol = VARIANTS[variant]
    model, y0, t, scale = build(batch, t_end)
    params = list(model.parameters())
    _, _, t_warm, _ = build(batch, 1e-3)   # warm-up horizon: builds PETSc objects, loads kernels
    result: dict = {"threads": torch.get_num_threads()}

    if kind.startswith("pnode"):
        import pnode

        field = pnode.IMEXField(implicit=model.mass, explicit=model.correction) if kind == "pnode_imex" else model
        solver = pnode.ODESolver(field, method=method, rtol=rtol, atol=ATOL,
                                 options={"jacobian": jacobian, "max_num_steps": max_steps})
        forward = lambda times: (solver(y0, times), solver.stats.steps)  # noqa: E731
        counter = None
    else:
        counter = capped(model, cap_s, 7 * max_steps)
        forwards = {}

        def forward(times):
            key = float(times[-1])
            if key not in forwards:
                forwards[key] = peer_forward(kind, method, rtol, counter, y0, times, max_steps)
            return forwards[key]()

    def step(times) -> dict:
        for p in params:
            p.grad = None
        if counter is not None:
            counter.arm()
        start = time.perf_counter()
        out, steps = forward(times)
        fwd = time.perf_counter() - start
        fwd_evals = counter.evals if counter is not None else None
        if counter is not None:
            counter.forward_s = fwd   # the forward finished: a cap reached from here on is in the backward
        loss = (out * scale).pow(2).mean()
        loss.backward()
        total = time.perf_counter() - start
        rec = {"time": total, "fwd_s": fwd, "bwd_s": total - fwd, "final": out[-1].detach().tolist()}
        if counter is not None:
            rec.update(f_evals=fwd_evals, bwd_evals=counter.evals - fwd_evals,
                       steps=steps if steps is not None else None)
        else:
            s = solver.stats
            rec.update(steps=s.steps, rejected=s.rejected_steps, f_evals=s.rhs_evals, vjp_evals=s.vjp_evals,
                       jvp_evals=s.jvp_evals, jacobians=s.jacobian_assemblies, newton=s.newton_iterations,
                       krylov=s.krylov_iterations, fwd_s=s.forward_time, bwd_s=s.backward_time)
        return rec

    base = peak_rss_bytes()   # before the warm-up, as in explicit.py (pnode: includes building PETSc objects)
    try:
        step(t_warm)
    except GaveUp:
        pass
    records = []
    spent = 0.0
    try:
        while len(records) < repeats and (not records or spent < budget_s):
            rec = step(t)
            records.append(rec)
            spent += rec["time"]
    except Exception as error:  # noqa: BLE001 - a peer giving up (possibly wrapped by autograd)
        if counter is None or "GaveUp" not in f"{type(error).__name__} {error!r}":
            raise
        elapsed = time.perf_counter() - counter.deadline + cap_s
        result.update(gave_up=True, gave_up_evals=counter.evals, t_reached=counter.t_last, elapsed=elapsed,
                      forward_s=counter.forward_s, why=str(error)[:80])
    if records:
        last = records[-1]
        result.update(last)
        times = [r["time"] for r in records]
        result.update(median_s=statistics.median(times), min_s=min(times), repeats=len(records))
    result["peak_rss_growth"] = peak_rss_bytes() - base
    return result


def scan_child(batch: int, jacobian: str, t_end: float, threads: int) -> dict:
    return child("pnode arkimex4", batch, t_end, repeats=1, threads=threads, cap_s=math.inf,
                 max_steps=100_000, budget_s=0.0, jacobian=jacobian)


def rss_reset() -> int | None:
    """Reset this process's peak-RSS mark (Linux: /proc/self/clear_refs) and return the current RSS in
    bytes, or None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmRSS") * 1024
    except OSError:
        return None


def rss_peak() -> int | None:
    """The peak RSS in bytes since the last :func:`rss_reset` (None off Linux)."""
    try:
        return _proc_status_kib("VmHWM") * 1024
    except OSError:
        return None


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def diffrax_child(batch: int, t_end: float, repeats: int, threads: int, trace: bool = False) -> dict:
    """One (T, batch) cell of part 3: the diffrax peer and pnode arkimex4 on the same model and the same
    initial parameters, timed steps alternating (diffrax first in even rounds, pnode first in odd ones)."""
    from _diffrax_peer import DiffraxStep, configure_jax, grads_to_torch_order, params_from_torch

    configure_jax(threads)      # before torch does anything with threads, and before jax is imported
    import jax
    import numpy as np
    import torch

    import pnode

    if threads:
        torch.set_num_threads(threads)
    model, y0, t, scale = build(batch, t_end)
    params = params_from_torch(model)
    peer = DiffraxStep(y0.numpy(), t.numpy(), SCALE, RTOL, ATOL)
    solver = pnode.ODESolver(model, method="arkimex4", rtol=RTOL, atol=ATOL,
                             options={"jacobian": "batched", "trace": trace})
    torch_params = list(model.parameters())

    def pnode_step():
        for p in torch_params:
            p.grad = None
        out = solver(y0, t)
        loss = (out * scale).pow(2).mean()
        loss.backward()
        return loss.item(), [p.grad.numpy().copy() for p in torch_params], out[-1].detach().numpy()

    def diffrax_step():
        loss, grads, final, accepted, rejected = peer(params)
        return loss, grads_to_torch_order(grads), final, accepted, rejected

    result: dict = {"threads": torch.get_num_threads(), "jax": jax.__version__}
    compile_s = peer.compile(params)
    start = time.perf_counter()
    first = diffrax_step()                 # the compiled step's first run (untimed)
    result["diffrax_first_run_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pnode_first = pnode_step()             # builds PETSc objects (untimed)
    result["pnode_first_run_s"] = time.perf_counter() - start
    timing = {"diffrax": [], "pnode": []}
    peak = {"diffrax": [], "pnode": []}
    runners = {"diffrax": diffrax_step, "pnode": pnode_step}
    last = {"diffrax": first, "pnode": pnode_first}
    for round_ in range(repeats):
        for name in (("diffrax", "pnode") if round_ % 2 == 0 else ("pnode", "diffrax")):
            base = rss_reset()
            start = time.perf_counter()
            last[name] = runners[name]()
            timing[name].append(time.perf_counter() - start)
            top = rss_peak()
            if base is not None and top is not None:
                peak[name].append(top - base)
    d_loss, d_grads, d_final, accepted, rejected = last["diffrax"]
    p_loss, p_grads, p_final = last["pnode"]
    d_flat, p_flat = np.concatenate([g.ravel() for g in d_grads]), np.concatenate([g.ravel() for g in p_grads])
    s = solver.stats
    result.update(
        diffrax_compile_s=compile_s, diffrax_s=statistics.median(timing["diffrax"]),
        pnode_s=statistics.median(timing["pnode"]), diffrax_times=timing["diffrax"], pnode_times=timing["pnode"],
        diffrax_peak=max(peak["diffrax"]) if peak["diffrax"] else None,
        pnode_peak=max(peak["pnode"]) if peak["pnode"] else None,
        diffrax_final=np.asarray(d_final).tolist(), pnode_final=np.asarray(p_final).tolist(),
        diffrax_accepted_mean=float(np.mean(accepted)), diffrax_accepted_max=int(np.max(accepted)),
        diffrax_rejected_mean=float(np.mean(rejected)),
        diffrax_loss=d_loss, pnode_loss=p_loss, loss_rel_diff=abs(d_loss - p_loss) / abs(p_loss),
        grad_rel_diff=float(np.linalg.norm(d_flat - p_flat) / np.linalg.norm(p_flat)),
        log_rates_grad_rel_diff=float(np.linalg.norm(d_grads[0] - p_grads[0]) / np.linalg.norm(p_grads[0])),
        steps=s.steps, rejected=s.rejected_steps, newton=s.newton_iterations, krylov=s.krylov_iterations,
        jacobians=s.jacobian_assemblies, pnode_fwd_s=s.forward_time, pnode_bwd_s=s.backward_time)
    return result


# ---------------------------------------------------------------------------------------------- parent
def run(args, child_args: list[str], in_process: bool, timeout: float) -> dict:
    if in_process:
        try:
            return dispatch(parse(child_args))
        except Exception as error:  # noqa: BLE001 - reported in the table
            return {"error": [f"{type(error).__name__}: {error}"[:120]]}
    try:
        return run_child(__file__, child_args, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": [f"timed out after {timeout:.0f}s"], "timeout": True}


def dispatch(args) -> dict:
    if args.diffrax_cell:
        return diffrax_child(args.batch, args.t_end, args.repeats, args.threads, args.trace)
    if args.scan:
        return scan_child(args.batch, args.jacobian, args.t_end, args.threads)
    return child(args.variant, args.batch, args.t_end, args.repeats, args.threads, args.cap_s, args.max_steps,
                 args.budget_s)


def rel_error(final, ref) -> float:
    import numpy as np

    final = np.asarray(final)
    return float(np.max(np.abs(final - ref) / np.abs(ref)))


def fmt(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def train_part(args, variants: list[str], in_process: bool) -> tuple[list[list], list[str]]:
    rows, summary = [], []
    for t_end in (args.t_short, args.t_long):
        print(f"reference (Radau, rtol 1e-12) at T={t_end:g} ...", flush=True)
        ref = reference(args.batch, t_end)
        results = {}
        for name in variants:
            print(f"running T={t_end:g} / {name} ...", flush=True)
            child_args = ["--variant", name, "--batch", str(args.batch), "--t-end", repr(t_end),
                          "--repeats", str(args.repeats), "--threads", str(args.threads), "--cap-s", repr(args.cap_s),
                          "--max-steps", str(args.max_steps), "--budget-s", repr(args.budget_s)]
            results[name] = r = run(args, child_args, in_process, timeout=args.child_timeout)
            RAW.append({"part": "train", "t_end": t_end, "variant": name, **r})
            if "final" in r:
                r["error_rel"] = rel_error(r["final"], ref)
            print("   ", {k: v for k, v in r.items() if k != "final"}, flush=True)

        pnodes = {n: r for n, r in results.items() if n.startswith("pnode") and "median_s" in r}
        for name, r in results.items():
            if "error" in r:
                rows.append([f"{t_end:g}", name, "failed: " + str(r["error"])[:70]])
                continue
            if r.get("gave_up"):
                # forward progress until the cap, extrapolated linearly in t: a lower bound, since the
                # stable explicit step shrinks as y3 grows (|lambda| ~ k3 y3 + 2 k2 y2 increases with t)
                if r["forward_s"] is None:
                    bound = r["elapsed"] * t_end / max(r["t_reached"], 1e-300)
                    where = "forward"
                else:   # the backward solve (torchdiffeq adjoint) runs from T down to 0
                    back = r["elapsed"] - r["forward_s"]
                    bound = r["forward_s"] + back * t_end / max(t_end - r["t_reached"], 1e-300)
                    where = "backward"
                r["bound_s"] = bound
                status = (f"gave up in {where} after {r['gave_up_evals']} f evals / {r['elapsed']:.1f}s at "
                          f"t={r['t_reached']:.3g}")
                time_cell = f">= {bound:.3g} s (extrap.)"
            else:
                status = "ok"
                time_cell = f"{r['median_s']:.3g} s"
            best = None
            if not name.startswith("pnode") and pnodes:
                peer_err = r.get("error_rel")
                eligible = {n: p for n, p in pnodes.items() if peer_err is None or p["error_rel"] <= peer_err}
                pool = eligible or {min(pnodes, key=lambda n: pnodes[n]["error_rel"]): None}
                best = min(pool, key=lambda n: pnodes[n]["median_s"])
                peer_time = r.get("median_s") or r.get("bound_s")
                ratio = peer_time / pnodes[best]["median_s"]
                ratio_cell = ("≥ " if r.get("gave_up") else "") + f"{ratio:.3g}"
                summary.append(f"T={t_end:g}: {name} / {best} = {ratio_cell}"
                               + (" (extrapolated lower bound)" if r.get("gave_up") else "")
                               + ("" if eligible else " (no pnode variant as accurate; vs the most accurate)"))
            else:
                ratio_cell = ""
            steps = r.get("steps")
            steps_cell = "" if steps is None else str(steps)
            if r.get("rejected"):
                steps_cell += f" ({r['rejected']} rej)"
            if steps is None and r.get("f_evals") is not None:
                steps_cell = f"~{r['f_evals'] // 6}"   # dopri5: 6 new evals per step (FSAL)
            rows.append([f"{t_end:g}", name, status, time_cell, fmt(r.get("fwd_s")), fmt(r.get("bwd_s")),
                         steps_cell, fmt(r.get("f_evals"), "d"),
                         fmt(r.get("vjp_evals", r.get("bwd_evals")), "d"),
                         fmt(r.get("newton"), "d"), fmt(r.get("jacobians"), "d"),
                         fmt(r.get("error_rel"), ".2e"),
                         (f"{ratio_cell} (vs {best.removeprefix('pnode ')})" if best else ""),
                         "n/a" if in_process else f"{r['peak_rss_growth'] / 2**20:.1f}"])
    return rows, summary


def scan_part(args, in_process: bool) -> tuple[list[list], list[str]]:
    rows, notes = [], []
    for jacobian in ("batched", "matrix_free"):
        skip = False
        for batch in args.scan_batches:
            if jacobian == "matrix_free" and batch > args.mf_max_batch:
                skip = True
            if skip:
                rows.append([jacobian, batch, "skipped (--mf-max-batch)" if batch > args.mf_max_batch
                             else "skipped (smaller batch timed out)"])
                continue
            print(f"scan {jacobian} / batch {batch} ...", flush=True)
            child_args = ["--scan", "--batch", str(batch), "--jacobian", jacobian, "--t-end", repr(args.t_scan),
                          "--threads", str(args.threads)]
            r = run(args, child_args, in_process, timeout=args.mf_cap_s if jacobian == "matrix_free"
                    else args.child_timeout)
            print("   ", {k: v for k, v in r.items() if k != "final"}, flush=True)
            RAW.append({"part": "scan", "t_end": args.t_scan, "jacobian": jacobian, "batch": batch, **r})
            if "error" in r:
                rows.append([jacobian, batch, str(r["error"])[:60]])
                skip = skip or bool(r.get("timeout"))
                continue
            steps = r["steps"] + r["rejected"]
            rows.append([jacobian, batch, f"{r['steps']} ({r['rejected']} rej)", r["newton"], r["krylov"],
                         f"{r['newton'] / steps:.2f}", f"{r['krylov'] / max(r['newton'], 1):.2f}",
                         fmt(r["jvp_evals"], "d"), f"{r['fwd_s'] / steps * 1e3:.1f}",
                         f"{r['bwd_s'] / r['steps'] * 1e3:.1f}", f"{r['fwd_s'] / steps / batch * 1e6:.0f}"])
    notes.append("Newton/step and Krylov/Newton count forward-solve iterations over all steps tried (accepted + "
                 "rejected); ms/step: forward time over steps tried, backward time over accepted steps.")
    return rows, notes


def diffrax_available() -> str | None:
    """None when jax, diffrax and equinox import; otherwise why not."""
    import importlib.util

    missing = [m for m in ("jax", "diffrax", "equinox") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)} (pip install -e '.[benchmarks]')" if missing else None


def diffrax_part(args, in_process: bool) -> tuple[list[list], list[str]]:
    rows, notes = [], []
    why = diffrax_available()
    if why:
        return [["", "", "skipped: " + why]], notes
    for t_end in args.horizons:
        for batch in args.batches:
            print(f"reference (Radau, rtol 1e-12) at T={t_end:g}, batch {batch} ...", flush=True)
            ref = reference(batch, t_end)
            print(f"diffrax vs pnode: T={t_end:g}, batch {batch} ...", flush=True)
            child_args = ["--diffrax-cell", "--batch", str(batch), "--t-end", repr(t_end),
                          "--repeats", str(args.repeats), "--threads", str(args.threads)] + (
                          ["--trace"] if args.trace else [])
            r = run(args, child_args, in_process, timeout=args.child_timeout)
            RAW.append({"part": "diffrax", "t_end": t_end, "batch": batch, **r})
            print("   ", {k: v for k, v in r.items() if not k.endswith("final")}, flush=True)
            if "error" in r:
                rows.append([f"{t_end:g}", batch, "failed: " + str(r["error"])[:70]])
                continue
            d_err, p_err = rel_error(r["diffrax_final"], ref), rel_error(r["pnode_final"], ref)
            r.update(diffrax_error_rel=d_err, pnode_error_rel=p_err)
            tried = r["steps"] + r["rejected"]
            mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
            rows.append([f"{t_end:g}", batch, f"{r['diffrax_s']:.3g}", f"{r['pnode_s']:.3g}",
                         f"{r['pnode_s'] / r['diffrax_s']:.2f}", f"{r['diffrax_compile_s']:.1f}",
                         f"{d_err:.2e}", f"{p_err:.2e}",
                         f"{r['diffrax_accepted_mean']:.0f} / {r['diffrax_accepted_max']} "
                         f"({r['diffrax_rejected_mean']:.0f} rej)",
                         f"{r['steps']} ({r['rejected']} rej)", f"{r['newton'] / tried:.2f}",
                         f"{r['krylov'] / tried:.2f}", f"{mib(r['diffrax_peak'])} / {mib(r['pnode_peak'])}",
                         f"{r['loss_rel_diff']:.1e}", f"{r['grad_rel_diff']:.1e}"])
    notes.append(
        "One training step (loss + gradient) at fixed initial parameters, the same in both (copied from the "
        f"torch model); s/iter: median of {args.repeats} timed steps per library, alternating diffrax and pnode "
        "in one process after one untimed step each; compile s: jax.jit(...).lower().compile() of the "
        "step, apart. diffrax: Kvaerno5, PIDController(rtol, atol) (default coefficients), SaveAt(ts), "
        "RecursiveCheckpointAdjoint, jax.vmap over samples (each sample has its own steps); pnode: arkimex4, "
        "jacobian 'batched', one step size for the whole batch. rel err: max over samples and species of "
        "|y(T) - y_ref(T)| / |y_ref(T)| against scipy Radau (rtol 1e-12, atol 1e-22, block-diagonal exact "
        "Jacobian). diffrax steps: accepted per sample, mean / max, and mean rejected. Newton/step and "
        "Krylov/step: pnode's forward iterations over all steps tried (accepted + rejected). peak MiB: growth "
        "of the process's peak RSS over one timed step (the mark reset before each; max over steps). "
        "loss / grad diff: |L_diffrax - L_pnode| / |L_pnode| and ||g_diffrax - g_pnode|| / ||g_pnode|| over "
        "all parameters: the two discretizations of the same model at rtol "
        f"{RTOL:g}.")
    return rows, notes


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--diffrax-cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to run (default: all): train = pnode vs explicit PyTorch peers at "
                             "--batch; scan = Newton/Krylov vs batch size; diffrax = pnode vs diffrax Kvaerno5 "
                             "over --horizons x --batches")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 64, 256, 1024],
                        help="batch sizes of the diffrax part")
    parser.add_argument("--horizons", nargs="+", type=float, default=[1.0, 1000.0],
                        help="horizons T of the diffrax part")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jacobian", default="batched", help=argparse.SUPPRESS)
    parser.add_argument("--t-end", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, fewer variants, everything in this process (no peak-memory column)")
    parser.add_argument("--batch", type=int, default=4, help="initial conditions in the training step")
    parser.add_argument("--t-short", type=float, default=1.0, help="horizon the explicit peers finish")
    parser.add_argument("--t-long", type=float, default=1e3, help="horizon where explicit peers are capped")
    parser.add_argument("--t-scan", type=float, default=1.0, help="horizon of the batch-size scan")
    parser.add_argument("--scan-batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16, 256, 1024])
    parser.add_argument("--mf-max-batch", type=int, default=16, help="largest batch tried with matrix_free")
    parser.add_argument("--mf-cap-s", type=float, default=120.0, help="wall-time cap of one matrix_free scan run")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per variant (at most)")
    parser.add_argument("--budget-s", type=float, default=12.0,
                        help="stop repeating a variant once its timed steps took this long (at least one)")
    parser.add_argument("--cap-s", type=float, default=20.0, help="wall-time cap of one explicit-peer step")
    parser.add_argument("--max-steps", type=int, default=200_000, help="step cap (explicit peers: ~7 evals/step)")
    parser.add_argument("--child-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--trace", action="store_true",
                        help="part diffrax: pnode with options['trace'] (func's torch.jit.trace for no-grad calls)")
    args, _ = parser.parse_known_args(argv)
    return args


def main() -> None:
    args = parse()
    if args.child:
        print(json.dumps(dispatch(args)))
        return
    if args.quick:
        args.batch, args.t_short, args.t_long, args.t_scan = 2, 1e-2, 1.0, 1e-2
        args.scan_batches, args.mf_max_batch, args.mf_cap_s = [1, 16, 256], 1, 30.0
        args.repeats, args.cap_s, args.budget_s = 1, 2.0, 5.0
        args.batches, args.horizons = [4], [1.0]
        if not args.threads:
            args.threads = 1
    variants = QUICK_VARIANTS if args.quick else list(VARIANTS)
    in_process = args.quick
    started = time.perf_counter()
    command = "python benchmarks/stiff.py " + " ".join(sys.argv[1:])
    sections = []
    if "train" in args.parts:
        train_rows, summary = train_part(args, variants, in_process)
        train_header = ["T", "variant", "status", "s/iter (median)", "fwd s", "bwd s", "steps", "f evals (fwd)",
                        "VJPs / bwd evals", "Newton", "J asm", "rel err y(T)", "peer / pnode", "peak MiB"]
        notes = (
            f"Robertson kinetics + MLP rate correction, batch {args.batch}, {N_OUT} output times log-spaced to "
            f"T; one training step (forward + backward) per iteration; rtol {RTOL:g}, atol {ATOL:g} unless "
            "named; pnode Jacobian 'batched'. rel err: max over samples and species of |y(T) - y_ref(T)| / "
            "|y_ref(T)|, y_ref from scipy Radau (rtol 1e-12, atol 1e-22) on the same model. peer / pnode: the "
            "peer's time over the fastest pnode variant at least as accurate. Explicit peers are stopped at "
            f"{args.cap_s:g}s or {args.max_steps} steps; '>= X s (extrap.)' is their forward time extrapolated "
            "linearly in t from where they stopped (a lower bound: the stable step shrinks as t grows, and the "
            "backward pass is not counted). 'VJPs / bwd evals': pnode's vector-Jacobian products (forward + "
            "backward); torchdiffeq adjoint's f evals in the backward solve; direct backprop peers have none.\n"
            "torchdiffeq 0.2.5 has no usable implicit method: 'implicit_adams' is a fixed-grid Adams-Moulton "
            "corrector solved by at most 4 fixed-point (functional) iterations, which converge only when "
            "h*|lambda| is below ~1, so its stability limit is explicit-like; 'scipy_solver' (Radau/BDF through "
            "scipy) is forward-only (no gradients). torchode 1.0.1 has only explicit steppers (Euler, Heun, "
            "Dopri5, Tsit5).\n" + "\n".join(summary))
        sections.append("### pnode vs explicit PyTorch peers\n\n" + table_text(train_header, pad(
            train_rows, len(train_header))) + "\n\n" + notes)
    if "scan" in args.parts:
        scan_rows, scan_notes = scan_part(args, in_process)
        scan_header = ["jacobian", "batch", "steps", "Newton", "Krylov", "Newton/step", "Krylov/Newton", "JVPs",
                       "fwd ms/step", "bwd ms/step", "fwd us/step/sample"]
        sections.append(f"### Newton / Krylov iterations vs batch size (pnode arkimex4, T={args.t_scan:g}, rtol "
                        f"{RTOL:g}, one training step; distinct initial conditions)\n\n"
                        + table_text(scan_header, pad(scan_rows, len(scan_header))) + "\n\n" + " ".join(scan_notes))
    if "diffrax" in args.parts:
        peer_rows, peer_notes = diffrax_part(args, in_process)
        peer_header = ["T", "batch", "diffrax s/iter", "pnode s/iter", "pnode / diffrax", "diffrax compile s",
                       "diffrax rel err", "pnode rel err", "diffrax steps/sample", "pnode steps", "Newton/step",
                       "Krylov/step", "peak MiB diffrax / pnode", "loss diff", "grad diff"]
        traced = " (pnode with options['trace'])" if args.trace else ""
        sections.append(f"### pnode arkimex4 vs diffrax Kvaerno5 (JAX), training step{traced}\n\n"
                        + table_text(peer_header, pad(peer_rows, len(peer_header))) + "\n\n" + " ".join(peer_notes))
    load = os.getloadavg()
    footer = (f"torch threads: {args.threads or 'default'}; load average (1/5/15 min) at the end: "
              f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; total {time.perf_counter() - started:.0f}s; "
              f"command: {command}")
    print(f"load average (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "stiff.json"), "w") as f:
        json.dump({"command": command, "load": load, "results": RAW}, f, indent=1)
    text = "\n\n".join(sections + [footer]) + "\n"
    path = os.path.join(results_dir, "stiff.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"(written to {path})")


def pad(rows: list[list], n: int) -> list[list]:
    return [list(r) + [""] * (n - len(r)) for r in rows]


def table_text(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


if __name__ == "__main__":
    main()

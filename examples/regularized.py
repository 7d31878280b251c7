"""Local error regularization (Pal, Edelman & Rackauckas 2023): models trained with and without it.

``--task digits`` (default): an ODE-block classifier on scikit-learn's 8x8 digits (shipped with the
package; the split of examples/classify_digits.py, 1437 train / 360 test images, pixels flattened): a
linear stem 64 -> 32, a ``pnode.nn.ODEBlock`` with dz/dt = MLP(z, t) on [0, 1] (dopri5, rtol 1e-5,
atol 1e-7), a linear head to 10 logits; cross-entropy, Adam, batches of 128 for 20 epochs; trained
twice from the same initialization on the same batches, once with
``w(it) * pnode.local_error_regularizer(block.solver, t, ys)`` added to the loss (``ys`` the block's
output at ``t = [0, 1]``).  The loss uses the state at t1 only, so the adaptive solver chooses every
step: the regularizer can change the step count, as in the paper's classifiers.  At prediction (a
fresh block per model on the held-out images, the two timed in alternation) it reports f evaluations
per solve, steps and the median wall time, the held-out cross-entropy and accuracy, the final training
cross-entropy and the training time.
Measured here (seeds 0-3, weight 0.5, load average 4-7): 51 -> 33 f evals per prediction solve
(0.65x; 8 -> 5 steps) for every seed, prediction time 0.64-0.68x, held-out cross-entropy 0.56-1.01x of
the plain model's; ``--weight 1``: 0.53x evaluations at 0.79x the cross-entropy; ``--mode biased``:
0.76x at 0.56x.

``--task latent``: the latent ODE of examples/latent_ode.py (irregularly sampled spirals, GRU
encoder, latent dynamics solved by pnode, VAE loss), trained twice from the same initialization on the
same batches, once with ``w(it) * pnode.local_error_regularizer(model.solver, t, latent path)`` added to
the loss.  At prediction (held-out trajectories, posterior means) the latent ODE is solved from z0 to
t = 10 with outputs at --predict-points times (default 5: a forecast at a few horizons, so the steps
are the adaptor's choice), and also on the full 41-point grid (where the output times force the
steps: pnode's outputs are step boundaries, never interpolated).  Reported side by side: f evaluations
per prediction solve (``solver.stats.rhs_evals``), its wall time (median of --repeats), the test
interpolation / extrapolation MSE and the final training loss.

``--task spiral``: the spiral of examples/spiral.py (data dy/dt = y**3 A; model dy/dt = MLP(y**3);
batches of short random windows, L1 loss), trained twice the same way, Adam's learning rate divided by
10 after the --anneal fraction of the iterations; prediction: the whole trajectory from y(0) with
outputs at --predict-points times on [0, 25], and the L1 error on the 1000-point data grid.

``--task twist``: a 2-D map x(1) = T(x(0)) fitted at t = 1 (dx/dt = MLP(x, t), MSE).

Every task: the regularized run adds ``w(it) * reg``, the weight decaying from --weight to 0 over the
first --decay fraction of the iterations (cosine schedule), so the regularizer shapes the dynamics
early and the data term has the last word.  The table is printed and written to
``<out>/regularized.txt``, the predictions and loss curves to ``<out>/regularized.png``.

    python examples/regularized.py --out outputs                 # digits classifier
    python examples/regularized.py --task latent --out outputs   # latent ODE
    python examples/regularized.py --task spiral --out outputs
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

import pnode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spiral  # noqa: E402 - the data and model of examples/spiral.py

# the rows every task's table starts with: the prediction solve's cost
PREDICTION_ROWS = [("f evals per prediction solve", "rhs_evals", "{:d}"),
                   ("steps per prediction solve", "steps", "{:d}"), ("prediction wall time [ms]", "wall", "{:.2f}")]


def weight_at(it: int, iters: int, weight: float, decay: float) -> float:
    """Cosine decay from ``weight`` at iteration 1 to 0 at ``decay * iters``, then 0."""
    end = max(1, int(decay * iters))
    return 0.0 if it > end else weight * 0.5 * (1 + math.cos(math.pi * (it - 1) / end))


def regularized(loss, args, it: int, weight: float, solver, t, ys, samples):
    """``loss + w(it) * regularizer`` and the regularizer (``None`` while the weight is 0)."""
    w = weight_at(it, args.iters, weight, args.decay)
    if w == 0:
        return loss, None, w
    reg = pnode.local_error_regularizer(solver, t, ys, mode=args.mode, samples=args.samples, generator=samples)
    return loss + w * reg, reg, w


def shown(reg) -> str:
    return "" if reg is None else f"  regularizer {float(reg.detach()):.3e}"


def train_spiral(args, t, y, weight: float, label: str):
    torch.manual_seed(args.seed)
    func = spiral.ODEFunc()
    optimizer = torch.optim.Adam(func.parameters(), lr=args.lr)
    solver = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
    batches = torch.Generator().manual_seed(args.seed)       # same windows in both runs
    samples = torch.Generator().manual_seed(args.seed + 1)   # times of the regularizer
    start, losses = time.perf_counter(), []
    for it in range(1, args.iters + 1):
        if it == int(args.anneal * args.iters) + 1:    # a smaller step for the last part: a converged fit
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.1
        optimizer.zero_grad()
        batch_y0, batch_t, batch_y = spiral.get_batch(t, y, args.batch_time, args.batch_size, batches)
        pred = solver(batch_y0, batch_t)
        loss = (pred - batch_y).abs().mean()
        total, reg, w = regularized(loss, args, it, weight, solver, batch_t, pred, samples)
        total.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if it % args.log_every == 0 or it == args.iters:
            print(f"{label:>11} iter {it:4d}  loss {loss.item():.4e}  weight {w:8.3g}{shown(reg)}  "
                  f"steps {solver.stats.steps:3d}  {time.perf_counter() - start:6.1f}s", flush=True)
    return func, losses, time.perf_counter() - start


@torch.no_grad()
def predict_spiral(args, func, t, y, y0):
    """Prediction cost and error: f evaluations and wall time of a solve with outputs at
    ``--predict-points`` times, and the L1 error on the data grid (a separate solve)."""
    solver = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
    coarse = torch.linspace(float(t[0]), float(t[-1]), args.predict_points, dtype=t.dtype)
    walls = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        solver(y0, coarse)
        walls.append(time.perf_counter() - begin)
    evals, steps = solver.stats.rhs_evals, solver.stats.steps
    full = solver(y0, t)
    error = float((full - y).abs().mean())
    return {"rhs_evals": evals, "steps": steps, "wall": 1e3 * statistics.median(walls), "loss": error,
            "prediction": full}


def run_spiral(args):
    t, y0, y = spiral.make_data(n_times=args.n_times)
    results = {}
    for label, weight in (("plain", 0.0), ("regularized", args.weight)):
        func, losses, seconds = train_spiral(args, t, y, weight, label)
        results[label] = {**predict_spiral(args, func, t, y, y0), "train": seconds, "final_batch_loss": losses[-1],
                          "losses": losses}
    rows = [*PREDICTION_ROWS, ("whole-trajectory L1 error", "loss", "{:.4e}"),
            ("final batch loss", "final_batch_loss", "{:.4e}"), ("training time [s]", "train", "{:.1f}")]
    title = (f"spiral neural ODE, {args.method} rtol {args.rtol:g} atol {args.atol:g}, {args.iters} iterations, "
             f"prediction outputs {args.predict_points}")

    def draw(ax, label):
        pred = results[label]["prediction"]
        ax.plot(y[:, 0, 0], y[:, 0, 1], "g-", label="data")
        ax.plot(pred[:, 0, 0], pred[:, 0, 1], "b--", label="model")
        ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2))

    return results, rows, title, draw


def run_latent(args):
    import latent_ode

    g = torch.Generator().manual_seed(args.seed)
    train_set = latent_ode.make_spirals(args.train, generator=g)
    test_set = latent_ode.make_spirals(args.test, generator=g)
    results = {}
    for label, weight in (("plain", 0.0), ("regularized", args.weight)):
        torch.manual_seed(args.seed)
        model = latent_ode.LatentODE(args.latent, rtol=args.rtol, atol=args.atol, method=args.method).double()
        samples = torch.Generator().manual_seed(args.seed + 1)

        def regularizer(model, t, it, weight=weight, samples=samples):
            w = weight_at(it, args.iters, weight, args.decay)
            if w == 0:
                return 0.0
            return w * pnode.local_error_regularizer(model.solver, t, model.last_solution, mode=args.mode,
                                                     samples=args.samples, generator=samples)

        losses, seconds = latent_ode.train(model, train_set, iters=args.iters, batch=args.batch, lr=args.lr,
                                           seed=args.seed, label=label, log_every=args.log_every,
                                           extra_loss=regularizer)
        interp, extrap, pred = latent_ode.evaluate(model, test_set)
        dense_evals = model.predictor.stats.rhs_evals
        window = test_set.n_observed_times
        with torch.no_grad():
            mean, _ = model.encoder(test_set.t[:window], test_set.noisy[:, :window], test_set.mask[:, :window])
            solver = pnode.ODESolver(model.dynamics, method=args.method, rtol=args.rtol, atol=args.atol)
            horizons = torch.linspace(0.0, float(test_set.t[-1]), args.predict_points, dtype=torch.float64)
            walls = []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                solver(mean, horizons)
                walls.append(time.perf_counter() - begin)
        results[label] = {"rhs_evals": solver.stats.rhs_evals, "steps": solver.stats.steps,
                          "wall": 1e3 * statistics.median(walls), "dense_evals": dense_evals,
                          "interp": interp, "extrap": extrap, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                          "train": seconds, "losses": losses, "prediction": pred}
    rows = [*PREDICTION_ROWS,
            ("f evals, 41-point grid solve", "dense_evals", "{:d}"),
            ("test interpolation MSE", "interp", "{:.4e}"), ("test extrapolation MSE", "extrap", "{:.4e}"),
            ("final -ELBO/T (last 20 its)", "final_loss", "{:.4f}"), ("training time [s]", "train", "{:.1f}")]
    title = (f"latent ODE, {args.method} rtol {args.rtol:g} atol {args.atol:g}, {args.iters} iterations, "
             f"{args.test} test trajectories, prediction outputs {args.predict_points}")

    def draw(ax, label):
        truth, m = test_set.truth[0], test_set.mask[0].bool()
        pred = results[label]["prediction"][0]
        ax.plot(truth[:, 0], truth[:, 1], color="0.6", label="truth")
        ax.plot(test_set.noisy[0, m, 0], test_set.noisy[0, m, 1], "k.", label="observed")
        ax.plot(pred[:, 0], pred[:, 1], "b--", label="model")
        ax.set(aspect="equal")

    return results, rows, title, draw


class DigitsField(torch.nn.Module):
    """dz/dt = MLP(z, t) on the hidden features of the digits classifier."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(hidden + 1, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, hidden))

    def forward(self, t, z):
        return self.net(torch.cat([z, t.expand(z.shape[0], 1)], dim=1))


class DigitsClassifier(torch.nn.Module):
    """Flattened 8x8 image -> linear stem -> ``pnode.nn.ODEBlock`` on [0, 1] -> linear head (10 logits)."""

    def __init__(self, hidden: int, width: int, method: str, rtol: float, atol: float):
        super().__init__()
        self.stem = torch.nn.Linear(64, hidden)
        self.block = pnode.nn.ODEBlock(DigitsField(hidden, width), method=method, rtol=rtol, atol=atol)
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x, t=None):
        """Logits; with ``t`` (the block's integration time) also the block's trajectory (for the
        regularizer, which needs the solver's output rows)."""
        if t is None:
            return self.head(self.block(self.stem(x)))
        ys = self.block(self.stem(x), t)
        return self.head(ys[-1]), ys


def run_digits(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import classify_digits

    x_train, y_train, x_test, y_test = classify_digits.load_data(args.seed, torch.float64)
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    if args.train_subset:
        x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
    cross_entropy = torch.nn.functional.cross_entropy
    per_epoch = math.ceil(len(x_train) / args.batch)
    args.iters = args.epochs * per_epoch            # what the weight schedule counts
    results, models = {}, {}
    for label, weight in (("plain", 0.0), ("regularized", args.weight)):
        torch.manual_seed(args.seed)
        model = DigitsClassifier(args.hidden, args.width, args.method, args.rtol, args.atol).double()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        batches = torch.Generator().manual_seed(args.seed)       # same batches in both runs
        samples = torch.Generator().manual_seed(args.seed + 1)   # times of the regularizer
        t = model.block.integration_time()
        losses, evals, it, start = [], [], 0, time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            order = torch.randperm(len(x_train), generator=batches)
            for idx in order.split(args.batch):
                it += 1
                optimizer.zero_grad()
                logits, ys = model(x_train[idx], t)
                loss = cross_entropy(logits, y_train[idx])
                evals.append(model.block.nfe)
                total, reg, w = regularized(loss, args, it, weight, model.block.solver, t, ys, samples)
                total.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            if epoch % args.log_every == 0 or epoch == args.epochs:
                print(f"{label:>11} epoch {epoch:3d}  batch loss {losses[-1]:.4e}  weight {w:8.3g}{shown(reg)}  "
                      f"f evals {evals[-1]:4d}  {time.perf_counter() - start:6.1f}s", flush=True)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            test_logits, train_logits = model(x_test), model(x_train)
        results[label] = {"loss": float(cross_entropy(test_logits, y_test)),
                          "accuracy": float((test_logits.argmax(1) == y_test).double().mean()),
                          "final_loss": float(cross_entropy(train_logits, y_train)), "train": seconds,
                          "losses": losses, "evals": evals, "train_evals": sum(evals) / len(evals)}
        models[label] = model
    # prediction: a fresh block per model on the held-out images, the two timed in alternation so
    # that other jobs on the machine slow both alike
    predictors = {label: pnode.nn.ODEBlock(m.block.func, method=args.method, rtol=args.rtol, atol=args.atol)
                  for label, m in models.items()}
    walls = {label: [] for label in models}
    with torch.no_grad():
        features = {label: m.stem(x_test) for label, m in models.items()}
        for _ in range(args.repeats):
            for label, predictor in predictors.items():
                begin = time.perf_counter()
                predictor(features[label])
                walls[label].append(time.perf_counter() - begin)
    for label, predictor in predictors.items():
        results[label].update(rhs_evals=predictor.nfe, steps=predictor.stats.steps,
                              wall=1e3 * statistics.median(walls[label]))
    rows = [*PREDICTION_ROWS, ("test cross-entropy", "loss", "{:.4f}"),
            ("test accuracy", "accuracy", "{:.4f}"), ("train cross-entropy (final)", "final_loss", "{:.4f}"),
            ("mean f evals per training solve", "train_evals", "{:.1f}"), ("training time [s]", "train", "{:.1f}")]
    title = (f"digits ODE-block classifier (64 -> {args.hidden} -> ODE -> 10), {args.method} rtol {args.rtol:g} "
             f"atol {args.atol:g}, {args.epochs} epochs of batch {args.batch} ({args.iters} iterations), "
             f"{len(x_train)} train / {len(x_test)} test images")

    def draw(ax, label):
        ts = predictors[label].step_times
        ax.step(ts[1:].numpy(), (ts[1:] - ts[:-1]).numpy(), where="pre", marker="o", label="held-out solve")
        ax.set(xlabel="t", ylabel="accepted step size", xlim=(0, 1))

    return results, rows, title, draw


class TwistField(torch.nn.Module):
    """dx/dt = MLP(x, t) for the endpoint task."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                       torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()

    def forward(self, t, x):
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))


def twist(x: torch.Tensor) -> torch.Tensor:
    """The target map: points rotated by an angle that falls from 2.5 rad at the centre to 0 at radius 1.5."""
    angle = 2.5 * torch.clamp(1 - x.norm(dim=1) / 1.5, min=0.0)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], dim=1)


def run_twist(args):
    g = torch.Generator().manual_seed(args.seed)
    x_train = 2 * torch.rand(args.train, 2, generator=g, dtype=torch.float64) - 1
    x_test = 2 * torch.rand(args.test, 2, generator=g, dtype=torch.float64) - 1
    y_train, y_test = twist(x_train), twist(x_test)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    results = {}
    for label, weight in (("plain", 0.0), ("regularized", args.weight)):
        torch.manual_seed(args.seed)
        func = TwistField()
        solver = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
        optimizer = torch.optim.Adam(func.parameters(), lr=args.lr)
        samples = torch.Generator().manual_seed(args.seed + 1)
        losses, evals, start = [], [], time.perf_counter()
        for it in range(1, args.iters + 1):
            optimizer.zero_grad()
            ys = solver(x_train, t)
            loss = (ys[-1] - y_train).square().mean()
            evals.append(solver.stats.rhs_evals)
            total, reg, w = regularized(loss, args, it, weight, solver, t, ys, samples)
            total.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if it % args.log_every == 0 or it == args.iters:
                print(f"{label:>11} iter {it:4d}  mse {losses[-1]:.4e}  weight {w:8.3g}{shown(reg)}  "
                      f"f evals {evals[-1]:4d}  {time.perf_counter() - start:6.1f}s", flush=True)
        seconds = time.perf_counter() - start
        predictor = pnode.ODESolver(func, method=args.method, rtol=args.rtol, atol=args.atol)
        walls = []
        with torch.no_grad():
            for _ in range(args.repeats):
                begin = time.perf_counter()
                pred = predictor(x_test, t)[-1]
                walls.append(time.perf_counter() - begin)
        results[label] = {"rhs_evals": predictor.stats.rhs_evals, "steps": predictor.stats.steps,
                          "wall": 1e3 * statistics.median(walls), "loss": float((pred - y_test).square().mean()),
                          "final_loss": sum(losses[-20:]) / len(losses[-20:]), "train": seconds,
                          "losses": losses, "prediction": pred}
    rows = [*PREDICTION_ROWS, ("test MSE", "loss", "{:.4e}"),
            ("final train MSE (last 20 its)", "final_loss", "{:.4e}"), ("training time [s]", "train", "{:.1f}")]
    title = (f"twist map x(1) = T(x(0)), {args.method} rtol {args.rtol:g} atol {args.atol:g}, {args.iters} "
             f"iterations, {args.train} train / {args.test} test points")

    def draw(ax, label):
        pred = results[label]["prediction"]
        ax.scatter(y_test[:, 0], y_test[:, 1], s=3, c="0.6", label="target")
        ax.scatter(pred[:, 0], pred[:, 1], s=3, c=x_test[:, 0], cmap="coolwarm", label="model")
        ax.set(aspect="equal")

    return results, rows, title, draw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits", choices=["digits", "latent", "spiral", "twist"])
    parser.add_argument("--iters", type=int, default=None,
                        help="default: 500 (latent), 600 (spiral), 400 (twist); digits counts --epochs")
    parser.add_argument("--weight", type=float, default=None, help="initial weight of the regularizer")
    parser.add_argument("--decay", type=float, default=0.75, help="fraction of iterations the weight decays over")
    parser.add_argument("--mode", default="unbiased", choices=["unbiased", "biased"])
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--rtol", type=float, default=None, help="default: 1e-5 (digits), 1e-4 (latent), 1e-6 (spiral)")
    parser.add_argument("--atol", type=float, default=None, help="default: 1e-7 (digits), 1e-5 (latent), 1e-8 (spiral)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--anneal", type=float, default=0.75,
                        help="spiral: lr drops 10x after this fraction of iterations")
    parser.add_argument("--predict-points", type=int, default=None, help="default: 5 (latent), 26 (spiral)")
    parser.add_argument("--repeats", type=int, default=None, help="timed prediction solves (default 5; digits 21)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=None, help="iterations (digits: epochs) between logs")
    # digits task
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32, help="digits: features the ODE block integrates")
    parser.add_argument("--width", type=int, default=64, help="digits: hidden width of the vector field's MLP")
    parser.add_argument("--train-subset", type=int, default=0, help="digits: use only this many training images")
    # latent task
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="default: 128 (digits), 64 (latent)")
    parser.add_argument("--latent", type=int, default=4)
    # spiral task
    parser.add_argument("--batch-time", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--n-times", type=int, default=1000)
    parser.add_argument("--out", default="outputs")
    args, _petsc_args = parser.parse_known_args(argv)
    common = {"repeats": 5, "log_every": 100, "batch": 64}
    defaults = {"digits": {"weight": 0.5, "rtol": 1e-5, "atol": 1e-7, "predict_points": 2, "repeats": 21,
                           "log_every": 5, "batch": 128},
                "latent": {"iters": 500, "weight": 100.0, "rtol": 1e-4, "atol": 1e-5, "predict_points": 5},
                "spiral": {"iters": 600, "weight": 100.0, "rtol": 1e-6, "atol": 1e-8, "predict_points": 26},
                "twist": {"iters": 400, "weight": 10.0, "rtol": 1e-5, "atol": 1e-7, "predict_points": 2}}
    for name, value in {**common, **defaults[args.task]}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    tasks = {"digits": run_digits, "latent": run_latent, "spiral": run_spiral, "twist": run_twist}
    results, rows, title, draw = tasks[args.task](args)

    plain, reg = results["plain"], results["regularized"]
    lines = [title + f"; regularizer weight {args.weight:g} (cosine decay over {args.decay:.0%} of the iterations),"
             f" mode {args.mode}, {args.samples} sample(s)",
             f"{'':<32} {'plain':>12} {'regularized':>12} {'ratio':>8}"]
    for name, key, fmt in rows:
        a, b = plain[key], reg[key]
        ratio = b / a if a else float("nan")
        lines.append(f"{name:<32} {fmt.format(a):>12} {fmt.format(b):>12} {ratio:8.3f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines.append(f"load average {load:.2f}")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(args.out, "regularized.txt"), "w") as fh:
        fh.write(table + "\n")
    plot(os.path.join(args.out, "regularized.png"), results, draw)
    print(f"table written to {os.path.join(args.out, 'regularized.txt')}, plot to "
          f"{os.path.join(args.out, 'regularized.png')}")
    return results


def plot(path, results, draw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_evals = all("evals" in r for r in results.values())    # f evals of every training solve
    fig, axes = plt.subplots(1, 3 + with_evals, figsize=(5 * (3 + with_evals), 4.5))
    for ax, label in zip(axes[:2], ("plain", "regularized")):
        draw(ax, label)
        ax.set_title(f"{label}: {results[label]['rhs_evals']} f evals per prediction solve")
        ax.legend(fontsize=8)
    for label in ("plain", "regularized"):
        axes[2].semilogy(results[label]["losses"], label=label)
        if with_evals:
            axes[3].plot(results[label]["evals"], label=label)
    axes[2].set(title="training loss", xlabel="iteration")
    axes[2].legend(fontsize=8)
    if with_evals:
        axes[3].set(title="f evals per training solve", xlabel="iteration")
        axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()

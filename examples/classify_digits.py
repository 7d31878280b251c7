"""Classify scikit-learn's 8x8 handwritten digits with a convolutional ODE block (continuous depth).

Data: ``sklearn.datasets.load_digits`` (1797 images shipped with scikit-learn, no download), split
80/20 stratified (1437 train, 360 test), pixels scaled to [0, 1].  Model: a conv stem (1 -> C channels),
a conv ODE block ``dh/dt = f(t, h)`` on [0, 1] (two 3x3 convolutions with the time as an extra input
channel, GroupNorm, tanh; ``pnode.nn.ODEBlock``, fixed-step RK4 by default) and a linear head.  Adam with
a cosine learning-rate schedule; the test accuracy is measured after every epoch.  The plot shows the
training loss, the test accuracy per epoch and the misclassified test digits.

    python examples/classify_digits.py --out outputs                 # one process, 20 epochs
    mpiexec -n 2 python -m pnode.cli examples/classify_digits.py --iterations 460 --log-every 23 \\
        -- --out outputs                                              # 2 ranks through pnode-train

Under ``pnode-train`` each rank takes its shard of every global batch; the ODE block's solve is
distributed (``comm=``), so pnode sums the ODE parameters' gradients over the ranks; the stem and head
are listed in ``TrainingTask.outside_params`` and the driver sums theirs.  An epoch is
``ceil(1437 / batch_size)`` iterations (23 at the default 64); pass ``--iterations epochs * 23``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

from pnode.distributed import shard
from pnode.nn import ODEBlock
from pnode.training import Trainer, TrainingTask


def load_data(seed: int = 0, dtype: torch.dtype = torch.float32):
    """(x_train, y_train, x_test, y_test) with images of shape (N, 1, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.images, digits.target, test_size=0.2,
                                                        stratify=digits.target, random_state=seed)
    as_images = lambda a: torch.tensor(a / 16.0, dtype=dtype).unsqueeze(1)  # noqa: E731
    return as_images(x_train), torch.tensor(y_train), as_images(x_test), torch.tensor(y_test)


class ConcatConv(nn.Module):
    """3x3 convolution of the feature map with the time appended as a constant channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        time_channel = t.to(h.dtype).expand(h.shape[0], 1, *h.shape[2:])
        return self.conv(torch.cat([h, time_channel], dim=1))


class ConvODEFunc(nn.Module):
    """dh/dt = conv(tanh(norm(conv(tanh(norm(h)))))): per-sample norms only (samples stay independent,
    so the batch can be sharded over MPI ranks)."""

    def __init__(self, channels: int):
        super().__init__()
        groups = min(4, channels)
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), ConcatConv(channels)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), ConcatConv(channels)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = self.conv1(t, torch.tanh(self.norm1(h)))
        return self.conv2(t, torch.tanh(self.norm2(h)))


class DigitClassifier(nn.Module):
    """Conv stem -> conv ODE block -> linear head (logits for 10 classes)."""

    def __init__(self, channels: int, block: ODEBlock):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.GroupNorm(min(4, channels), channels),
                                  nn.ReLU())
        self.block = block
        self.head = nn.Sequential(nn.GroupNorm(min(4, channels), channels), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(channels * 64, 10))

    def outside_params(self) -> list[torch.Tensor]:
        """Parameters used outside the ODE solve (their gradients are rank-local under MPI)."""
        return [*self.stem.parameters(), *self.head.parameters()]

    def forward(self, x: torch.Tensor, block: ODEBlock | None = None) -> torch.Tensor:
        return self.head((block or self.block)(self.stem(x)))


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image translated by a random whole number of pixels in [-max_shift, max_shift] per axis
    (zero fill)."""
    padded = F.pad(x, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator).tolist()
    size = x.shape[-1]
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(shifts)])


def parse(argv):
    parser = argparse.ArgumentParser(prog="classify_digits.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="epochs (length of the learning-rate schedule)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (sharded over the ranks)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--method", default="rk4")
    parser.add_argument("--step-size", type=float, default=0.25, help="fixed step (0: adaptive, --rtol)")
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's decoupled weight decay")
    parser.add_argument("--shift", type=int, default=1, help="augmentation: random shifts of up to this many pixels")
    parser.add_argument("--train-subset", type=int, default=0, help="use only this many training images (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: small convolutions gain little from more; 0: torch's)")
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--no-plot", action="store_true")
    args, _petsc_args = parser.parse_known_args(argv)   # the rest are PETSc options (-ts_monitor, ...)
    return args


def setup(argv, comm) -> TrainingTask:
    """The training task for ``pnode-train`` (and for :func:`main`, with ``comm=None``)."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                      # the same initial model on every rank
    x_train, y_train, x_test, y_test = load_data(args.seed)
    if args.train_subset:
        x_train, y_train = x_train[:args.train_subset], y_train[:args.train_subset]
    options = {"step_size": args.step_size} if args.step_size > 0 else None
    solver_settings = dict(method=args.method, rtol=args.rtol, atol=args.atol, options=options)
    func = ConvODEFunc(args.channels).float()   # float32: PETSc integrates in float64, casting at the boundary
    model = DigitClassifier(args.channels, ODEBlock(func, **solver_settings, comm=comm)).float()
    # rank 0 evaluates the test set alone (report runs on rank 0 only): a serial block, same field
    evaluation_block = ODEBlock(func, **solver_settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    batches_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * batches_per_epoch
    history: dict[str, list] = {"epoch": [], "accuracy": [], "seconds": []}
    started = time.perf_counter()

    def loss(iteration: int) -> torch.Tensor:
        epoch, index = divmod(iteration - 1, batches_per_epoch)
        # the permutation depends only on (seed, epoch): a resumed run draws exactly the same batches
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        batch = order[index * args.batch_size:(index + 1) * args.batch_size]
        progress = min(1.0, (iteration - 1) / max(1, total))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress))
        images = x_train[batch]
        if args.shift:   # the global batch is augmented identically on every rank, then sharded
            images = shift_augment(images, torch.Generator().manual_seed(args.seed * 104729 + iteration), args.shift)
        model.train()
        logits = model(shard(images, comm))
        # this rank's share of the global mean: sums over its shard / the global batch size
        return F.cross_entropy(logits, shard(y_train[batch], comm), reduction="sum") / len(batch)

    def report(iteration: int, losses: list[float]) -> None:
        predictions = predict(model, evaluation_block, x_test)
        accuracy = (predictions == y_test).double().mean().item()
        history["epoch"].append(iteration / batches_per_epoch)
        history["accuracy"].append(accuracy)
        history["seconds"].append(time.perf_counter() - started)
        print(f"           epoch {iteration / batches_per_epoch:5.2f}: test accuracy {100 * accuracy:.2f}% "
              f"({int((predictions != y_test).sum())} of {len(y_test)} wrong), ODE block "
              f"{model.block.stats.steps} steps, {model.block.nfe} f evals forward, "
              f"{model.block.nfe_backward} VJPs backward", flush=True)
        if not args.no_plot:          # every report: a job stopped early still leaves a current plot
            path = plot(args.out, losses, history, x_test, y_test, predictions, batches_per_epoch)
            print(f"           plot: {path}", flush=True)

    task = TrainingTask(model=model, optimizer=optimizer, loss=loss, solver=model.block.solver,
                        outside_params=model.outside_params(), report=report, report_every=batches_per_epoch)
    task.history = history                            # for main() and the tests
    task.total_iterations = total
    return task


@torch.no_grad()
def predict(model: DigitClassifier, block: ODEBlock, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch], block).argmax(1) for i in range(0, len(x), batch)])


def plot(out: str, losses, history, x_test, y_test, predictions, batches_per_epoch: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    wrong = (predictions != y_test).nonzero().flatten()
    fig = plt.figure(figsize=(13, 6.5))
    grid = fig.add_gridspec(3, 8)
    ax = fig.add_subplot(grid[:, :3])
    ax.semilogy(range(1, len(losses) + 1), losses, color="0.6", lw=0.8, label="batch")
    epochs = len(losses) // batches_per_epoch
    if epochs:
        means = torch.tensor(losses[:epochs * batches_per_epoch]).view(epochs, -1).mean(1)
        ax.semilogy([batches_per_epoch * (e + 1) for e in range(epochs)], means, "b-o", ms=3, label="epoch mean")
    ax.set(title="training loss (cross-entropy)", xlabel="iteration")
    ax.legend()
    ax = fig.add_subplot(grid[:, 3:5])
    ax.plot(history["epoch"], [100 * a for a in history["accuracy"]], "g-o", ms=3)
    ax.axhline(97, color="r", ls=":", lw=1, label="97%")
    ax.set(title=f"test accuracy (final {100 * history['accuracy'][-1]:.2f}%)", xlabel="epoch", ylabel="%",
           ylim=(max(0, min(100 * a for a in history["accuracy"]) - 2), 100.5))
    ax.legend(loc="lower right")
    for k, index in enumerate(wrong[:9].tolist()):
        ax = fig.add_subplot(grid[k // 3, 5 + k % 3])
        ax.imshow(x_test[index, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {int(y_test[index])}, said {int(predictions[index])}", fontsize=9)
        ax.axis("off")
    if len(wrong) == 0:
        ax = fig.add_subplot(grid[1, 5:])
        ax.text(0.5, 0.5, "no misclassified test digits", ha="center")
        ax.axis("off")
    fig.suptitle(f"pnode conv ODE block on sklearn digits: {len(wrong)} of {len(y_test)} test digits misclassified"
                 f"{' (the first 9 shown)' if len(wrong) > 9 else ''}")
    fig.tight_layout()
    path = os.path.join(out, "classify_digits.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    """Train in one process; returns the history (test accuracy per epoch) and the losses."""
    task = setup(argv, None)
    args = parse(argv)
    n_params = sum(p.numel() for p in task.model.parameters())
    print(f"training a {n_params}-parameter conv ODE classifier ({args.method}"
          f"{f', step {args.step_size:g}' if args.step_size > 0 else f', rtol {args.rtol:g}'}) for "
          f"{args.epochs} epochs ({task.total_iterations} iterations)", flush=True)
    start = time.perf_counter()
    trainer = Trainer(task, task.total_iterations, comm=None, log_every=task.report_every,
                      printer=lambda line: print(line, flush=True))
    trainer.run()
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f}s ({elapsed / args.epochs:.1f} s/epoch); final test accuracy "
          f"{100 * task.history['accuracy'][-1]:.2f}%")
    return {"history": task.history, "losses": trainer.log.losses, "seconds": elapsed}


if __name__ == "__main__":
    main()

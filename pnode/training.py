"""A resumable training loop for batch jobs: progress on rank 0, atomic checkpoints, stop on SIGTERM.

A training script describes one :class:`TrainingTask` (model, optimizer, this rank's loss for an
iteration, the generator its data sampling draws from); :class:`Trainer` runs it under ``mpiexec``:

* progress on rank 0: iteration, global loss, solver steps, seconds per iteration, ETA;
* a checkpoint every ``checkpoint_every`` iterations (model, optimizer, every RNG state of every rank,
  iteration, loss history), written by rank 0 to a temporary file and renamed over the old one, so a
  job killed while writing leaves the previous checkpoint intact;
* SIGTERM (what Slurm sends before a time limit or a pre-emption, and what ``mpiexec`` forwards to
  every rank) stops at the end of the current iteration on every rank together, after a checkpoint:
  ``resume=True`` then continues exactly where the run stopped, giving the same losses as a run that
  was never interrupted.

The loss a task returns is this rank's share of the global loss (e.g. its samples' sum divided by the
global batch size): pnode's gradient for the vector field's parameters is already the gradient of the
sum over ranks; parameters used outside pnode solves are listed in ``TrainingTask.outside_params`` and
their gradients summed here.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .distributed import allreduce_gradients, mpi_comm
from .errors import InvalidArgumentError

#: Exit status of a run that SIGTERM stopped after its checkpoint (128 + 15): requeue it with ``--resume``.
STOPPED_BY_SIGNAL = 143


@dataclass
class TrainingTask:
    """What a training script hands to :class:`Trainer` (``setup(argv, comm)`` returns one).

    Parameters
    ----------
    model : torch.nn.Module
        The model, replicated on every rank (same initial values everywhere: seed before building it).
    optimizer : torch.optim.Optimizer
        Its optimizer.
    loss : callable
        ``loss(iteration) -> Tensor``: this rank's share of the global loss for that iteration (1-based),
        e.g. its samples' summed error divided by the global batch size.  It must run the same pnode
        solves on every rank.
    generator : torch.Generator, optional
        The generator the data sampling draws from; saved and restored per rank with the checkpoint.
    solver : pnode.ODESolver, optional
        A solver whose step count the progress lines report.
    outside_params : sequence of torch.Tensor, optional
        Parameters used outside pnode solves (an encoder, a decoder), whose gradients are summed over
        the ranks before the optimizer step.  Do not list the vector field's parameters: pnode already
        returns their summed gradient.
    report : callable, optional
        ``report(iteration, losses)``, called on rank 0 every ``report_every`` iterations and at the end
        (plots, test errors).
    report_every : int, optional
        Iterations between ``report`` calls (0: only at the end).
    progress : callable, optional
        ``progress() -> str``, called on rank 0 for every progress line and appended to it (e.g. the
        error of learned physical constants).

    Examples
    --------
    >>> import torch, pnode
    >>> from pnode.training import TrainingTask
    >>> func = torch.nn.Linear(2, 2).double()
    >>> solver = pnode.ODESolver(lambda t, y: func(y), method="rk4", adjoint_params=tuple(func.parameters()))
    >>> y0 = torch.ones(4, 2, dtype=torch.float64)
    >>> t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    >>> task = TrainingTask(model=func, optimizer=torch.optim.SGD(func.parameters(), lr=0.1),
    ...                     loss=lambda iteration: solver(y0, t)[-1].pow(2).mean(), solver=solver)
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[int], torch.Tensor]
    generator: torch.Generator | None = None
    solver: object | None = None
    outside_params: Sequence[torch.Tensor] = ()
    report: Callable[[int, list[float]], None] | None = None
    report_every: int = 0
    progress: Callable[[], str] | None = None


@dataclass
class TrainingLog:
    """Losses and step counts so far (saved in the checkpoint).

    Attributes
    ----------
    losses : list of float
        The global loss of every iteration run so far.
    steps : list of int
        The solver's accepted steps at every iteration (0 without a ``TrainingTask.solver``).
    """

    losses: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


class Trainer:
    """Run a :class:`TrainingTask` for a number of iterations, resumably, on every rank of ``comm``.

    Each iteration calls ``task.optimizer.step(closure)``, where ``closure`` zeroes the gradients, calls
    ``task.loss(iteration)``, runs its backward pass, sums the gradients of ``task.outside_params`` over
    the ranks and returns the global loss (summed over the ranks, so the same on each).  Optimizers
    that evaluate once per step (SGD, Adam) call it once; line-search ones such as
    ``torch.optim.LBFGS(..., line_search_fn="strong_wolfe")`` call it as often as they need, in step
    on every rank.  One small allreduce then gives the global loss of the iteration's first
    evaluation (the logged loss) and whether any rank received SIGTERM.

    Parameters
    ----------
    task : TrainingTask
        What to train.
    iterations : int
        Total number of iterations (a resumed run continues up to this count).
    comm : mpi4py communicator, optional
        The ranks that train together (default ``MPI.COMM_WORLD``).
    checkpoint : str, optional
        Checkpoint file, written by rank 0 to a temporary file and renamed over the old one.
    checkpoint_every : int, optional
        Iterations between checkpoints (one is also written at the end and when stopped by SIGTERM).
    resume : bool, optional
        Continue from ``checkpoint`` when the file exists, start fresh otherwise.
    log_every : int, optional
        Iterations between progress lines on rank 0.
    printer : callable, optional
        Where progress lines go (default :func:`print`).

    Raises
    ------
    pnode.InvalidArgumentError
        For a non-positive ``iterations`` or ``checkpoint_every``, ``resume`` without a ``checkpoint``,
        or (in :meth:`run`) a checkpoint written by a different number of ranks.

    Examples
    --------
    >>> import os, tempfile, torch, pnode
    >>> from pnode.training import Trainer, TrainingTask
    >>> _ = torch.manual_seed(0)
    >>> func = torch.nn.Linear(2, 2).double()
    >>> solver = pnode.ODESolver(lambda t, y: func(y), method="rk4", adjoint_params=tuple(func.parameters()))
    >>> y0 = torch.ones(4, 2, dtype=torch.float64)
    >>> t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    >>> task = TrainingTask(model=func, optimizer=torch.optim.SGD(func.parameters(), lr=0.1),
    ...                     loss=lambda iteration: solver(y0, t)[-1].pow(2).mean(), solver=solver)
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
    >>> lines = []
    >>> Trainer(task, 3, checkpoint=path, checkpoint_every=2, printer=lines.append).run()
    0
    >>> len(lines), lines[-1].split()[:2], os.path.exists(path)
    (3, ['iter', '3/3'], True)
    """

    def __init__(self, task: TrainingTask, iterations: int, *, comm=None, checkpoint: str | None = None,
                 checkpoint_every: int = 50, resume: bool = False, log_every: int = 1,
                 printer: Callable[[str], None] = print):
        if iterations < 1:
            raise InvalidArgumentError(f"iterations must be a positive int, got {iterations!r}")
        if checkpoint_every < 1:
            raise InvalidArgumentError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        if resume and checkpoint is None:
            raise InvalidArgumentError("resume=True needs a checkpoint path (--checkpoint FILE)")
        self.task = task
        self.iterations = iterations
        self.comm = mpi_comm(comm)
        self.rank = self.comm.Get_rank()
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.log_every = max(1, log_every)
        self.printer = printer
        self.log = TrainingLog()
        self.start_iteration = 1
        self._stop_requested = False

    # ------------------------------------------------------------------ public
    def run(self) -> int:
        """Train from the first iteration not yet done (after a checkpoint, with ``resume``).

        Returns
        -------
        int
            0 when all iterations ran, :data:`STOPPED_BY_SIGNAL` (143) when SIGTERM stopped the run
            after a checkpoint.
        """
        if self.resume and self._checkpoint_exists():
            self._load()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._loop()
        finally:
            signal.signal(signal.SIGTERM, previous)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> int:
        task = self.task
        start = time.perf_counter()
        done_here = 0
        for iteration in range(self.start_iteration, self.iterations + 1):
            first: list[torch.Tensor] = []

            def closure(iteration=iteration, first=first) -> torch.Tensor:
                # one evaluation; line-search optimizers (LBFGS) call it several times per iteration, and
                # compare the values it returns, so it returns the global loss: identical on every rank,
                # every rank then takes the same decisions and makes the same number of solves
                task.optimizer.zero_grad()
                loss = task.loss(iteration)
                loss.backward()
                allreduce_gradients(task.outside_params, self.comm)
                if not first:
                    first.append(loss.detach())
                return torch.tensor(self.comm.allreduce(loss.item()) if self.comm.Get_size() > 1 else loss.item(),
                                    dtype=loss.dtype)

            task.optimizer.step(closure)
            loss = first[0]
            # one small allreduce: the global loss, and whether any rank was asked to stop
            total, stop = self.comm.allreduce(np.array([loss.item(), float(self._stop_requested)]))
            steps = int(getattr(getattr(task.solver, "stats", None), "steps", 0))
            self.log.losses.append(float(total))
            self.log.steps.append(steps)
            done_here += 1
            elapsed = time.perf_counter() - start
            if self.rank == 0 and (iteration % self.log_every == 0 or iteration == self.iterations or stop):
                eta = elapsed / done_here * (self.iterations - iteration)
                extra = task.progress() if task.progress is not None else ""
                self.printer(f"iter {iteration:5d}/{self.iterations}  loss {total:.6e}  steps {steps:4d}  "
                             f"{elapsed / done_here:6.3f} s/iter  elapsed {elapsed:7.1f}s  eta {eta:7.1f}s"
                             + (f"  {extra}" if extra else ""))
            last = iteration == self.iterations
            if self.checkpoint and (iteration % self.checkpoint_every == 0 or last or stop):
                self._save(iteration)
            if self.rank == 0 and task.report is not None and (
                    last or (task.report_every and iteration % task.report_every == 0)):
                task.report(iteration, self.log.losses)
            if stop and not last:
                if self.rank == 0:
                    self.printer(f"stopped by SIGTERM after iteration {iteration}; checkpoint "
                                 f"{self.checkpoint or '(none: pass --checkpoint)'}; rerun with --resume")
                return STOPPED_BY_SIGNAL
        return 0

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_exists(self) -> bool:
        return bool(self.comm.bcast(os.path.exists(self.checkpoint) if self.rank == 0 else None))

    def _rng_state(self) -> dict:
        task = self.task
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "generator": None if task.generator is None else task.generator.get_state()}

    def _save(self, iteration: int) -> None:
        rng = self.comm.gather(self._rng_state())
        if self.rank != 0:
            return
        state = {"iteration": iteration, "model": self.task.model.state_dict(),
                 "optimizer": self.task.optimizer.state_dict(), "rng": rng, "world_size": len(rng),
                 "losses": list(self.log.losses), "steps": list(self.log.steps)}
        save_atomically(state, self.checkpoint)

    def _load(self) -> None:
        state = self.comm.bcast(torch.load(self.checkpoint, weights_only=False) if self.rank == 0 else None)
        if state["world_size"] != self.comm.Get_size():
            raise InvalidArgumentError(
                f"checkpoint {self.checkpoint} was written by {state['world_size']} ranks, this run has "
                f"{self.comm.Get_size()}; resume with the same number of ranks (the data shards and "
                "random streams depend on it)")
        self.task.model.load_state_dict(state["model"])
        self.task.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"][self.rank]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if self.task.generator is not None and rng["generator"] is not None:
            self.task.generator.set_state(rng["generator"])
        self.log = TrainingLog(list(state["losses"]), list(state["steps"]))
        self.start_iteration = state["iteration"] + 1
        if self.rank == 0:
            self.printer(f"resumed from {self.checkpoint} after iteration {state['iteration']}")


def save_atomically(state: dict, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``.

    Readers see the old checkpoint or the new one, never a partial file, even when the job is killed
    while writing.

    Parameters
    ----------
    state : dict
        What to save (anything :func:`torch.save` accepts).
    path : str
        The checkpoint file; its folder is created if missing.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from pnode.training import save_atomically
    >>> path = os.path.join(tempfile.mkdtemp(), "run", "state.pt")
    >>> save_atomically({"iteration": 7}, path)
    >>> torch.load(path)["iteration"]
    7
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


__all__ = ["TrainingTask", "Trainer", "TrainingLog", "save_atomically", "STOPPED_BY_SIGNAL"]

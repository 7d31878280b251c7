"""``pnode-train``: run a training script under ``mpiexec``/``srun`` with progress, checkpoints and resume.

    mpiexec -n 4 pnode-train examples/train_spiral.py --iterations 2000 --checkpoint run/ckpt.pt --resume \\
        -- --batch-size 512 -ts_rk_type 5bs

The script defines ``setup(argv, comm) -> pnode.training.TrainingTask``; ``argv`` holds the arguments
after ``--`` (the script's own, and PETSc options, which PETSc reads from the command line too).  With
``--resume`` a run continues from the checkpoint when it exists and starts fresh otherwise, so one batch
script line serves the first submission and every requeue.  Exit status: 0 when done, 143 when SIGTERM
stopped the run after a checkpoint (requeue it), 1 after an error (every rank is stopped with
MPI_Abort, so a failure on one rank never leaves the job hanging until its time limit).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Sequence

from .training import Trainer, TrainingTask


def load_setup(script: str):
    """Import a training script by its path and return its ``setup`` function.

    Parameters
    ----------
    script : str
        Path of a Python file defining ``setup(argv, comm) -> pnode.training.TrainingTask``.  Its folder
        is put on ``sys.path`` first, so it can import modules beside it.

    Returns
    -------
    callable
        The script's ``setup``.

    Raises
    ------
    SystemExit
        When the file does not exist or defines no callable ``setup``.

    Examples
    --------
    >>> import os, tempfile
    >>> from pnode.cli import load_setup
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "train.py"), "w") as handle:
    ...     _ = handle.write("def setup(argv, comm): return argv")
    >>> load_setup(os.path.join(folder, "train.py"))(["--lr", "0.1"], None)
    ['--lr', '0.1']
    """
    if not os.path.isfile(script):
        raise SystemExit(f"pnode-train: training script {script!r} not found")
    spec = importlib.util.spec_from_file_location("pnode_training_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    spec.loader.exec_module(module)
    setup = getattr(module, "setup", None)
    if not callable(setup):
        raise SystemExit(f"pnode-train: {script} must define setup(argv, comm) returning a "
                         "pnode.training.TrainingTask")
    return setup


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``pnode-train`` (the arguments before ``--``).

    Returns
    -------
    argparse.ArgumentParser
        ``script``, ``--iterations`` (required), ``--checkpoint``, ``--checkpoint-every`` (default 50),
        ``--resume``, ``--log-every`` (default 1).

    Examples
    --------
    >>> from pnode.cli import parser
    >>> args = parser().parse_args(["train.py", "--iterations", "10", "--resume"])
    >>> args.iterations, args.resume, args.checkpoint_every
    (10, True, 50)
    """
    p = argparse.ArgumentParser(prog="pnode-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="training script defining setup(argv, comm) -> TrainingTask")
    p.add_argument("--iterations", type=int, required=True, help="total number of training iterations")
    p.add_argument("--checkpoint", help="checkpoint file (written atomically by rank 0)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="iterations between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    p.add_argument("--log-every", type=int, default=1, help="iterations between progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pnode-train``: load the script's task and train it with :class:`~pnode.training.Trainer`.

    Parameters
    ----------
    argv : sequence of str, optional
        The command line without the program name (default ``sys.argv[1:]``): ``pnode-train``'s own
        arguments, then ``--`` and the script's arguments (which PETSc also reads).

    Returns
    -------
    int
        The exit status: 0 when all iterations ran, 143 when SIGTERM stopped the run after a checkpoint
        (requeue it), 1 after an error in one process.  Under MPI an error on any rank aborts every rank
        (``MPI_Abort``) after printing its traceback, so a batch job never hangs until its time limit.

    Examples
    --------
    Usually run from the shell::

        mpiexec -n 2 pnode-train examples/train_spiral.py --iterations 100 \\
            --checkpoint runs/spiral.pt --checkpoint-every 20 --resume -- --batch-size 256
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ours = argv[:argv.index("--")] if "--" in argv else argv
    args = parser().parse_args(ours)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    _share_cores(comm)
    try:
        task = load_setup(args.script)(script_args, comm)
        if not isinstance(task, TrainingTask):
            raise SystemExit(f"pnode-train: setup() in {args.script} returned {type(task).__name__}, "
                             "expected a pnode.training.TrainingTask")
        trainer = Trainer(task, args.iterations, comm=comm, checkpoint=args.checkpoint,
                          checkpoint_every=args.checkpoint_every, resume=args.resume,
                          log_every=args.log_every, printer=lambda line: print(line, flush=True))
        status = trainer.run()
        _collect_parallel_garbage(comm)
        return status
    except BaseException as error:  # noqa: BLE001 - a batch job must die, not hang
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        print(f"pnode-train: rank {comm.Get_rank()} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        if comm.Get_size() > 1:
            time.sleep(1.0)     # let mpiexec forward this rank's output before the abort tears it down
            comm.Abort(1)
        return 1


def _collect_parallel_garbage(comm) -> None:
    """Run Python's cyclic collector and PETSc's garbage cleanup on every rank together before exiting.

    petsc4py hands a parallel object that Python's collector frees to PETSc's garbage list, emptied
    collectively by ``PetscGarbageCleanup``; ``PetscFinalize`` runs that cleanup only on ranks that have
    such a list.  A collector run on rank 0 alone (triggered by the allocations of a plot in the task's
    report) can free objects there that the other ranks still hold in reference cycles; rank 0 then
    waited in ``PetscFinalize`` for ranks already in ``MPI_Finalize`` (``make demo`` hung after its last
    iteration, now and then).  Collecting on every rank at the same point, then cleaning up
    collectively, destroys those objects on all ranks together."""
    import gc

    from petsc4py import PETSc

    petsc_comm = PETSc.Comm(comm)
    if petsc_comm.getSize() == 1:
        return
    gc.collect()
    PETSc.garbage_cleanup(petsc_comm)


def _share_cores(comm) -> None:
    """Give each rank its share of the node's cores for PyTorch's threads (unless OMP_NUM_THREADS is
    set): PyTorch's default of one thread per core on every rank oversubscribes the node, and small
    tensor operations then slow down many times over."""
    if "OMP_NUM_THREADS" in os.environ or comm.Get_size() == 1:
        return
    import torch
    from mpi4py import MPI

    ranks_here = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))


if __name__ == "__main__":
    sys.exit(main())

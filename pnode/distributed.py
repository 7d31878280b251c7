"""MPI layout of a distributed solve: communicators, batch sharding, reductions, and failures that reach
every rank.

Layout: each rank holds a shard of the batch (shards may be uneven); the ODE state is one distributed
PETSc Vec; the network's parameters are replicated.  A rank's parameter gradient from pnode is the
gradient of the **sum** of all ranks' losses (reduced once per backward pass), so a global mean loss is
``local_sum / global_batch_size`` on every rank (see :func:`global_size`).

Failures: an exception on one rank while the others wait in a collective would hang them.  So under MPI
pnode's callbacks never raise into PETSc: they record the exception and poison their output with NaN,
which PETSc's global norms spread to every rank; at the next agreement point every rank exchanges what
went wrong (:func:`agree_on_failure`) and raises together: the original exception on the rank where it
happened, :class:`~pnode.errors.RemoteRankError` on the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._bridge import ParamLayout
from ._petsc import PETSc
from .errors import InvalidArgumentError, RemoteRankError


def petsc_comm(comm: Any) -> PETSc.Comm:
    """A PETSc.Comm from ``None`` (COMM_SELF), a PETSc.Comm or an mpi4py communicator."""
    if comm is None:
        return PETSc.COMM_SELF
    if isinstance(comm, PETSc.Comm):
        return comm
    try:
        return PETSc.Comm(comm)
    except Exception as error:  # noqa: BLE001
        raise InvalidArgumentError(f"comm must be an mpi4py communicator or a PETSc.Comm, got "
                                   f"{type(comm).__name__}") from error


def mpi_comm(comm: Any):
    """The mpi4py communicator of ``comm`` (``None`` -> MPI.COMM_WORLD)."""
    from mpi4py import MPI

    if comm is None:
        return MPI.COMM_WORLD
    if isinstance(comm, PETSc.Comm):
        return comm.tompi4py()
    return comm


# ---------------------------------------------------------------------------- sharding
def shard_range(n_global: int, size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``n_global`` items over ``size`` ranks:
    the first ``n_global % size`` ranks hold one item more (shards differ by at most one)."""
    if n_global < 0 or size < 1 or not 0 <= rank < size:
        raise InvalidArgumentError(f"cannot shard {n_global} items over {size} ranks for rank {rank}")
    base, extra = divmod(n_global, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(x: torch.Tensor, comm: Any = None, dim: int = 0) -> torch.Tensor:
    """This rank's contiguous shard of ``x`` along ``dim`` (a view; see :func:`shard_range`)."""
    mpi = mpi_comm(comm)
    start, stop = shard_range(x.shape[dim], mpi.Get_size(), mpi.Get_rank())
    return x.narrow(dim, start, stop - start)


def global_size(n_local: int, comm: Any = None) -> int:
    """Sum of ``n_local`` over the ranks (the global batch size of uneven shards)."""
    return int(mpi_comm(comm).allreduce(int(n_local)))


# ---------------------------------------------------------------------------- reductions
def allreduce_sum_(array: np.ndarray, comm) -> np.ndarray:
    """In-place global sum of a contiguous float64 numpy array (one MPI_Allreduce)."""
    from mpi4py import MPI

    mpi_comm(comm).Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
    return array


def allreduce_gradients(params: Iterable[torch.Tensor], comm: Any = None, average: bool = False) -> None:
    """Sum (or average) ``.grad`` of ``params`` over the ranks, in one allreduce.

    Only for parameters used *outside* pnode solves (an encoder, a decoder, a loss head): pnode already
    returns the summed gradient for the vector field's parameters, and reducing those again would
    multiply them by the number of ranks.
    """
    mpi = mpi_comm(comm)
    params = [p for p in params if p.grad is not None]
    if not params or mpi.Get_size() == 1:
        return
    grads = [p.grad for p in params]
    layout = ParamLayout.of(grads)
    flat = np.empty(layout.size)
    layout.write(flat, grads)
    allreduce_sum_(flat, mpi)
    if average:
        flat /= mpi.Get_size()
    for grad, summed in zip(grads, layout.split(torch.from_numpy(flat))):
        grad.copy_(summed)


# ---------------------------------------------------------------------------- failures
def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def agree_on_failure(comm, local_error: BaseException | None, *, extra: object = None,
                     consequences: tuple[type[BaseException], ...] = ()) -> tuple[int | None, str | None, list]:
    """Collective: every rank states whether it failed (and any ``extra`` fact); returns
    ``(failed_rank, description, extras)`` naming the lowest failing rank, or ``(None, None, extras)``.

    Errors of the ``consequences`` types (e.g. the NaN check that a poisoned rank trips on every rank)
    name the failing rank only when no rank has another error: the cause wins over its symptoms.
    """
    mine = None if local_error is None else (describe(local_error), not isinstance(local_error, consequences))
    gathered = mpi_comm(comm).allgather((mine, extra))
    extras = [e for _, e in gathered]
    failures = [(not primary, rank, text) for rank, (m, _) in enumerate(gathered) if m is not None
                for text, primary in [m]]
    if not failures:
        return None, None, extras
    _, rank, text = min(failures)
    return rank, text, extras


def raise_agreed(comm, local_error: BaseException | None, failed_rank: int | None,
                 description: str | None, what: str = "the solve") -> None:
    """Raise on every rank after :func:`agree_on_failure` found a failure: the original exception on
    the rank that failed (and on ranks whose own error is as primary as it), :class:`RemoteRankError`
    elsewhere."""
    if failed_rank is None:
        return
    rank = mpi_comm(comm).Get_rank()
    if local_error is not None and (rank == failed_rank or describe(local_error) == description):
        raise local_error.with_traceback(local_error.__traceback__)
    raise RemoteRankError(
        f"rank {failed_rank} failed during {what} with {description}; rank {rank} stops with it (the "
        f"original exception is raised on rank {failed_rank})", rank=failed_rank, description=description)


@dataclass(frozen=True)
class Agreement:
    """What the ranks agreed on after a PETSc call: the lowest rank whose callback failed (if any),
    its exception's description, and every rank's PETSc error code (``None`` where the call succeeded)."""

    failed_rank: int | None
    description: str | None
    petsc_codes: tuple

    @property
    def failed(self) -> bool:
        return self.failed_rank is not None or any(code is not None for code in self.petsc_codes)

    @property
    def petsc_code(self) -> int | None:
        return next((code for code in self.petsc_codes if code is not None), None)


class RankGroup:
    """The ranks of one solve, and the only place that asks whether a solve is distributed.

    Every collective pnode makes during a solve goes through this object, which also counts the time
    spent in them (:attr:`seconds`, reported as ``SolveStats.communication_time``).  On one rank every
    method is a local no-op.
    """

    def __init__(self, comm: Any = None):
        self.comm = petsc_comm(comm)
        self.size = self.comm.getSize()
        self.distributed = self.size > 1
        self.mpi = self.comm.tompi4py() if self.distributed else None
        self.seconds = 0.0

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def total(self, n_local: int) -> int:
        """Sum of ``n_local`` over the ranks."""
        return int(self._timed(self.mpi.allreduce, int(n_local))) if self.distributed else n_local

    def sum_(self, array: np.ndarray) -> np.ndarray:
        """In-place global sum of a contiguous float64 array (identity on one rank)."""
        if self.distributed:
            self._timed(allreduce_sum_, array, self.mpi)
        return array

    def global_sum(self, values: np.ndarray, errors, what: str = "the solve") -> np.ndarray:
        """Sum of ``values`` over the ranks, raising on every rank if any rank recorded a failure in
        ``errors`` (a :class:`~pnode._failures.CallbackErrors`) since the last agreement."""
        if not self.distributed:
            return values
        failed = 1.0 if errors.error is not None else 0.0
        buffer = np.ascontiguousarray(np.append(np.asarray(values, dtype=np.float64), failed))
        self.sum_(buffer)
        if buffer[-1]:
            local = errors.pop()
            self.raise_agreed(self.agree(local, None), local, what)
        return buffer[:-1]

    def any_rank(self, flags: np.ndarray) -> np.ndarray:
        """Element-wise: does any rank hold a non-zero flag?  (Every rank gets the same answer.)"""
        return self.sum_(np.ascontiguousarray(flags, dtype=np.float64)) > 0

    def agree(self, local_error: BaseException | None, petsc_code: int | None,
              consequences: tuple[type[BaseException], ...] = ()) -> Agreement:
        """Collective after a PETSc call (MPI only): what failed where."""
        rank, description, codes = self._timed(agree_on_failure, self.mpi, local_error, extra=petsc_code,
                                               consequences=consequences)
        return Agreement(rank, description, tuple(codes))

    def raise_agreed(self, agreement: Agreement, local_error: BaseException | None, what: str) -> None:
        """Raise the agreed failure of a callback on every rank (nothing if only PETSc codes failed)."""
        raise_agreed(self.mpi, local_error, agreement.failed_rank, agreement.description, what)

    def check_consistent(self, local_error: BaseException | None, agree: dict[str, object],
                         gather: object = None) -> list:
        """See :func:`check_consistent`; on one rank raises ``local_error`` and returns ``[gather]``."""
        if not self.distributed:
            if local_error is not None:
                raise local_error
            return [gather]
        return self._timed(check_consistent, self.mpi, local_error, agree, gather)


def check_consistent(comm, local_error: BaseException | None, agree: dict[str, object],
                     gather: object = None) -> list:
    """Collective check at the start of a distributed call: raises on every rank if any rank's arguments
    were invalid, or if the values in ``agree`` (which must be equal on every rank, e.g. the output
    times) differ.  Returns every rank's ``gather`` value."""
    failed, description, extras = agree_on_failure(comm, local_error, extra=(agree, gather))
    raise_agreed(comm, local_error, failed, description, what="argument checking")
    for name in agree:
        values = [e[0][name] for e in extras]
        if any(_differs(v, values[0]) for v in values):
            raise InvalidArgumentError(
                f"{name} differs across MPI ranks ({_summary(values)}); every rank must pass the same "
                "(only the batch shard of y0 is rank-local)")
    return [e[1] for e in extras]


def _differs(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return not (np.shape(a) == np.shape(b) and np.array_equal(a, b))
    return a != b


def _summary(values: Sequence[object]) -> str:
    return ", ".join(f"rank {r}: {np.asarray(v).tolist() if isinstance(v, np.ndarray) else v!r}"
                     for r, v in enumerate(values))[:400]


__all__ = ["petsc_comm", "mpi_comm", "shard", "shard_range", "global_size", "allreduce_sum_",
           "allreduce_gradients", "agree_on_failure", "raise_agreed", "check_consistent", "RankGroup", "Agreement"]

"""Distributed solves under real ``mpiexec``: rank invariance against the 1-rank run on the full batch,
and failures on one rank that raise on every rank instead of hanging (each run has a timeout)."""

import json
import os
import runpy

import numpy as np
import pytest
import torch
from mpi_run import WORKERS, check, mpiexec

from pnode.distributed import shard, shard_range

CASES = ("rk4_fixed", "dopri5_adaptive", "bosh3_adaptive_backward_time", "rk4_fixed_checkpointed",
         "dopri5_adaptive_checkpointed")
# implicit and IMEX methods: batched (rank-local block LU) and matrix-free (GMRES, global dot products)
# Jacobians, fixed and adaptive steps; the checkpointed one runs on 1 and 2 ranks only (oversubscribed
# collectives are slow)
IMPLICIT_CASES = ("beuler_fixed_batched", "cn_fixed_matrix_free", "arkimex4_adaptive_batched",
                  "arkimex3_adaptive_matrix_free", "dirk_adaptive_batched_backward_time", "imex_arkimex3_adaptive")


@pytest.fixture(scope="module")
def rank_runs(tmp_path_factory):
    """The worker on 1 rank (the oracle: the full batch in one process), 2 ranks and 3 ranks
    (oversubscribed on small machines); uneven shards on both."""
    folder = tmp_path_factory.mktemp("ranks")
    runs = {}
    worker = os.path.join(WORKERS, "rank_invariance.py")
    for n in (1, 2, 3):
        path = str(folder / f"ranks{n}.npz")
        if n == 1:   # in this process: MPI.COMM_WORLD has one rank here, and no start-up to pay
            runpy.run_path(worker, run_name="not_main")["main"](path)
        else:
            check(mpiexec(n, [worker, path], timeout=180, cwd=folder))
        runs[n] = dict(np.load(path))
    return runs


@pytest.mark.parametrize("n, case", [(n, case) for case in CASES + IMPLICIT_CASES for n in (2, 3)]
                         + [(2, "arkimex4_adaptive_batched_checkpointed")])
def test_rank_invariance(rank_runs, n, case):
    one, many = rank_runs[1], rank_runs[n]
    assert int(many["size"]) == n
    # identical accepted and rejected step counts: every rank sees the same global error norms
    np.testing.assert_array_equal(many[f"{case}/steps"], one[f"{case}/steps"])
    # identical Newton and Krylov iteration counts: Newton's and GMRES's convergence tests use global
    # norms, equal across rank counts up to rounding, far from their thresholds here; the batched
    # Jacobian's exact block LU is rank-local (one Krylov iteration per Newton iteration)
    np.testing.assert_array_equal(many[f"{case}/iterations"], one[f"{case}/iterations"])
    # Shards change only rounding: BLAS rounds a 3-row and a 7-row product differently in the last bit,
    # and global sums add in another order.  The adaptive controller divides by an error estimate that
    # is a difference of nearly equal numbers, which lifts that 1e-16 to ~1e-9 in the step sizes
    # (measured 5e-9); the solution and gradients, smooth in the step sizes, stay at ~1e-14 (measured
    # 2e-14), so 1e-12 relative is tight with margin.  Implicit methods add Newton and Krylov solves:
    # with the same iteration counts their results differ only by the rounding of the global dot
    # products (GMRES) and norms, measured <= 1e-14 for batched and matrix-free alike, so the same bound.
    rel = {"step_times": 1e-7}
    for key in ("loss", "ys", "grad_y0", "grad_t", "grad_params", "grad_outside_param", "step_times"):
        want, got = one[f"{case}/{key}"], many[f"{case}/{key}"]
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= rel.get(key, 1e-12) * scale, (case, key)
    # every rank holds bitwise the same parameter gradient (one allreduce), so replicas never drift
    assert float(many[f"{case}/param_grad_spread_across_ranks"]) == 0.0


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("case", ["rk4_fixed", "dopri5_adaptive"])
def test_checkpointed_adjoint_matches_store_all_on_every_rank_count(rank_runs, n, case):
    # the same discrete adjoint, with states recomputed from checkpoints: equal up to rounding
    store_all, checkpointed = rank_runs[n][f"{case}/grad_params"], rank_runs[n][f"{case}_checkpointed/grad_params"]
    assert np.abs(checkpointed - store_all).max() <= 1e-12 * np.abs(store_all).max()


@pytest.mark.parametrize("n", [1, 2])
def test_checkpointed_implicit_adjoint_matches_store_all(rank_runs, n):
    # Replays restart ARKIMEX at checkpoints, where PETSc solves for the first stage's slope f(t_n, y_n)
    # instead of carrying the previous step's last-stage slope, which satisfies it only to the Newton
    # tolerance; chord Newton also evaluates its step Jacobian at that restart point instead.  Chord Newton
    # stops at 1e-4 of the step tolerance (rtol 1e-5 here): measured 1.7e-10 relative in the gradient
    # (full Newton, converged quadratically: 1e-12 .. 4e-12; Newton solved to rounding: 1e-15, see
    # tests/test_checkpointing.py)
    runs = rank_runs[n]
    store_all = runs["arkimex4_adaptive_batched/grad_params"]
    checkpointed = runs["arkimex4_adaptive_batched_checkpointed/grad_params"]
    assert np.abs(checkpointed - store_all).max() <= 1e-9 * np.abs(store_all).max()


@pytest.fixture(scope="module")
def failure_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failures")
    path = str(folder / "failures.json")
    # a hang shows up as the timeout; the whole table takes a few seconds after start-up
    check(mpiexec(2, [os.path.join(WORKERS, "failures.py"), path], timeout=120, cwd=folder))
    with open(path) as handle:
        return json.load(handle)


IMPLICIT_FAILURES = [
    ("raise_jacobian", "Boom: func failed in a Jacobian", "RemoteRankError: rank 1 failed during the solve with Boom"),
    # NaN in an implicit stage makes Newton fail on every rank together (its norms are global)
    ("nan_forward", "SolverError: PETSc TS stopped with reason DIVERGED_NONLINEAR_SOLVE",
     "SolverError: PETSc TS stopped with reason DIVERGED_NONLINEAR_SOLVE"),
    # Newton diverges on rank 1's shard only: global norms, so every rank sees the same failed solve
    ("diverge", "SolverError: PETSc TS stopped with reason DIVERGED_NONLINEAR_SOLVE",
     "SolverError: PETSc TS stopped with reason DIVERGED_NONLINEAR_SOLVE"),
]


IMPLICIT_FAILURES += [
    ("raise_forward", "Boom: func failed on rank 1", "RemoteRankError: rank 1 failed during the solve with Boom"),
    ("raise_backward", "Boom: func failed in a VJP", "RemoteRankError: rank 1 failed during the adjoint with Boom"),
]


# "diverge" on the fixed-step method only: adaptive steps chase its blow-up (see failures.py)
@pytest.mark.parametrize("method, mode, on_failing_rank, elsewhere",
                         [(method, *row) for method in ("beuler_batched", "arkimex4_matrix_free")
                          for row in IMPLICIT_FAILURES if method == "beuler_batched" or row[0] != "diverge"])
def test_implicit_failure_on_one_rank_raises_everywhere(failure_table, method, mode, on_failing_rank, elsewhere):
    test_failure_on_one_rank_raises_everywhere(failure_table, method, mode, on_failing_rank, elsewhere)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "rk4_checkpointed"])
@pytest.mark.parametrize("mode, on_failing_rank, elsewhere", [
    ("raise_forward", "Boom: func failed on rank 1", "RemoteRankError: rank 1 failed during the solve with Boom"),
    ("raise_backward", "Boom: func failed in a VJP", "RemoteRankError: rank 1 failed during the adjoint with Boom"),
    ("nan_forward", "NonFiniteError", "NonFiniteError"),
])
def test_failure_on_one_rank_raises_everywhere(failure_table, method, mode, on_failing_rank, elsewhere):
    rank0, rank1 = failure_table[f"{method}/{mode}"]
    assert rank1["raised"].startswith(on_failing_rank), rank1
    assert rank0["raised"].startswith(elsewhere), rank0
    for rank in (rank0, rank1):
        assert rank["seconds"] < 10, rank          # within seconds, no waiting for a timeout
        assert rank["then"] == "no error"          # the same solver works again afterwards


@pytest.mark.parametrize("method", ["rk4", "dopri5", "rk4_checkpointed", "beuler_batched", "arkimex4_matrix_free"])
def test_invalid_arguments_on_one_rank(failure_table, method):
    for rank in failure_table[f"{method}/different_t"]:
        assert rank["raised"].startswith("InvalidArgumentError: t differs across MPI ranks")
    rank0, rank1 = failure_table[f"{method}/bad_y0_dtype"]
    assert rank1["raised"].startswith("InvalidArgumentError: y0 has dtype torch.int64")
    assert rank0["raised"].startswith("RemoteRankError: rank 1 failed during argument checking")
    assert all(rank["raised"] == "no error" for rank in failure_table[f"{method}/after_all"])


def test_shard_ranges_cover_the_batch_evenly():
    for n_global in (0, 1, 7, 4096):
        for size in (1, 2, 3, 5):
            ranges = [shard_range(n_global, size, r) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_global
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            lengths = [b - a for a, b in ranges]
            assert max(lengths) - min(lengths) <= 1
    x = torch.arange(10.0)
    assert torch.equal(shard(x), x)      # one rank (plain python): the whole batch

"""pnode-train under real mpiexec: SIGTERM mid-way then --resume gives exactly the losses of an
uninterrupted run; an error on one rank ends the job instead of hanging it; atomic checkpoints."""

import os
import runpy
import signal
import subprocess
import sys
import time

import pytest
import torch
from mpi_run import WORKERS, check, environment, mpiexec

from pnode.errors import InvalidArgumentError
from pnode.training import Trainer, save_atomically

SCRIPT = os.path.join(WORKERS, "train_tiny.py")
ITERATIONS = 16


def train(n, checkpoint, *extra, timeout=120, **kwargs):
    return mpiexec(n, ["-m", "pnode.cli", SCRIPT, "--iterations", str(ITERATIONS), "--checkpoint", checkpoint,
                       "--checkpoint-every", "4", *extra], timeout=timeout, **kwargs)


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path):
    whole = str(tmp_path / "whole.pt")
    check(train(2, whole))
    reference = torch.load(whole, weights_only=False)
    assert reference["iteration"] == ITERATIONS and len(reference["losses"]) == ITERATIONS

    # the same run, slowed down, stopped by SIGTERM once iteration 6 is printed
    parts = str(tmp_path / "parts.pt")
    command = ["mpiexec", "-n", "2", sys.executable, "-m", "pnode.cli", SCRIPT, "--iterations", str(ITERATIONS),
               "--checkpoint", parts, "--checkpoint-every", "4", "--", "--sleep", "0.3"]
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if line.startswith("iter     6/"):
                proc.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "".join(output)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output.append(rest)
    stopped = torch.load(parts, weights_only=False)
    assert 6 <= stopped["iteration"] < ITERATIONS, "".join(output)
    assert "stopped by SIGTERM" in "".join(output)

    resumed = train(2, parts, "--resume")
    check(resumed)
    assert f"resumed from {parts} after iteration {stopped['iteration']}" in resumed.stdout
    final = torch.load(parts, weights_only=False)
    # bitwise equal: the same ranks replay the same data, model, optimizer and RNG states
    assert final["losses"] == reference["losses"]
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_error_on_one_rank_ends_the_job(tmp_path):
    start = time.perf_counter()
    proc = train(2, str(tmp_path / "c.pt"), "--", "--fail-at", "3", timeout=60)
    assert proc.returncode != 0
    assert "data loading failed on rank 1" in proc.stderr, (proc.stdout, proc.stderr)
    assert time.perf_counter() - start < 60


def test_resume_refuses_another_rank_count(tmp_path):
    checkpoint = str(tmp_path / "c.pt")
    save_atomically({"iteration": 3, "world_size": 5}, checkpoint)
    task = runpy.run_path(SCRIPT)["setup"]([], None)
    with pytest.raises(InvalidArgumentError, match="written by 5 ranks"):
        Trainer(task, 4, checkpoint=checkpoint, resume=True).run()


def test_save_atomically_replaces_whole_files(tmp_path):
    path = str(tmp_path / "sub" / "c.pt")
    save_atomically({"a": 1}, path)
    save_atomically({"a": 2}, path)
    assert torch.load(path)["a"] == 2
    assert os.listdir(tmp_path / "sub") == ["c.pt"]      # no temporary file left behind


@pytest.mark.parametrize("argv, message", [(["--checkpoint", "x.pt"], "--iterations")])
def test_cli_usage_errors(argv, message, capsys):
    from pnode.cli import main

    with pytest.raises(SystemExit):
        main([SCRIPT, *argv])
    assert message in capsys.readouterr().err


def test_lbfgs_line_search_takes_the_same_steps_on_every_rank(tmp_path):
    """The closure returns the global loss, so L-BFGS's strong-Wolfe line search makes the same decisions
    (and the same number of solves) on every rank: 2 ranks reproduce 1 rank's losses and evaluation
    counts (to rounding: the ranks' partial sums are added in another order)."""
    runs = {}
    for n in (1, 2):
        checkpoint = str(tmp_path / f"lbfgs{n}.pt")
        proc = mpiexec(n, ["-m", "pnode.cli", SCRIPT, "--iterations", "4", "--checkpoint", checkpoint, "--",
                           "--lbfgs"], timeout=120)
        check(proc)
        counts = [line.split("evaluations ")[1].strip() for line in proc.stdout.splitlines()
                  if line.startswith("iter")]
        runs[n] = (torch.load(checkpoint, weights_only=False)["losses"], counts)
    (losses1, counts1), (losses2, counts2) = runs[1], runs[2]
    assert counts1 == counts2 and int(counts1[-1]) > 4     # a line search: more solves than iterations
    assert losses1[-1] < 0.5 * losses1[0]
    assert losses2 == pytest.approx(losses1, rel=1e-10)


def test_progress_is_appended_to_progress_lines():
    task = runpy.run_path(SCRIPT)["setup"]([], None)
    lines = []
    Trainer(task, 2, printer=lines.append).run()
    assert [line.split("  ")[-1] for line in lines] == ["evaluations 1", "evaluations 2"]

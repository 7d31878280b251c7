"""The smallest configurations of examples/classify_digits.py and examples/cnf_toy.py: they run, write
their plots and learn (the loss decreases); the digits classifier also under ``mpiexec -n 2`` through
pnode-train, where its losses must equal the one-process run's (the stem and head gradients are summed
over the ranks, the ODE block's by pnode)."""

import math
import os
import runpy

import numpy as np
import pytest
import torch
from mpi_run import REPO, check, mpiexec

EXAMPLES = os.path.join(REPO, "examples")
DIGITS = os.path.join(EXAMPLES, "classify_digits.py")
DIGITS_TINY = ["--epochs", "1", "--train-subset", "192", "--batch-size", "32", "--channels", "4", "--lr", "1e-2",
               "--shift", "0"]
pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the test extra)")


def _train_digits(n, tmp_path, name):
    checkpoint = str(tmp_path / f"{name}.pt")
    proc = mpiexec(n, ["-m", "pnode.cli", DIGITS, "--iterations", "6", "--checkpoint", checkpoint, "--", *DIGITS_TINY,
                       "--out", str(tmp_path / name)], timeout=180)
    check(proc)
    return torch.load(checkpoint, weights_only=False)["losses"], proc.stdout


def test_classify_digits_serial_and_two_ranks_agree(tmp_path):
    serial, out = _train_digits(1, tmp_path, "serial")
    assert len(serial) == 6 and serial[-1] < serial[0], serial
    assert "test accuracy" in out and os.path.exists(tmp_path / "serial" / "classify_digits.png")
    distributed, out = _train_digits(2, tmp_path, "mpi")
    # the same global batches, model and optimizer: the shards change only float32 rounding
    np.testing.assert_allclose(distributed, serial, rtol=1e-4)
    assert os.path.exists(tmp_path / "mpi" / "classify_digits.png")


def test_classify_digits_main_in_process(tmp_path):
    torch.set_num_threads(1)
    module = runpy.run_path(DIGITS)
    result = module["main"]([*DIGITS_TINY, "--out", str(tmp_path), "--no-plot"])
    losses = result["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert 0.0 <= result["history"]["accuracy"][-1] <= 1.0


def test_cnf_toy_smallest_config(tmp_path, capsys):
    torch.set_num_threads(1)
    module = runpy.run_path(os.path.join(EXAMPLES, "cnf_toy.py"))
    (result,) = module["main"](["--density", "8gaussians", "--iterations", "12", "--batch-size", "64", "--width", "16",
                                "--step-size", "0.25", "--lr", "2e-2", "--test-samples", "400", "--grid", "16",
                                "--plot-samples", "300", "--log-every", "6", "--out", str(tmp_path)])
    nlls = result["nlls"]
    assert len(nlls) == 12 and np.mean(nlls[-3:]) < np.mean(nlls[:3]), nlls
    assert math.isfinite(result["nll"]) and result["nll"] > result["entropy"] - 5 * result["nll_se"]
    assert os.path.exists(result["plot"])
    assert "held-out NLL" in capsys.readouterr().out


def test_cnf_toy_densities_are_normalized_and_sampled_where_they_live():
    """The generated samples lie where the coded density is positive and it integrates to 1; the
    printed entropies are the quadrature's, and agree with a Monte Carlo estimate -mean log p(x_i)."""
    module = runpy.run_path(os.path.join(EXAMPLES, "cnf_toy.py"))
    rng = np.random.default_rng(0)
    h, _ = module["entropy"]("checkerboard")
    assert abs(h - math.log(32)) < 1e-15
    for name in module["DENSITIES"]:
        x = module["sample_density"](name, 4000, rng)
        logp = np.log(module["density"](name, x))
        assert np.isfinite(logp).all(), name
        if name != "checkerboard":
            h, how = module["entropy"](name, spacing=0.05)    # coarser than the example's, for speed
            assert "mass 1.000000" in how
            assert abs(-logp.mean() - h) < 4 * logp.std() / math.sqrt(len(x)), (name, -logp.mean(), h)

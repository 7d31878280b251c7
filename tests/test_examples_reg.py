"""The smallest configurations of examples/latent_ode.py and examples/regularized.py: they run, write
their outputs, and training lowers the loss."""

import os
import sys

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sys.path.insert(0, EXAMPLES)
    yield
    sys.path.remove(EXAMPLES)
    torch.set_num_threads(threads)


def test_latent_ode_smallest_config(tmp_path):
    import latent_ode

    results = latent_ode.main(["--iters", "40", "--train", "32", "--test", "8", "--batch", "32", "--n-times", "41",
                               "--log-every", "40", "--out", str(tmp_path), "--threads", "1"])
    assert (tmp_path / "latent_ode.png").stat().st_size > 10_000
    for name in ("latent ODE", "RNN"):
        interp, extrap, seconds, first, last = results[name]
        assert last < 0.8 * first, (name, first, last)       # the negative ELBO falls
        assert 0 < interp < 1.0 and 0 < extrap < 10.0


def test_latent_ode_data_are_irregular_and_windowed():
    import latent_ode

    data = latent_ode.make_spirals(16, generator=torch.Generator().manual_seed(0))
    window = data.n_observed_times
    assert data.mask[:, window:].sum() == 0                  # nothing observed beyond the window
    assert (data.mask[:, :window].sum(1) >= 1).all()
    assert len({tuple(row.tolist()) for row in data.mask}) == 16   # every trajectory has its own times
    assert float((data.noisy - data.truth).std()) == pytest.approx(latent_ode.NOISE_STD, rel=0.1)


@pytest.mark.parametrize("task", ["digits", "latent", "spiral", "twist"])
def test_regularized_smallest_config(task, tmp_path):
    import regularized

    if task == "digits":
        pytest.importorskip("sklearn", reason="the digits task needs scikit-learn (the test extra)")
    sizes = {"digits": ["--train-subset", "320", "--epochs", "4", "--batch", "64", "--log-every", "4"],
             "latent": ["--train", "32", "--test", "8", "--batch", "32", "--weight", "100"],
             "spiral": ["--n-times", "200", "--weight", "3"],
             "twist": ["--train", "64", "--test", "32"]}[task]
    results = regularized.main(["--task", task, "--iters", "30", "--repeats", "1", "--log-every", "30",
                                "--out", str(tmp_path), *sizes])
    table = (tmp_path / "regularized.txt").read_text()
    assert "f evals per prediction solve" in table and "ratio" in table
    assert (tmp_path / "regularized.png").stat().st_size > 10_000
    for label in ("plain", "regularized"):
        r = results[label]
        assert r["rhs_evals"] > 0 and r["steps"] > 0 and r["wall"] > 0
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        assert last < first, (label, first, last)
    # the regularizer changed training (same batches, same initialization)
    assert results["plain"]["losses"][5:] != results["regularized"]["losses"][5:]
    if task == "digits":
        assert 0.0 <= results["regularized"]["accuracy"] <= 1.0 and "test cross-entropy" in table


def test_weight_schedule_decays_to_zero():
    import regularized

    weights = [regularized.weight_at(it, 100, 2.0, 0.5) for it in range(1, 101)]
    assert weights[0] == 2.0 and all(a >= b for a, b in zip(weights, weights[1:]))
    assert weights[49] > 0 and all(w == 0 for w in weights[50:])

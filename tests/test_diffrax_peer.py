"""The diffrax peer of benchmarks/stiff.py integrates the same model as pnode: the JAX vector field equals
the torch one, and at tight tolerances the two libraries' losses and parameter gradients agree.
Needs the ``benchmarks`` extra (jax, diffrax); skipped without it."""

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffrax")
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import stiff  # noqa: E402
from _diffrax_peer import DiffraxStep, configure_jax, grads_to_torch_order, make_field, params_from_torch  # noqa: E402

import pnode  # noqa: E402

configure_jax(1)


def test_field_equals_the_torch_model():
    model, y0, _, _ = stiff.build(3, 1.0)
    params = params_from_torch(model)
    field = make_field(stiff.SCALE)
    for y in [y0[0], torch.tensor([0.7, 2e-5, 0.3], dtype=torch.float64)]:
        expected = model(torch.zeros(()), y).detach().numpy()
        # the same float64 operations in the same order: equal to rounding
        np.testing.assert_allclose(np.asarray(field(0.0, y.numpy(), params)), expected, rtol=1e-14, atol=1e-18)


def test_loss_and_gradient_match_pnode():
    torch.set_num_threads(1)
    rtol, atol = 1e-10, 1e-14
    model, y0, t, scale = stiff.build(2, 1e-2)
    step = DiffraxStep(y0.numpy(), t.numpy(), stiff.SCALE, rtol, atol)
    loss, grads, final, accepted, _ = step(params_from_torch(model))

    solver = pnode.ODESolver(model, method="arkimex4", rtol=rtol, atol=atol, options={"jacobian": "batched"})
    out = solver(y0, t)
    reference = (out * scale).pow(2).mean()
    reference.backward()
    # two 4th/5th-order discretizations at rtol 1e-10: the losses agree to ~1e-9 relative, the gradients
    # (through different adjoints: discrete reverse of Kvaerno5, PETSc's discrete adjoint) to ~1e-7
    assert loss == pytest.approx(reference.item(), rel=1e-8)
    np.testing.assert_allclose(final, out[-1].detach().numpy(), rtol=1e-7, atol=1e-14)
    for mine, param in zip(grads_to_torch_order(grads), model.parameters()):
        np.testing.assert_allclose(mine, param.grad.numpy(), rtol=1e-5, atol=1e-9 * np.abs(param.grad.numpy()).max())
    assert accepted.min() > 1

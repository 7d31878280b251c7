"""The stiff benchmark's model (benchmarks/stiff.py) written in JAX and trained with diffrax, the peer pnode
is compared with: Robertson mass action with learnable log-rates plus ``1e-2 * y * mlp(y * scale)`` (3-16-3,
tanh), float64, the parameters copied from the torch model so both start from the same point.

diffrax side: ``Kvaerno5`` (an L-stable ESDIRK 5(4)), ``PIDController`` with the same rtol/atol (its
defaults: an integral controller; the Newton tolerances follow the controller's), ``SaveAt(ts=...)`` at the
output times, ``RecursiveCheckpointAdjoint`` (reverse-mode through the solver's steps, checkpointed), one
solve per sample under ``jax.vmap`` (per-sample step sizes, like independent solves), and the training
step ``jax.value_and_grad`` of the loss compiled by ``jax.jit`` ahead of time (``lower().compile()``), so
compile time is measured apart from the steady-state step.

JAX is imported by :func:`configure_jax` only: set the thread count before the first import.
"""

from __future__ import annotations

import os
import sys
import time


def configure_jax(threads: int = 0):
    """Import JAX with float64 on and, for ``threads == 1``, XLA's CPU thread pool off (one core, like
    ``torch.set_num_threads(1)``). Must run before anything imports jax. Returns the jax module."""
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                                   ).strip()
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def params_from_torch(model) -> dict:
    """The torch ``Kinetics`` model's parameters (benchmarks/stiff.py ``build``) as a dict of float64
    numpy arrays, the pytree the JAX field takes."""
    net = model.correction.net
    return {name: tensor.detach().double().numpy().copy() for name, tensor in [
        ("log_rates", model.mass.log_rates), ("w1", net[0].weight), ("b1", net[0].bias),
        ("w2", net[2].weight), ("b2", net[2].bias)]}


def grads_to_torch_order(grads: dict) -> list:
    """Gradients in the order of the torch model's ``parameters()`` (log_rates, w1, b1, w2, b2)."""
    return [grads[name] for name in ("log_rates", "w1", "b1", "w2", "b2")]


def make_field(scale):
    """The vector field ``f(t, y, params)`` of one sample (y of shape (3,)), as in the torch model."""
    import jax.numpy as jnp

    scale = jnp.asarray(scale, dtype=jnp.float64)

    def field(t, y, params):
        k1, k2, k3 = jnp.exp(params["log_rates"])
        y1, y2, y3 = y
        mass = jnp.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2, k2 * y2 * y2])
        hidden = jnp.tanh(params["w1"] @ (y * scale) + params["b1"])
        return mass + 1e-2 * y * (params["w2"] @ hidden + params["b2"])

    return field


class DiffraxStep:
    """The compiled training step of the diffrax peer: ``(loss, grads, final states, steps) = step(params)``.

    Parameters
    ----------
    y0 : array (batch, 3)
        Initial states (one diffrax solve per row, vmapped).
    t : array (n_out,)
        Output times, ``t[0]`` the start.
    scale : sequence of 3 floats
        Species scales of the field's MLP input and of the loss.
    rtol, atol : float
        Step-size controller tolerances (Kvaerno5's Newton solver takes the controller's).
    max_steps : int
        diffrax's step cap per sample (4096, its default: RecursiveCheckpointAdjoint sizes its checkpoints by it).
    """

    def __init__(self, y0, t, scale, rtol: float, atol: float, max_steps: int = 4096):
        import diffrax
        import jax
        import jax.numpy as jnp

        self.y0 = jnp.asarray(y0, dtype=jnp.float64)
        ts = jnp.asarray(t, dtype=jnp.float64)
        scale_arr = jnp.asarray(scale, dtype=jnp.float64)
        term = diffrax.ODETerm(make_field(scale))
        solver = diffrax.Kvaerno5()
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        t0, t1 = float(t[0]), float(t[-1])

        def solve_one(params, y0_one):
            sol = diffrax.diffeqsolve(term, solver, t0=t0, t1=t1, dt0=None, y0=y0_one, args=params,
                                      saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller,
                                      adjoint=diffrax.RecursiveCheckpointAdjoint(), max_steps=max_steps)
            return sol.ys, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

        def loss(params, y0_all):
            ys, accepted, rejected = jax.vmap(solve_one, in_axes=(None, 0))(params, y0_all)   # (B, n_out, 3)
            return jnp.mean((ys * scale_arr) ** 2), (ys[:, -1, :], accepted, rejected)

        self._forward = jax.jit(loss)
        self._step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        self._compiled = None
        self.compile_s = None

    def compile(self, params) -> float:
        """Trace and compile the training step for these parameter shapes; returns the seconds it took."""
        start = time.perf_counter()
        self._compiled = self._step.lower(params, self.y0).compile()
        self.compile_s = time.perf_counter() - start
        return self.compile_s

    def __call__(self, params):
        """One training step: loss, gradient pytree, final states (batch, 3) as numpy, steps per sample
        (accepted, rejected) as numpy; blocks until the results are ready."""
        import numpy as np

        if self._compiled is None:
            self.compile(params)
        (value, (final, accepted, rejected)), grads = self._compiled(params, self.y0)
        value = float(value)   # blocks until done
        return (value, {k: np.asarray(v) for k, v in grads.items()}, np.asarray(final), np.asarray(accepted),
                np.asarray(rejected))

    def loss(self, params) -> float:
        """The loss alone (forward solve only, compiled on first use)."""
        return float(self._forward(params, self.y0)[0])

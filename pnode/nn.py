"""Neural-network building blocks on top of :class:`pnode.ODESolver`: an ODE block and a continuous
normalizing flow.

* :class:`ODEBlock` maps an input ``x`` to the state at ``t1`` of ``dy/dt = func(t, y)``, ``y(0) = x``
  (a continuous-depth layer, as in the neural ODE paper's classifiers), or to the trajectory at given
  output times (``block(x, t)``: a latent ODE's latent path), with one reused PETSc solver.
* :class:`CNF` is a continuous normalizing flow (FFJORD): ``log p(x) = log N(z(t1); 0, I) - Delta(t1)``
  where ``dz/dt = net(t, z)``, ``z(0) = x`` and ``dDelta/dt = -tr(d net / dz)``.  The divergence is exact
  (one reverse pass per dimension) or Hutchinson's estimate ``e^T (d net/dz) e`` with noise ``e`` drawn
  once per solve.  The augmented state (z, Delta, the noise, the RNODE regularizers) is one tuple state
  of one pnode solve, so gradients come from PETSc's discrete adjoint and are exact for the discrete
  solution (and, with Hutchinson's trace, for the drawn noise).

How the divergence is differentiated: pnode evaluates the vector field under ``torch.no_grad()`` in the
forward solve and under ``torch.enable_grad()`` (inputs requiring grad) for the adjoint's vector-Jacobian
products.  The augmented field therefore builds its own small graph for the divergence in both cases
(``torch.enable_grad()`` inside), with ``create_graph=True`` only when the caller records a graph (the
adjoint), which then differentiates through the divergence: second derivatives of ``net``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ._api import ODESolver
from .errors import InvalidArgumentError
from .stats import SolveStats

TRACE_ESTIMATORS = ("exact", "hutchinson")
NOISE_KINDS = ("gaussian", "rademacher")
REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


def _check_module(value: object, name: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise InvalidArgumentError(
            f"{name} must be a torch.nn.Module with forward(t, y) (its parameters are what the adjoint "
            f"differentiates), got {type(value).__name__}; wrap a function in an nn.Module")
    return value


def _check_time(value: object, name: str, positive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number == 0 or (positive and number < 0):
        wanted = "a positive finite number" if positive else "a finite nonzero number"
        raise InvalidArgumentError(f"{name} must be {wanted} (the end of the integration span [0, {name}]), "
                                   f"got {value!r}")
    return number


def _check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class _SolverSlot:
    """One :class:`~pnode.ODESolver` kept across calls and rebuilt only when its settings change.

    Settings are compared by value (``options`` by a deep copy taken when the solver was built), so
    assigning e.g. ``block.rtol = 1e-4`` between calls takes effect at the next call."""

    def __init__(self) -> None:
        self.solver: ODESolver | None = None
        self._settings: tuple | None = None
        self._comm = None

    def get(self, func: nn.Module, method: str | None, rtol: float, atol: float, options: Mapping | None,
            comm) -> ODESolver:
        settings = (method, float(rtol), float(atol), copy.deepcopy(options))
        if self.solver is None or settings != self._settings or comm is not self._comm:
            self.close()
            self.solver = ODESolver(func, method=method, rtol=rtol, atol=atol, options=options, comm=comm)
            self._settings, self._comm = settings, comm
        return self.solver

    @property
    def stats(self) -> SolveStats:
        return SolveStats() if self.solver is None else self.solver.stats

    def close(self) -> None:
        if self.solver is not None:
            self.solver.close()
            self.solver = None


class ODEBlock(nn.Module):
    """A continuous-depth layer: ``x -> y(t1)`` where ``dy/dt = func(t, y)`` and ``y(0) = x``; or, called
    as ``block(x, t)``, the trajectory ``y(t_k)`` at given output times (see :meth:`forward`).

    The block keeps one :class:`pnode.ODESolver` and reuses its PETSc objects across calls; it is
    rebuilt only when ``method``, ``rtol``, ``atol``, ``options`` or ``comm`` change (they are plain
    attributes and may be reassigned between calls).  Gradients reach ``x`` and the parameters of
    ``func`` through PETSc's discrete adjoint.

    Parameters
    ----------
    func : torch.nn.Module
        The vector field, called as ``func(t, y)`` with ``t`` a 0-d tensor of ``x``'s dtype and ``y``
        shaped like ``x``; it must return ``dy/dt`` with ``y``'s shape and dtype.
    t1 : float, default 1.0
        End of the integration span ``[0, t1]`` (nonzero; negative integrates backwards).
    method, rtol, atol, options
        As for :func:`pnode.odeint` (``method=None`` is pnode's default, dopri5).  For a fixed-step
        block use e.g. ``method="rk4", options={"step_size": 0.25}``.
    comm : mpi4py communicator, optional
        Distributed solve: each rank passes its shard of the batch (see :class:`pnode.ODESolver`).  The
        gradient of ``func``'s parameters is then the gradient of the sum of all ranks' losses.

    Attributes
    ----------
    stats : pnode.SolveStats
        Statistics of the latest solve (forward and, once run, backward).
    nfe : int
        Vector-field evaluations of the latest forward solve (torchdiffeq users count these by hand).
    nfe_backward : int
        Vector-Jacobian products of the latest backward pass.
    step_times : torch.Tensor
        Accepted step boundaries of the latest forward solve.

    Raises
    ------
    pnode.InvalidArgumentError
        ``func`` is not an ``nn.Module`` or ``t1`` is not a finite nonzero number (other arguments are
        checked by :class:`pnode.ODESolver` at the first call).

    Examples
    --------
    >>> import torch, pnode
    >>> class Field(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.linear = torch.nn.Linear(4, 4)
    ...     def forward(self, t, y):
    ...         return torch.tanh(self.linear(y))
    >>> block = pnode.nn.ODEBlock(Field().double(), method="rk4", options={"step_size": 0.25})
    >>> block(torch.randn(8, 4, dtype=torch.float64)).shape
    torch.Size([8, 4])
    >>> block.stats.steps, block.nfe
    (4, 16)
    """

    def __init__(self, func: nn.Module, t1: float = 1.0, *, method: str | None = None, rtol: float = 1e-7,
                 atol: float = 1e-9, options: Mapping | None = None, comm=None):
        super().__init__()
        self.func = _check_module(func, "func")
        self.t1 = _check_time(t1, "t1", positive=False)
        self.method, self.rtol, self.atol, self.options, self.comm = method, rtol, atol, options, comm
        self._slot = _SolverSlot()

    @property
    def solver(self) -> ODESolver:
        """The block's :class:`pnode.ODESolver` (built now if the settings changed since the last call)."""
        return self._slot.get(self.func, self.method, self.rtol, self.atol, self.options, self.comm)

    def integration_time(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``tensor([0, t1])``, the output times of :meth:`forward` without ``t``."""
        return torch.tensor([0.0, self.t1], dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The state at ``t1``, or with ``t`` given the trajectory at every time of ``t``.

        Without ``t`` the block integrates ``[0, t1]`` and returns ``y(t1)``, shaped like ``x`` (a layer).
        With ``t`` it returns ``y`` at each time of ``t``, shaped ``(len(t), *x.shape)``, row 0 being
        ``x`` itself at ``t[0]``: torchdiffeq's ``odeint(func, x, t)`` (the latent trajectory of a latent
        ODE, a forecast at several horizons).  ``t1`` is then not used.  pnode's output times are step
        boundaries, so every time of ``t`` ends a step (more output times can mean more steps).
        Gradients of a loss on any rows reach ``x`` and ``func``'s parameters (and ``t``, if it
        requires grad) through PETSc's discrete adjoint.

        Parameters
        ----------
        x : torch.Tensor
            Initial state (a batch; under ``comm`` this rank's shard).
        t : torch.Tensor, optional
            1-D strictly monotone output times (increasing, or decreasing to integrate backwards; a
            single time returns ``x`` alone); default ``None``: ``integration_time()``, returning only
            the last state.

        Returns
        -------
        torch.Tensor
            ``y(t1)`` (shape of ``x``), or ``y`` at every time of ``t`` (shape ``(len(t), *x.shape)``).

        Raises
        ------
        pnode.InvalidArgumentError
            ``t`` is empty, not 1-D or not strictly monotone (from :class:`pnode.ODESolver`).

        Examples
        --------
        >>> import torch, pnode
        >>> class Decay(torch.nn.Module):
        ...     def forward(self, t, y):
        ...         return -y
        >>> block = pnode.nn.ODEBlock(Decay(), rtol=1e-10, atol=1e-12)
        >>> x = torch.ones(2, 3, dtype=torch.float64)
        >>> ys = block(x, torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64))
        >>> ys.shape
        torch.Size([3, 2, 3])
        >>> [round(float(v), 6) for v in ys[:, 0, 0]]       # exp(-t)
        [1.0, 0.606531, 0.135335]
        """
        if t is None:
            time_dtype = x.dtype if x.is_floating_point() else torch.float64
            return self.solver(x, self.integration_time(time_dtype))[-1]
        return self.solver(x, t)

    @property
    def stats(self) -> SolveStats:
        return self._slot.stats

    @property
    def nfe(self) -> int:
        return self.stats.rhs_evals

    @property
    def nfe_backward(self) -> int:
        return self.stats.vjp_evals

    @property
    def step_times(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.float64) if self._slot.solver is None else self._slot.solver.step_times

    def close(self) -> None:
        """Free the PETSc objects now (a later call builds them again)."""
        self._slot.close()

    def extra_repr(self) -> str:
        return f"t1={self.t1}, method={self.method or 'dopri5'!r}, rtol={self.rtol:g}, atol={self.atol:g}"


# ---------------------------------------------------------------------------------------------- CNF
def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per sample: ``(N,)`` for ``z`` of shape ``(N, *event_shape)``.

    Parameters
    ----------
    z : torch.Tensor
        Batch of points.

    Returns
    -------
    torch.Tensor
        Log-densities, one per row of ``z``.

    Examples
    --------
    >>> float(standard_normal_log_prob(torch.zeros(1, 2, dtype=torch.float64)))  # -log(2 pi)
    -1.8378770664093453
    """
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * flat.pow(2).sum(-1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def sample_noise(shape: Sequence[int], kind: str = "gaussian", *, dtype: torch.dtype = torch.float64,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``e`` with ``E[e e^T] = I`` for Hutchinson's trace estimator.

    Parameters
    ----------
    shape : sequence of int
        Shape of the noise (the shape of the state ``z``).
    kind : {"gaussian", "rademacher"}
        Standard normal entries, or entries +1/-1 with probability 1/2 each (lower variance).
    dtype : torch.dtype
        Floating-point dtype of the result.
    generator : torch.Generator, optional
        Random stream to draw from (default: torch's global one).

    Returns
    -------
    torch.Tensor

    Raises
    ------
    pnode.InvalidArgumentError
        ``kind`` is not one of the two.

    Examples
    --------
    >>> e = sample_noise((3, 2), "rademacher", generator=torch.Generator().manual_seed(0))
    >>> bool(((e == 1) | (e == -1)).all())
    True
    """
    _check_choice(kind, "noise", NOISE_KINDS)
    if kind == "gaussian":
        return torch.randn(*shape, dtype=dtype, generator=generator)
    return torch.randint(0, 2, tuple(shape), generator=generator).to(dtype) * 2 - 1


class _CNFDynamics(nn.Module):
    """The augmented field of a CNF on the tuple state ``(z, Delta, [e], [kinetic], [frobenius])``.

    ``e`` (Hutchinson's noise) is carried in the state with zero derivative: each solve holds its own
    draw, fixed through the forward solve and the adjoint, whatever other solves run in between."""

    def __init__(self, net: nn.Module, trace: str, regularization: tuple[str, ...]):
        super().__init__()
        self.net = net
        self.trace = trace
        self.kinetic = "kinetic_energy" in regularization
        self.frobenius = "jacobian_frobenius" in regularization

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z = state[0]
        # detached: nothing depends on the noise's adjoint (its derivative is 0), so the adjoint's VJPs
        # need not differentiate through it (measured ~4% off a Hutchinson training step)
        noise = state[2].detach() if self.trace == "hutchinson" else None
        # True in the adjoint's VJPs: the divergence must then stay differentiable (second derivatives)
        build_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_()     # forward solve: a leaf for the divergence's reverse passes
            dz = self.net(t, z)
            if noise is None:
                divergence, frobenius = _exact_divergence(dz, z, build_graph, self.frobenius)
            else:
                vjp = _grad(dz, z, noise, build_graph)             # e^T J
                divergence = (vjp * noise).reshape(len(z), -1).sum(-1)
                frobenius = vjp.pow(2).reshape(len(z), -1).sum(-1) if self.frobenius else None
        derivatives = [dz, -divergence]
        if noise is not None:
            derivatives.append(torch.zeros_like(noise))
        if self.kinetic:
            derivatives.append(dz.pow(2).reshape(len(z), -1).sum(-1))
        if self.frobenius:
            derivatives.append(frobenius)
        if not build_graph:
            derivatives = [d.detach() for d in derivatives]
        return tuple(derivatives)


def _grad(output: torch.Tensor, wrt: torch.Tensor, cotangent: torch.Tensor, create_graph: bool) -> torch.Tensor:
    (grad,) = torch.autograd.grad(output, wrt, cotangent, create_graph=create_graph, retain_graph=True,
                                  allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad


def _exact_divergence(dz: torch.Tensor, z: torch.Tensor, create_graph: bool,
                      frobenius: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tr(d dz / dz)`` per sample by one reverse pass per dimension (row ``i`` of every sample's
    Jacobian at once: samples are independent), and ``|J|_F^2`` from the same rows if asked."""
    n = len(z)
    flat_out = dz.reshape(n, -1)
    divergence = torch.zeros(n, dtype=dz.dtype)
    squares = torch.zeros(n, dtype=dz.dtype) if frobenius else None
    for i in range(flat_out.shape[1]):
        row = _grad(flat_out[:, i], z, torch.ones(n, dtype=dz.dtype), create_graph).reshape(n, -1)
        divergence = divergence + row[:, i]
        if frobenius:
            squares = squares + row.pow(2).sum(-1)
    return divergence, squares


class _Field(nn.Module):
    """``net`` alone as a vector field (sampling integrates it without the log-density)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(t, z)


class CNFOutput(NamedTuple):
    """What :meth:`CNF.forward` returns.

    log_prob: ``(N,)`` log-density of each input under the flow.
    z: ``(N, *event_shape)`` the inputs mapped to the base space (the state at ``t1``).
    delta_log_prob: ``(N,)`` ``Delta(t1) = -int_0^t1 tr(J) dt``, so ``log_prob = log N(z) - delta_log_prob``.
    regularization: name -> ``(N,)`` integral over ``[0, t1]`` for each requested regularizer
        (``"kinetic_energy"``: ``int |f|^2 dt``; ``"jacobian_frobenius"``: ``int |J|_F^2 dt``, exact with
        the exact trace and ``int |e^T J|^2 dt`` with Hutchinson's).  Add their means, weighted, to the loss.
    """

    log_prob: torch.Tensor
    z: torch.Tensor
    delta_log_prob: torch.Tensor
    regularization: dict[str, torch.Tensor]


class CNF(nn.Module):
    """A continuous normalizing flow with a standard-normal base, trained through pnode's discrete adjoint.

    ``z(0) = x``, ``dz/dt = net(t, z)`` on ``[0, t1]``; ``log p(x) = log N(z(t1); 0, I) + int tr(J) dt``.
    Sampling draws ``z ~ N(0, I)`` and integrates ``net`` backwards from ``t1`` to 0 without gradients.

    Parameters
    ----------
    net : torch.nn.Module
        The flow's vector field ``net(t, z)`` for a batch ``z`` of shape ``(N, *event_shape)``; it must
        not mix samples (the exact trace reads each sample's Jacobian rows from one reverse pass) and must
        be twice differentiable (the adjoint differentiates its divergence: use tanh/softplus, not ReLU).
    t1 : float, default 1.0
        Length of the flow (positive).
    trace : {"exact", "hutchinson"}
        Exact divergence (one reverse pass per dimension; for small dimensions) or Hutchinson's
        unbiased estimate ``e^T J e`` (one reverse pass), with ``e`` drawn once per solve, carried in the
        solve's state and so held fixed through the forward solve and the adjoint: the gradient is exact
        for that estimate.
    noise : {"gaussian", "rademacher"}
        Distribution of Hutchinson's ``e``.
    regularization : sequence of {"kinetic_energy", "jacobian_frobenius"}
        RNODE regularizers integrated as extra components of the state, returned by :meth:`forward` in
        ``CNFOutput.regularization``.
    method, rtol, atol, options, comm
        As for :class:`pnode.ODESolver`; one solver is kept for densities and one for sampling.  Note that
        the adaptive error norm includes every component of the augmented state (as torchdiffeq's does).
    event_shape : sequence of int, optional
        Shape of one sample; needed by :meth:`sample` before any :meth:`log_prob` call (later it is
        taken from the inputs seen).
    generator : torch.Generator, optional
        Random stream for Hutchinson's noise and for :meth:`sample` (default: torch's global one).

    Raises
    ------
    pnode.InvalidArgumentError
        ``net`` is not an ``nn.Module``; ``t1`` is not a positive number; ``trace``, ``noise`` or a
        ``regularization`` name is unknown.

    Examples
    --------
    >>> import torch, pnode
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    ...     def forward(self, t, z):
    ...         return self.layers(torch.cat([z, t.expand(len(z), 1)], dim=1))
    >>> cnf = pnode.nn.CNF(Net().double(), method="rk4", options={"step_size": 0.25},
    ...                    regularization=("kinetic_energy",))
    >>> out = cnf(torch.randn(5, 2, dtype=torch.float64))
    >>> loss = -out.log_prob.mean() + 0.01 * out.regularization["kinetic_energy"].mean()
    >>> loss.backward()
    >>> cnf.sample(3).shape
    torch.Size([3, 2])
    """

    def __init__(self, net: nn.Module, t1: float = 1.0, *, trace: str = "exact", noise: str = "gaussian",
                 regularization: Sequence[str] | str = (), method: str | None = None, rtol: float = 1e-7,
                 atol: float = 1e-9, options: Mapping | None = None, comm=None,
                 event_shape: Sequence[int] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        net = _check_module(net, "net")
        self.t1 = _check_time(t1, "t1", positive=True)
        self.trace = _check_choice(trace, "trace", TRACE_ESTIMATORS)
        self.noise = _check_choice(noise, "noise", NOISE_KINDS)
        names = (regularization,) if isinstance(regularization, str) else tuple(regularization)
        for name in names:
            _check_choice(name, "regularization", REGULARIZERS)
        self.regularization = tuple(dict.fromkeys(names))
        self.method, self.rtol, self.atol, self.options, self.comm = method, rtol, atol, options, comm
        self.event_shape = None if event_shape is None else tuple(int(s) for s in event_shape)
        self.generator = generator
        self.dynamics = _CNFDynamics(net, self.trace, self.regularization)
        self._sampling_field = _Field(net)
        self._density = _SolverSlot()
        self._sampling = _SolverSlot()

    @property
    def net(self) -> nn.Module:
        return self.dynamics.net

    @property
    def solver(self) -> ODESolver:
        """The solver of the augmented (density) system."""
        return self._density.get(self.dynamics, self.method, self.rtol, self.atol, self.options, self.comm)

    @property
    def stats(self) -> SolveStats:
        """Statistics of the latest density solve (:meth:`forward` / :meth:`log_prob`)."""
        return self._density.stats

    @property
    def sampling_stats(self) -> SolveStats:
        """Statistics of the latest sampling solve (:meth:`sample` / :meth:`inverse`)."""
        return self._sampling.stats

    @property
    def nfe(self) -> int:
        return self.stats.rhs_evals

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> CNFOutput:
        """Map ``x`` to the base space and return its log-density, ``z(t1)`` and the regularizers.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, *event_shape)`` data points (under ``comm``, this rank's shard).
        noise : torch.Tensor, optional
            Hutchinson's ``e`` (shape of ``x``) for this solve; drawn with :func:`sample_noise` if not
            given.  Ignored by the exact trace.

        Returns
        -------
        CNFOutput

        Raises
        ------
        pnode.InvalidArgumentError
            ``x`` is not a floating-point batch, or ``noise`` has the wrong shape.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise InvalidArgumentError(f"x must be a floating-point tensor of shape (N, *event_shape), got "
                                       f"{type(x).__name__}{tuple(getattr(x, 'shape', ()))}")
        if self.event_shape is None:
            self.event_shape = tuple(x.shape[1:])
        n = len(x)
        state = [x, torch.zeros(n, dtype=x.dtype)]
        if self.trace == "hutchinson":
            if noise is None:
                noise = sample_noise(x.shape, self.noise, dtype=x.dtype, generator=self.generator)
            elif tuple(noise.shape) != tuple(x.shape):
                raise InvalidArgumentError(f"noise must have the shape of x, {tuple(x.shape)}, got "
                                           f"{tuple(noise.shape)}")
            state.append(noise.to(x.dtype).detach())
        state += [torch.zeros(n, dtype=x.dtype) for _ in self.regularization]
        t = torch.tensor([0.0, self.t1], dtype=x.dtype)
        final = [part[-1] for part in self.solver(tuple(state), t)]
        z, delta = final[0], final[1]
        extras = final[3:] if self.trace == "hutchinson" else final[2:]
        return CNFOutput(log_prob=standard_normal_log_prob(z) - delta, z=z, delta_log_prob=delta,
                         regularization=dict(zip(self.regularization, extras)))

    def log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``(N,)`` log-density of ``x`` under the flow (see :meth:`forward`).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, *event_shape)`` points.
        noise : torch.Tensor, optional
            Hutchinson's noise for this solve.

        Returns
        -------
        torch.Tensor
        """
        return self.forward(x, noise).log_prob

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map base-space points ``z`` to data space: integrate ``net`` from ``t1`` back to 0.

        Parameters
        ----------
        z : torch.Tensor
            ``(N, *event_shape)`` points in the base space.

        Returns
        -------
        torch.Tensor
            ``x`` with ``z(t1) = z``, shape of ``z``.
        """
        solver = self._sampling.get(self._sampling_field, self.method, self.rtol, self.atol, self.options,
                                    self.comm)
        return solver(z, torch.tensor([self.t1, 0.0], dtype=z.dtype))[-1]

    @torch.no_grad()
    def sample(self, n: int, *, dtype: torch.dtype | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of the flow: ``z ~ N(0, I)`` mapped by :meth:`inverse` (no gradients).

        Parameters
        ----------
        n : int
            Number of samples (under ``comm``, this rank's number).
        dtype : torch.dtype, optional
            Default: the dtype of ``net``'s first parameter (float64 if it has none).
        generator : torch.Generator, optional
            Default: the CNF's ``generator`` (or torch's global stream).

        Returns
        -------
        torch.Tensor
            ``(n, *event_shape)``.

        Raises
        ------
        pnode.InvalidArgumentError
            ``n`` is not a positive int, or the event shape is unknown (pass ``event_shape=``).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"n must be a positive int, got {n!r}")
        if self.event_shape is None:
            raise InvalidArgumentError("the CNF does not know the shape of a sample yet: pass event_shape= to "
                                       "CNF(...) or call log_prob once before sample")
        if dtype is None:
            first = next(iter(self.net.parameters()), None)
            dtype = torch.float64 if first is None else first.dtype
        base = torch.randn(n, *self.event_shape, dtype=dtype,
                           generator=self.generator if generator is None else generator)
        return self.inverse(base)

    def close(self) -> None:
        """Free the PETSc objects now (a later call builds them again)."""
        self._density.close()
        self._sampling.close()

    def extra_repr(self) -> str:
        regs = f", regularization={self.regularization}" if self.regularization else ""
        noise = f", noise={self.noise!r}" if self.trace == "hutchinson" else ""
        return f"t1={self.t1}, trace={self.trace!r}{noise}{regs}, method={self.method or 'dopri5'!r}"


__all__ = ["ODEBlock", "CNF", "CNFOutput", "sample_noise", "standard_normal_log_prob", "TRACE_ESTIMATORS",
           "NOISE_KINDS", "REGULARIZERS"]

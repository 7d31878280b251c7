"""The user's vector field on PETSc memory: ``g(tau, y) = sign * f(sign * tau, y)`` evaluated on flat
float64 arrays, its vector-Jacobian products, Jacobian products at a kept linearization point, and
per-sample Jacobian blocks.  Tensors only: no PETSc objects here (the callbacks live in ``_rhs`` and
``_implicit``).

Time direction: a decreasing ``t`` is integrated as ``tau = -t`` with ``g(tau, y) = -f(-tau, y)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._batching import BATCH_ENTRIES, PointTable
from ._bridge import StateLayout
from ._spec import SolveSpec
from ._tracing import TracedCall
from .stats import SolveStats

# jacobian_blocks stacks d copies of the batch while d * (unknowns) stays below this
EXPANDED_LIMIT = 4096
DIFFERENCE_STEP = float(np.sqrt(np.finfo(np.float64).eps))     # forward differences' relative increment
DIFFERENCE_LIMIT = 1 << 16      # entries of the stacked copies of one difference Jacobian (no graph: 0.5 MiB)


class VectorField:
    """``f`` with the bridge applied: flat float64 arrays in and out, time direction folded in
    (``g(tau, y) = sign * f(sign * tau, y)``).

    The time direction and the parameters come from the call's :class:`~pnode._spec.SolveSpec`; only
    the driver sets them, with :meth:`bind`, when a forward or backward pass starts."""

    def __init__(self, func: Callable, layout: StateLayout, time_dtype: torch.dtype, stats: SolveStats):
        self.func = func
        self.layout = layout
        self.time_dtype = time_dtype
        self.stats = stats
        self.sign = 1.0
        self.params: tuple[torch.Tensor, ...] = ()
        self.nudge: Callable[[float], float] | None = None    # perturb / jump_t: +1/-1 into the step, 0
        self.graphs: StageGraphs | None = None     # options['keep_graph']: the forward's stage graphs
        self.keep_point_graph = False     # the adjoint: jacobian_blocks keeps its graph for param VJPs
        self._point_graph: tuple[float, np.ndarray, torch.Tensor] | None = None
        self._copies_ok = True            # func accepts a batch of another size (jacobian_blocks)
        self._vmap_ok = True              # func runs under torch.func.vmap (the adjoint's batched passes)
        self.traced: TracedCall | None = None     # options['trace']: func's trace for no-grad evaluations
        self.generation = 0               # counts solves (bind): a trace is checked once per solve
        self._prepared = PointTable()     # Jacobian blocks evaluated ahead for the adjoint's stages

    def bind(self, spec: SolveSpec) -> None:
        """Take this call's time direction and parameters (the driver calls it at entry)."""
        self.sign = spec.sign
        self.params = spec.params
        self.generation += 1

    def use_trace(self) -> None:
        """``options['trace']``: no-grad evaluations call ``func``'s trace (:mod:`pnode._tracing`)."""
        self.traced = TracedCall(self.func)

    def time(self, tau: float) -> torch.Tensor:
        t = torch.scalar_tensor(self.sign * tau, dtype=self.time_dtype)
        inward = 0.0 if self.nudge is None else self.nudge(tau)
        if inward:
            # one ulp of the dtype func sees (float32 rounds a float64 ulp away), into the current step
            t = torch.nextafter(t, t + inward * self.sign)
        return t

    def evaluate_into(self, tau: float, x: np.ndarray, out: np.ndarray) -> None:
        """out <- g(tau, x); without autograd, unless stage graphs are being kept for the adjoint."""
        self.stats.rhs_evals += 1
        layout = self.layout
        graphs = self.graphs
        if graphs is not None and graphs.recording:
            point = x.copy()          # PETSc reuses its stage Vecs: the graph needs its own input
            with torch.enable_grad():
                inputs = layout.views(point, requires_grad=True)
                result = layout.check_output(self.func(self.time(tau), layout.pack(inputs)))
            graphs.store(tau, point, inputs, result)
            layout.write(out, result, self.sign)
            return
        layout.write(out, layout.check_output(self._no_grad_call(tau, x)), self.sign)

    def _no_grad_call(self, tau: float, x: np.ndarray):
        """func(tau, x) without autograd (through its trace with ``options['trace']``)."""
        if torch.is_grad_enabled():     # (the autograd Function's forward already runs without autograd)
            with torch.no_grad():
                return self._no_grad_call(tau, x)
        state = self.layout.pack(self.layout.views(x))
        traced = self.traced
        return self.func(self.time(tau), state) if traced is None else traced(self.time(tau), state, self.generation)

    def residual_into(self, tau: float, x: np.ndarray, xdot: np.ndarray, out: np.ndarray) -> None:
        """out <- xdot - g(tau, x) (the IFunction), without autograd; one pass over ``out`` for a single
        float64 state."""
        layout = self.layout
        if self.graphs is not None or not layout.plain:
            self.evaluate_into(tau, x, out)
            np.subtract(xdot, out, out=out)
            return
        self.stats.rhs_evals += 1
        (result,) = layout.check_output(self._no_grad_call(tau, x))
        if result.shape != layout.shapes[0] or result.device.type != "cpu":
            layout.write(out, (result,), self.sign)     # raises the shape error, or copies from the device
            np.subtract(xdot, out, out=out)
            return
        values = (result.detach() if result.requires_grad else result).numpy().reshape(-1)
        (np.subtract if self.sign > 0 else np.add)(xdot, values, out=out)

    def evaluate(self, tau: float, x: torch.Tensor) -> torch.Tensor:
        """g(tau, x) for a flat float64 tensor ``x`` (a new tensor)."""
        out = torch.empty_like(x)
        self.evaluate_into(tau, x.detach().numpy(), out.numpy())
        return out

    def vjp(self, tau: float, x: np.ndarray, cotangent: np.ndarray,
            state_out: np.ndarray | None) -> list[torch.Tensor | None]:
        """One autograd pass at (tau, x) with cotangent ``c``: writes ``J^T c`` into ``state_out`` (if
        given) and returns ``(dg/dtheta)^T c`` per parameter (``None`` where independent)."""
        self.stats.vjp_evals += 1
        if state_out is None and self._point_graph is not None:
            grads = self._vjp_on_point_graph(tau, x, cotangent)
            if grads is not None:
                return grads
        layout = self.layout
        want_state = state_out is not None
        kept = None if self.graphs is None else self.graphs.find(tau, x)
        with torch.enable_grad():
            if kept is not None:      # the forward pass's graph of this stage: no re-evaluation
                inputs, result = kept
                inputs = list(inputs) if want_state else []
            else:
                inputs = layout.views(x, requires_grad=want_state)
                result = layout.check_output(self.func(self.time(tau), layout.pack(inputs)))
            cot = layout.views(cotangent, scale=self.sign)
            pairs = [(r, c) for r, c in zip(result, cot) if r.requires_grad]
            wrt = (inputs if want_state else []) + list(self.params)
            if pairs and wrt:
                # a kept graph serves this stage twice when the method reuses it (first same as last)
                grads = list(torch.autograd.grad([r for r, _ in pairs], wrt, grad_outputs=[c for _, c in pairs],
                                                 allow_unused=True, retain_graph=kept is not None))
            else:
                grads = [None] * len(wrt)
        if want_state:
            layout.write(state_out, grads[:len(inputs)], name="the vector-Jacobian product")
            grads = grads[len(inputs):]
        return grads

    def drop_point_graph(self) -> None:
        self._point_graph = None

    def _vjp_on_point_graph(self, tau: float, x: np.ndarray, cotangent: np.ndarray) -> list | None:
        """``(dg/dtheta)^T c`` by one backward pass through the graph :meth:`jacobian_blocks` kept at this
        very point (the adjoint asks for the stage Jacobian, then for parameter VJPs at the same stage);
        ``None`` at another point."""
        kept_tau, kept_x, out = self._point_graph
        if kept_tau != tau or not np.array_equal(kept_x, x):
            return None
        if not self.params or not out.requires_grad:
            return [None] * len(self.params)
        c = torch.from_numpy(cotangent)
        if out.numel() > c.numel():     # the graph of d stacked copies: the point is the first copy
            c = torch.cat([c, c.new_zeros(out.numel() - c.numel())])
        with torch.enable_grad():
            return list(torch.autograd.grad(out, self.params, c, retain_graph=True, allow_unused=True))

    # --- implicit methods: Jacobian products and Jacobian blocks ------------------------------
    def flat_function(self, tau: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """z -> g(tau, z) on flat float64 tensors (differentiable, batched or not)."""
        t = self.time(tau)
        return lambda z: self._flat_call(t, z)

    def _flat_call(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """g(t, z) on a flat float64 ``z`` (leading dimensions are batch dimensions)."""
        layout = self.layout
        parts = [z[..., lo:hi].reshape(tuple(z.shape[:-1]) + shape).to(layout.dtype)
                 for lo, hi, shape in layout.slices]
        out = layout.check_output(self.func(t, layout.pack(parts)))
        return torch.cat([o.reshape(*z.shape[:-1], -1) for o in out], dim=-1).to(torch.float64) * self.sign

    # --- the adjoint's stages in batches (pnode._batching) ------------------------------------
    @property
    def batchable(self) -> bool:
        """The adjoint's stage work may be batched: ``func`` ran under vmap so far, and no per-evaluation
        hook (perturb, jump_t, step callbacks) moves the times it sees."""
        return self._vmap_ok and self.nudge is None

    def _times(self, points) -> torch.Tensor:
        return torch.stack([self.time(tau) for tau, _ in points])

    def prepare_jacobians(self, points: list[tuple[float, np.ndarray]], n_blocks: int) -> int:
        """Evaluate the Jacobian blocks at every point ``(tau, x)`` in vectorized passes of at most
        :data:`~pnode._batching.BATCH_ENTRIES` entries, for :meth:`jacobian_blocks` to find; returns
        how many were evaluated (0 when ``func`` cannot run under vmap: the adjoint then evaluates each
        stage's Jacobian itself)."""
        self._prepared.clear()
        if not points or not self.batchable:
            return 0
        n = self.layout.size
        d = n // n_blocks
        per_pass = max(1, BATCH_ENTRIES // (d * n))
        done = 0
        for lo in range(0, len(points), per_pass):
            chunk = points[lo:lo + per_pass]
            blocks = self.jacobian_blocks_many(chunk, n_blocks)
            if blocks is None:
                self._prepared.clear()
                return 0
            for (tau, x), block in zip(chunk, blocks):
                self._prepared.add(tau, x, block)
            done += len(chunk)
        self.stats.jacobian_assemblies += done
        return done

    def forget_prepared(self) -> None:
        self._prepared.clear()

    def jacobian_blocks_many(self, points: list[tuple[float, np.ndarray]], n_blocks: int) -> torch.Tensor | None:
        """Blocks ``(len(points), n_blocks, d, d)`` of dg/dy at every point, from one vmapped evaluation
        of ``func`` over the points and the ``d`` row patterns, and one reverse pass (the rows of
        :meth:`jacobian_blocks`); ``None`` if ``func`` does not run under vmap."""
        n = self.layout.size
        d = n // n_blocks
        times = self._times(points)
        states = torch.from_numpy(np.stack([x for _, x in points]))
        z = states.unsqueeze(1).expand(len(points), d, n).clone().requires_grad_()
        try:
            with torch.enable_grad():
                out = torch.func.vmap(torch.func.vmap(self._flat_call, in_dims=(None, 0)))(times, z)
        except Exception:  # noqa: BLE001 - func is not vmappable (data-dependent code, .item(), ...)
            self._vmap_ok = False
            return None
        if not out.requires_grad:
            return torch.zeros(len(points), n_blocks, d, d, dtype=torch.float64)
        # pattern j: e_j in every block, so the reverse pass gives row j of every block
        basis = torch.eye(d, dtype=torch.float64).unsqueeze(1).expand(d, n_blocks, d).reshape(d, n)
        (rows,) = torch.autograd.grad(out, z, basis.expand(len(points), d, n), allow_unused=True)
        if rows is None:
            return torch.zeros(len(points), n_blocks, d, d, dtype=torch.float64)
        return rows.view(len(points), d, n_blocks, d).transpose(1, 2)

    def param_vjps(self, points: list[tuple[float, torch.Tensor]], weights: torch.Tensor
                   ) -> list[torch.Tensor | None]:
        """``sum_k (dg/dtheta (tau_k, x_k))^T w_k`` per parameter: vmapped evaluations over the points
        (at most :data:`~pnode._batching.BATCH_ENTRIES` state entries per pass; for a ``func`` that does
        not run under vmap, one evaluation per point) and one reverse pass per chunk."""
        self.stats.vjp_evals += len(points)
        if not self.params:
            return []
        total: list[torch.Tensor | None] = [None] * len(self.params)
        per_pass = max(1, BATCH_ENTRIES // self.layout.size)
        for lo in range(0, len(points), per_pass):
            grads = self._param_vjps(points[lo:lo + per_pass], weights[lo:lo + per_pass])
            total = [g if t is None else t if g is None else t + g for t, g in zip(total, grads)]
        return total

    def _param_vjps(self, points, weights) -> list[torch.Tensor | None]:
        times = self._times(points)
        states = torch.stack([x for _, x in points])
        with torch.enable_grad():
            out = None
            if self._vmap_ok:
                try:
                    out = torch.func.vmap(self._flat_call)(times, states)
                except Exception:  # noqa: BLE001 - not vmappable: evaluate point by point
                    self._vmap_ok = False
            if out is None:
                out = torch.stack([self._flat_call(t, x) for t, x in zip(times, states)])
            if not out.requires_grad:
                return [None] * len(self.params)
            return list(torch.autograd.grad(out, self.params, weights, allow_unused=True))

    def linearize(self, tau: float, x: torch.Tensor) -> Linearization:
        """g's graph at (tau, x), kept for the many Jacobian products of one Newton or adjoint solve."""
        return Linearization(self, tau, x)

    def jacobian_blocks(self, tau: float, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Blocks ``(n_blocks, d, d)`` of dg/dy at (tau, x) when the state's leading dimension holds
        ``n_blocks`` independent samples (``n_blocks == 1``: the dense Jacobian).

        Samples are independent, so row ``j`` of every block comes from a reverse pass with the
        cotangent ``e_j`` in every sample.  Two ways of running the ``d`` passes, both exact:

        * small batches of samples (``n_blocks > 1``, ``d * n <= EXPANDED_LIMIT``): ``func`` is evaluated
          once on ``d`` copies of the batch stacked along the batch dimension, and one plain reverse pass
          with cotangent ``e_j`` in copy ``j`` gives every row (no vmap machinery: 1.4-1.5x faster at
          d = 3, batch 4-64);
        * otherwise one graph of ``func`` over the batch and one batched ``autograd.grad`` over the ``d``
          cotangents (measured 1.5-3x faster than ``vmap(jacrev)`` for d = 3..32, about equal at 64;
          faster than the copies from batch ~400 at d = 3).

        ``func`` that refuses a batch of another size (a per-sample tensor inside) gets the second way
        from then on."""
        if self._prepared:
            blocks = self._prepared.find(tau, x.numpy())
            if blocks is not None and blocks.shape[0] == n_blocks:
                self._point_graph = None
                return blocks
        self.stats.jacobian_assemblies += 1
        d = len(x) // n_blocks
        self._point_graph = None
        with torch.enable_grad():
            rows = None
            # copies along the batch dimension only where the samples are declared independent
            if n_blocks > 1 and self._copies_ok and d * len(x) <= EXPANDED_LIMIT:
                rows = self._rows_from_copies(tau, x, n_blocks, d)
            if rows is None:
                rows = self._rows_batched(tau, x, n_blocks, d)
        if rows is None:
            return torch.zeros(n_blocks, d, d, dtype=torch.float64)
        return rows.view(d, n_blocks, d).transpose(0, 1)

    def difference_blocks(self, tau: float, x: torch.Tensor, n_blocks: int) -> torch.Tensor | None:
        """Blocks ``(n_blocks, d, d)`` of dg/dy at (tau, x) by forward differences, from one evaluation
        without autograd of ``d + 1`` copies of the batch stacked along the batch dimension (copy ``j``
        moved along component ``j`` in every sample), or ``None`` where they do not apply (a state that
        is not one float64 tensor, copies of more than ``DIFFERENCE_LIMIT`` entries, a ``func`` that
        refuses a batch of another size): the caller then evaluates the exact blocks.

        Chord Newton's forward iteration matrix only (the adjoint's are exact): its error, about 1e-6 of
        a block's largest entry (rounding against truncation), is far below the staleness a kept
        Jacobian has anyway, and the Newton test decides the solution (measured on
        ``benchmarks/stiff.py``: the same iterations, gradients equal to 7e-13; 3.5x cheaper than the
        reverse pass at d = 3, batch 4)."""
        layout = self.layout
        d = len(x) // n_blocks
        if n_blocks < 2 or not self._copies_ok or not layout.plain or (d + 1) * len(x) > DIFFERENCE_LIMIT:
            return None
        shape = layout.shapes[0]
        state = x.view(n_blocks, d)
        # increments: sqrt(eps) of each component, or of a hundredth of its sample's RMS when smaller
        # (components near zero: Robertson's y2 starts at 0), or of 1 for a sample that is all zero
        scale = torch.maximum(state.abs(), 1e-2 * state.pow(2).mean(1, keepdim=True).sqrt())
        scale = torch.where(scale > 0, scale, 1.0)
        copies = state.repeat(d + 1, 1, 1)
        moved = copies[1:].diagonal(dim1=0, dim2=2)            # (batch, d): copy j's component j
        moved.add_(DIFFERENCE_STEP * scale)
        steps = (moved - state).T                              # the increments as represented: (d, batch)
        with torch.no_grad():
            out = self._call_on_copies(tau, copies.view((d + 1) * shape[0], *shape[1:]))
        if out is None or out.dtype != torch.float64:     # (exact blocks then raise a dtype error)
            return None
        self.stats.jacobian_assemblies += 1
        out = out.view(d + 1, n_blocks, d) * self.sign
        columns = (out[1:] - out[0]) / steps.unsqueeze(-1)      # (component j, sample, d/dy_j of g)
        return columns.permute(1, 2, 0).contiguous()

    def _rows_batched(self, tau: float, x: torch.Tensor, n_blocks: int, d: int) -> torch.Tensor | None:
        basis = torch.eye(d, dtype=torch.float64).unsqueeze(1).expand(d, n_blocks, d).reshape(d, -1)
        z = x.detach().clone().requires_grad_()
        out = self.flat_function(tau)(z)
        if self.keep_point_graph:
            self._point_graph = (tau, x.numpy().copy(), out)
        if not out.requires_grad:    # g does not depend on y
            return None
        (rows,) = torch.autograd.grad(out, z, basis, is_grads_batched=True, allow_unused=True,
                                      retain_graph=self.keep_point_graph)
        return rows

    def _call_on_copies(self, tau: float, z: torch.Tensor) -> torch.Tensor | None:
        """func(tau, z) for copies of the batch stacked along the batch dimension, or ``None`` (and no
        copies from then on) when func depends on the batch size."""
        try:
            out = self.func(self.time(tau), z)
            if not isinstance(out, torch.Tensor) or out.shape != z.shape:
                raise ValueError("not a batch of the copies' shape")
        except Exception:  # noqa: BLE001 - func depends on the batch size: per-batch passes from now on
            self._copies_ok = False
            return None
        return out

    def _rows_from_copies(self, tau: float, x: torch.Tensor, n_blocks: int, d: int) -> torch.Tensor | None:
        layout = self.layout
        shape = layout.shapes[0]
        n = len(x)
        copies = x.detach().view(1, n).expand(d, n).reshape((d * shape[0],) + tuple(shape[1:]))
        z = copies.to(layout.dtype).requires_grad_()
        out = self._call_on_copies(tau, z)
        if out is None:
            return None
        if out.dtype != layout.dtype:
            layout.check_output(out)     # raises the usual dtype error
        out = out.reshape(-1).to(torch.float64) * self.sign
        if self.keep_point_graph:
            self._point_graph = (tau, x.numpy().copy(), out)
        if not out.requires_grad:
            return None
        # copy j of sample b holds e_j: the reverse pass gives row j of block b there
        cotangent = torch.eye(d, dtype=torch.float64).view(d, 1, d).expand(d, n_blocks, d).reshape(-1)
        (rows,) = torch.autograd.grad(out, z, cotangent, allow_unused=True, retain_graph=self.keep_point_graph)
        return None if rows is None else rows.reshape(d, n).to(torch.float64)

    def part(self, func: Callable) -> VectorField:
        """A field evaluating ``func`` that follows this field's time direction and parameters (the
        implicit or explicit half of an IMEX split); traced too when this field is."""
        part = _PartField(func, self)
        if self.traced is not None:
            part.use_trace()
        return part


class StageGraphs:
    """The autograd graphs of the forward pass's stage evaluations, kept for the adjoint (explicit
    methods, ``options['keep_graph']``): the adjoint's VJP at a stage then is one backward pass through
    the kept graph instead of a re-evaluation plus a backward pass; memory is that of backpropagation
    through the solver (bounded by the checkpoint schedule's segment when checkpointing).

    A stage is found again by its time and its exact state (the adjoint reads the stages back from
    PETSc's trajectory, bitwise the values the forward pass computed).  Graphs of rejected attempts are
    dropped when the step is accepted (:meth:`accept`)."""

    def __init__(self) -> None:
        self.recording = False
        self.kept = PointTable()          # (tau, state) -> (inputs, result) of accepted steps' stages
        self._pending: list[tuple[float, float, float, np.ndarray, list, tuple]] = []
        self.attempt: tuple[float, float] = (0.0, 0.0)     # (step start, step) being evaluated

    def store(self, tau: float, point: np.ndarray, inputs: list, result: tuple) -> None:
        self._pending.append((*self.attempt, tau, point, inputs, result))

    def accept(self, end: float) -> None:
        """The step that ends at ``end`` was accepted: keep its stages, drop rejected attempts'."""
        for start, dt, tau, point, inputs, result in self._pending:
            if start + dt == end:
                self.kept.add(tau, point, (inputs, result))
        self._pending = []

    def find(self, tau: float, x: np.ndarray) -> tuple[list, tuple] | None:
        return self.kept.find(tau, x)

    def clear(self) -> None:
        self.kept.clear()
        self._pending = []


class Linearization:
    """Jacobian products ``J v`` and ``J^T c`` of ``g`` at one point (tau, x), on one kept graph.

    ``J^T c`` is one reverse pass.  ``J v`` is a double reverse pass: ``u(c) = J^T c`` built with
    ``create_graph`` is linear in ``c``, so ``d(u . v)/dc = J v``.  Measured on small MLP fields, this was
    ~7x faster than ``torch.func.jvp`` (whose forward mode ran through torch's Python decompositions),
    and keeping the graph makes every Krylov iteration at the same point one backward pass."""

    def __init__(self, field: VectorField, tau: float, x: torch.Tensor):
        self.field, self.tau = field, tau
        self.z = x.detach().clone().requires_grad_()
        self._out: torch.Tensor | None = None
        self._transposed: tuple[torch.Tensor, torch.Tensor] | None = None   # (c, J^T c with graph)

    def _output(self) -> torch.Tensor:
        if self._out is None:
            with torch.enable_grad():
                self._out = self.field.flat_function(self.tau)(self.z)
        return self._out

    def _grad(self, output: torch.Tensor, wrt: torch.Tensor, cotangent: torch.Tensor,
              create_graph: bool = False) -> torch.Tensor:
        if not output.requires_grad:        # g does not depend on y here
            return torch.zeros_like(wrt)
        (grad,) = torch.autograd.grad(output, wrt, cotangent, retain_graph=True, create_graph=create_graph,
                                      allow_unused=True)
        return torch.zeros_like(wrt) if grad is None else grad

    def vjp(self, c: torch.Tensor) -> torch.Tensor:
        """``J^T c``."""
        self.field.stats.vjp_evals += 1
        with torch.enable_grad():
            return self._grad(self._output(), self.z, c).detach()

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v``."""
        self.field.stats.jvp_evals += 1
        with torch.enable_grad():
            if self._transposed is None:
                out = self._output()
                c = torch.zeros_like(out, requires_grad=True)
                self._transposed = (c, self._grad(out, self.z, c, create_graph=True))
            c, transposed = self._transposed
            return self._grad(transposed, c, v).detach()


class _PartField(VectorField):
    """One term of a split vector field; ``sign`` and ``params`` are read from the whole field."""

    def __init__(self, func: Callable, whole: VectorField):
        self.func = func
        self.whole = whole
        self.graphs = None
        self.keep_point_graph = False
        self._point_graph = None
        self._copies_ok = True
        self._vmap_ok = True
        self._prepared = PointTable()
        self.traced = None
        self.layout = whole.layout
        self.time_dtype = whole.time_dtype
        self.stats = whole.stats

    @property
    def sign(self) -> float:
        return self.whole.sign

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        return self.whole.params

    @property
    def nudge(self):
        return self.whole.nudge

    @property
    def generation(self) -> int:
        return self.whole.generation

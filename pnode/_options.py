"""Validation of the ``options`` dict of ``odeint``/``ODESolver`` and of the PETSc options it carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ._checkpointing import CheckpointPolicy
from ._jacobian import JACOBIAN_STRATEGIES
from ._petsc import PETSc
from .errors import InvalidArgumentError

_DOC = {
    "step_size": "fixed step size h (steps of h from t[0], shortened to land on every output time)",
    "first_step": "initial step size of an adaptive solve (default: Hairer's heuristic)",
    "max_num_steps": "largest number of accepted steps before the solve fails (default 1,000,000)",
    "petsc": "dict of raw PETSc options, e.g. {'ts_adapt_type': 'dsp', 'ts_monitor': None}",
    "checkpoints": "bound the adjoint's memory: K (states in RAM), {'ram': K, 'disk': M}, or a factory "
                   "n_steps -> checkpoint_schedules schedule (default: keep every step in memory)",
    "jacobian": "implicit methods: 'matrix_free' (JVP/VJP shells, GMRES), 'batched' (leading dim of y0 = "
                "independent samples: per-sample blocks, exact batched LU), 'dense', or assembled in a PETSc AIJ "
                "matrix: 'aij' (dense rows) / 'aij_batched' (per-sample blocks); default: dense up to 64 "
                "unknowns, matrix_free above; 'aij' for gl4, gl6, radauIIA3, radauIIA5 (which need aij*)",
    "newton": "implicit methods: 'chord' (default: the forward pass evaluates the Jacobian once per step and "
              "reuses it for that step's Newton iterations; the adjoint always uses each stage's exact Jacobian) "
              "or 'full' (a new Jacobian at every Newton iteration)",
    "chord_jacobian": "implicit methods with jacobian='batched' and chord Newton: 'differences' (default) forms the "
                      "forward pass's kept Jacobian blocks by forward differences, one evaluation of d+1 stacked "
                      "copies of the batch (about 3x cheaper than autograd's reverse pass for small d; exact blocks "
                      "after a stalled or failed Newton solve, and always in the adjoint), or 'exact' (autograd)",
    "predictor": "implicit methods on pnode's Newton loop (ARKIMEX, DIRK): True (default) starts each stage's "
                 "Newton iteration where its slope equals the last stage's (the derivative predictor: about a "
                 "quarter fewer iterations on stiff problems), False from PETSc's guess (the previous stage)",
    "theta": "theta of method='theta' (default 0.5)",
    "keep_graph": "explicit methods: keep every stage's autograd graph from the forward pass for the adjoint "
                  "(no re-evaluation: about the speed and the memory of backpropagation through the solver; "
                  "with checkpoints, only the graphs of the segment being reversed); default False",
    "trace": "True: the solver's evaluations without autograd (forward residuals and stages; not the adjoint's) "
             "call func compiled by torch.jit.trace: about 2x faster calls of small fields. Checked against func at "
             "every solve's first evaluation (retraced if they differ); refused, with a warning and eager calls, "
             "when tracing reports a Python-value conversion (branches on tensor values, float(t)); default False",
    # torchdiffeq's step control, mapped onto PETSc's adaptor
    "min_step": "adaptive methods: smallest step the controller may take (PETSc -ts_adapt_dt_min)",
    "max_step": "adaptive methods: largest step (PETSc -ts_adapt_dt_max; inf = no limit)",
    "safety": "adaptive methods: safety factor of the controller (PETSc -ts_adapt_safety, default 0.9)",
    "ifactor": "adaptive methods: largest step growth factor (PETSc -ts_adapt_clip, upper bound)",
    "dfactor": "adaptive methods: smallest step shrink factor (PETSc -ts_adapt_clip, lower bound)",
    "step_t": "adaptive methods: times (a tensor) that steps must land on",
    "jump_t": "adaptive methods: times where func jumps: steps land there, the method restarts, and func is "
              "evaluated just inside each step at that time (one-sided, as torchdiffeq)",
    "norm": "adaptive methods: torchdiffeq's error norm, a callable on the state (tensor or tuple); honoured when it "
            "is a weighted RMS or max norm (PETSc's adaptor computes those: -ts_adapt_wnormtype 2 / infinity with "
            "per-component tolerances), refused otherwise; fixed-grid methods ignore it, as torchdiffeq's do",
    # torchdiffeq's fixed-grid options
    "grid_constructor": "fixed-grid methods: grid_constructor(func, y0, t) -> step times from t[0] to t[-1] "
                        "(output times are inserted as steps)",
    "perturb": "evaluate func just inside each step at the step's two ends (nextafter), for a func that is "
               "discontinuous at the step times (torchdiffeq's perturb)",
    "solver": "method='scipy_solver' only: scipy.integrate.solve_ivp's method ('RK45' default, 'RK23', 'DOP853', "
              "'Radau', 'BDF', 'LSODA'); forward only",
    "interp": "torchdiffeq's interpolation of fixed-grid outputs ('linear' or 'cubic'): the Adams methods "
              "interpolate outputs between grid points with it; PETSc's methods accept it and need not: their steps "
              "land on every output time, so outputs are scheme values",
    # torchdiffeq's Adams options
    "max_order": "explicit_adams / implicit_adams: highest order of the Adams formulas, 1..12 (default 12)",
    "max_iters": "implicit_adams: most corrector (functional) iterations per step (default 4)",
}


NEWTON_VARIANTS = ("chord", "full")


@dataclass(frozen=True)
class SolveOptions:
    step_size: float | None = None
    first_step: float | None = None
    max_num_steps: int = 1_000_000
    petsc: dict[str, str] = field(default_factory=dict)
    checkpoints: CheckpointPolicy | None = None     # parsed once, here
    jacobian: str | None = None
    newton: str = "chord"
    theta: float | None = None
    adjoint_rtol: float | None = None     # the transposed linear solves of implicit methods
    adjoint_atol: float | None = None
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    grid_constructor: object = None
    perturb: bool = False
    trace: bool = False
    keep_graph: bool = False
    solver: str | None = None            # scipy_solver's scipy method
    min_step: float | None = None        # torchdiffeq's controller settings (None: PETSc's default)
    max_step: float | None = None
    safety: float | None = None
    ifactor: float | None = None
    dfactor: float | None = None
    interp: str = "linear"               # Adams methods: outputs between grid points
    max_order: int | None = None         # Adams methods (None: 12)
    max_iters: int | None = None         # implicit_adams (None: 4)
    norm: object = None                  # torchdiffeq's error norm (a callable), identified per state layout
    norm_type: str | None = None         # PETSc's -ts_adapt_wnormtype it was identified as
    predictor: bool = True               # chord Newton's stage guess: the derivative predictor
    chord_jacobian: str = "differences"  # chord Newton's forward Jacobian blocks: 'differences' or 'exact'

    @property
    def adapt(self) -> dict[str, str]:
        """torchdiffeq's controller settings as PETSc adaptor options."""
        out = {petsc: repr(value) for petsc, value in (("ts_adapt_dt_min", self.min_step),
                                                         ("ts_adapt_dt_max", self.max_step),
                                                         ("ts_adapt_safety", self.safety)) if value is not None}
        if self.norm_type is not None:
            out["ts_adapt_wnormtype"] = self.norm_type
        if self.ifactor is not None or self.dfactor is not None:
            out["ts_adapt_clip"] = f"{self.dfactor or 0.1!r},{self.ifactor or 10.0!r}"
        return out

    def landmarks(self, sign: float) -> tuple[tuple[float, ...], frozenset]:
        """step_t and jump_t in integration time (sorted), and the jump times among them."""
        jumps = frozenset(sign * t for t in self.jump_t)
        return tuple(sorted({sign * t for t in self.step_t} | jumps)), jumps

    def with_adjoint(self, method: str, rtol: float | None, atol: float | None, adjoint_method: str | None,
                     adjoint_options: Mapping | None) -> SolveOptions:
        """Take torchdiffeq's adjoint arguments, with their meaning for a discrete adjoint."""
        if adjoint_method is not None and adjoint_method.strip().lower() != method:
            raise InvalidArgumentError(
                f"adjoint_method={adjoint_method!r} differs from method={method!r}: a discrete adjoint is the "
                "adjoint of the forward method's own steps; leave adjoint_method=None")
        if adjoint_options is not None:
            if not isinstance(adjoint_options, Mapping) or set(adjoint_options) - {"norm"}:
                raise InvalidArgumentError(
                    f"adjoint_options may only hold 'norm' (accepted; a discrete adjoint has no step-size control "
                    f"for it to steer), got {adjoint_options!r}; use options={{'petsc': {{...}}}} for the "
                    "transposed solves' settings")
        return replace(self, adjoint_rtol=rtol, adjoint_atol=atol)

    @classmethod
    def parse(cls, options: Mapping | None) -> SolveOptions:
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise InvalidArgumentError(f"options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(_DOC))
        if unknown:
            listing = "\n".join(f"  {k}: {v}" for k, v in _DOC.items())
            raise InvalidArgumentError(f"unknown option(s) {', '.join(map(repr, unknown))}; valid options:\n{listing}")
        step_size = _positive(options, "step_size")
        first_step = _positive(options, "first_step")
        max_steps = options.get("max_num_steps", cls.max_num_steps)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise InvalidArgumentError(f"options['max_num_steps'] must be a positive int, got {max_steps!r}")
        jacobian = options.get("jacobian")
        if jacobian is not None and jacobian not in JACOBIAN_STRATEGIES:
            names = ", ".join(map(repr, JACOBIAN_STRATEGIES))
            raise InvalidArgumentError(f"options['jacobian'] must be one of {names} or None (default), "
                                       f"got {jacobian!r}")
        newton = options.get("newton", cls.newton)
        if newton not in NEWTON_VARIANTS:
            raise InvalidArgumentError(f"options['newton'] must be 'chord' or 'full', got {newton!r}")
        chord_jacobian = options.get("chord_jacobian", cls.chord_jacobian)
        if chord_jacobian not in ("differences", "exact"):
            raise InvalidArgumentError(f"options['chord_jacobian'] must be 'differences' or 'exact', got "
                                       f"{chord_jacobian!r}")
        theta = _positive(options, "theta")
        if theta is not None and theta > 1:
            raise InvalidArgumentError(f"options['theta'] must lie in (0, 1], got {theta!r}")

        checkpoints = CheckpointPolicy.parse(options.get("checkpoints"))
        interp = options.get("interp")
        if interp not in (None, "linear", "cubic"):
            raise InvalidArgumentError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
        grid = options.get("grid_constructor")
        if grid is not None and not callable(grid):
            raise InvalidArgumentError("options['grid_constructor'] must be callable as grid_constructor(func, y0, t), "
                                       f"got {type(grid).__name__}")
        return cls(step_size, first_step, max_steps, normalise_petsc_options(options.get("petsc")), checkpoints,
                   jacobian, newton, theta, step_t=_times(options, "step_t"),
                   jump_t=_times(options, "jump_t"), grid_constructor=grid, perturb=bool(options.get("perturb")),
                   keep_graph=bool(options.get("keep_graph")), solver=options.get("solver"),
                   **_step_bounds(options), safety=_positive(options, "safety"),
                   ifactor=_positive(options, "ifactor"), dfactor=_positive(options, "dfactor"),
                   interp=interp or "linear", max_order=_count(options, "max_order", 12),
                   max_iters=_count(options, "max_iters", None), norm=_norm(options), trace=_flag(options, "trace"),
                   predictor=_flag(options, "predictor", True), chord_jacobian=chord_jacobian)


def _flag(options: Mapping, key: str, default: bool = False) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"options[{key!r}] must be True or False, got {value!r}")
    return value


def _norm(options: Mapping):
    norm = options.get("norm")
    if norm is not None and not callable(norm):
        raise InvalidArgumentError(f"options['norm'] must be callable as norm(state) -> 0-dim tensor, got "
                                   f"{type(norm).__name__}")
    return norm


def _count(options: Mapping, key: str, largest: int | None) -> int | None:
    """A positive int option (at most ``largest``), or None when absent."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (largest is not None and value > largest):
        bound = f" at most {largest}" if largest is not None else ""
        raise InvalidArgumentError(f"options[{key!r}] must be a positive int{bound}, got {value!r}")
    return value


def _step_bounds(options: Mapping) -> dict[str, float | None]:
    """min_step / max_step (torchdiffeq writes min_step=0 and max_step=inf for "no bound")."""
    low = None if options.get("min_step") in (None, 0) else _positive(options, "min_step")
    high = None if options.get("max_step") in (None, math.inf) else _positive(options, "max_step")
    if low is not None and high is not None and low > high:
        raise InvalidArgumentError(f"options['min_step'] ({low}) exceeds options['max_step'] ({high})")
    return {"min_step": low, "max_step": high}


def _times(options: Mapping, key: str) -> tuple[float, ...]:
    value = options.get(key)
    if value is None:
        return ()
    try:
        values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgumentError(f"options[{key!r}] must be a 1-D tensor of times, got {value!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"options[{key!r}] must hold finite times, got {values}")
    return tuple(values)


def _positive(options: Mapping, key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"options[{key!r}] must be a positive number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise InvalidArgumentError(f"options[{key!r}] must be a positive finite number, got {value!r}")
    return number


def normalise_petsc_options(petsc: Mapping | None) -> dict[str, str]:
    """``{'-ts_monitor': None, 'ts_rk_type': '5bs', 'ts_max_reject': 20}`` -> PETSc's string form."""
    if petsc is None:
        return {}
    if not isinstance(petsc, Mapping):
        raise InvalidArgumentError(f"options['petsc'] must be a dict of PETSc options, got {type(petsc).__name__}")
    out = {}
    for key, value in petsc.items():
        if not isinstance(key, str) or not key.strip("-"):
            raise InvalidArgumentError(f"PETSc option names must be strings like 'ts_monitor', got {key!r}")
        if isinstance(value, bool):
            value = "1" if value else "0"
        out[key.lstrip("-")] = "" if value is None else str(value)
    return out


class OptionsScope:
    """Puts Python-given PETSc options into the global database around ``setFromOptions`` calls.

    Options already in the database (the command line, ``PETSC_OPTIONS``) are left alone, so the command
    line wins; the ones added here are removed afterwards so they do not leak into other solvers.
    ``force`` options override even the command line for the duration (pnode's own invariants).
    """

    def __init__(self, options: Mapping[str, str], force: Mapping[str, str] | None = None):
        self.options = dict(options)
        self.force = dict(force or {})
        self._added: list[str] = []
        self._replaced: dict[str, str] = {}

    def __enter__(self) -> OptionsScope:
        db = PETSc.Options()
        for key, value in self.force.items():
            if db.hasName(key):
                self._replaced[key] = db.getString(key)
            else:
                self._added.append(key)
            db.setValue(key, value)
        for key, value in self.options.items():
            if not db.hasName(key):
                db.setValue(key, value)
                self._added.append(key)
        return self

    def __exit__(self, *exc) -> None:
        db = PETSc.Options()
        for key in self._added:
            db.delValue(key)
        for key, value in self._replaced.items():
            db.setValue(key, value)
        self._added.clear()
        self._replaced.clear()

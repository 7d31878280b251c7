"""Validation of the ``options`` dict of ``odeint``/``ODESolver`` and of the PETSc options it carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

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
                "independent samples: per-sample blocks, exact batched LU) or 'dense'; default: dense up to "
                "64 unknowns, matrix_free above",
    "theta": "theta of method='theta' (default 0.5)",
}


@dataclass(frozen=True)
class SolveOptions:
    step_size: float | None = None
    first_step: float | None = None
    max_num_steps: int = 1_000_000
    petsc: dict[str, str] = field(default_factory=dict)
    checkpoints: CheckpointPolicy | None = None     # parsed once, here
    jacobian: str | None = None
    theta: float | None = None

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
        theta = _positive(options, "theta")
        if theta is not None and theta > 1:
            raise InvalidArgumentError(f"options['theta'] must lie in (0, 1], got {theta!r}")

        checkpoints = CheckpointPolicy.parse(options.get("checkpoints"))
        return cls(step_size, first_step, max_steps, normalise_petsc_options(options.get("petsc")), checkpoints,
                   jacobian, theta)


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

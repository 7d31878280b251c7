"""The method table: every integrator name pnode accepts, and what PETSc TS type runs it.

Explicit Runge-Kutta methods run in PETSc's RHS form (``form="rhs"``); implicit ones (theta family,
ARKIMEX, DIRK, BDF, Rosenbrock-W) in the IFunction form (``form="implicit"``).  ARKIMEX rows are also
IMEX-capable (``imex=True``): given a :class:`pnode.IMEXField`, the stiff part is implicit and the rest
explicit.

One table, no ``if`` ladders: a method is a row, looked up by name.  torchdiffeq's names map onto the
PETSc tableau that implements the same scheme; every PETSc Runge-Kutta tableau is also available as
``"rk" + <PETSc TSRKType>`` (``rk1fe``, ``rk2a``, ..., ``rk8vr``), so ``-ts_rk_type 5bs`` on the command
line and ``method="rk5bs"`` in Python name the same scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import AdjointNotAvailableError, UnknownMethodError


@dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes
    ----------
    name: the name users pass as ``method=``.
    ts_type: PETSc ``TSType`` (``"rk"``, ...).
    tableau: PETSc sub-type (``TSRKType`` for ``rk``), or ``None``.
    order: order of accuracy of the propagated solution.
    adaptive: the tableau has an embedded error estimate, so steps adapt to ``rtol``/``atol`` unless a
        ``step_size`` is given.  Methods without one step on a fixed grid.
    implicit: stages need nonlinear solves.
    adjoint: PETSc implements the discrete adjoint (TSAdjoint) for it.
    form: which PETSc callback form runs it: ``"rhs"`` (explicit) or ``"implicit"`` (IFunction form).
    imex: the TS type can split f into an implicit and an explicit part (ARKIMEX).
    description: one line for listings and error messages.
    """

    name: str
    ts_type: str
    tableau: str | None
    order: int
    adaptive: bool
    implicit: bool = False
    adjoint: bool = True
    description: str = ""
    form: str = "rhs"
    imex: bool = False


def _rk(name: str, tableau: str, order: int, adaptive: bool, description: str) -> Method:
    return Method(name, "rk", tableau, order, adaptive, description=description)


# PETSc's explicit Runge-Kutta tableaux (TSRKType), in PETSc's own naming.  PETSc 3.26 has embedded
# error estimates for 2a, 3bs, 5f, 5dp, 5bs, 6vr, 7vr and 8vr only; the others step on a fixed grid.
_PETSC_RK = [
    _rk("rk1fe", "1fe", 1, False, "forward Euler"),
    _rk("rk2a", "2a", 2, True, "Heun's method (explicit trapezoid), embedded Euler"),
    _rk("rk2b", "2b", 2, False, "explicit midpoint"),
    _rk("rk3", "3", 3, False, "third-order three-stage Runge-Kutta"),
    _rk("rk3bs", "3bs", 3, True, "Bogacki-Shampine 3(2), FSAL"),
    _rk("rk4", "4", 4, False, "classic fourth-order Runge-Kutta"),
    _rk("rk5f", "5f", 5, True, "Fehlberg 5(4)"),
    _rk("rk5dp", "5dp", 5, True, "Dormand-Prince 5(4), FSAL"),
    _rk("rk5bs", "5bs", 5, True, "Bogacki-Shampine 5(4)"),
    _rk("rk6vr", "6vr", 6, True, "Verner 6(5)"),
    _rk("rk7vr", "7vr", 7, True, "Verner 7(6)"),
    _rk("rk8vr", "8vr", 8, True, "Verner 8(7)"),
]

# torchdiffeq's names for the same schemes (``rk4`` is already PETSc's name for the classic tableau;
# torchdiffeq's rk4 uses the 3/8 rule, pnode the classic one).  euler/midpoint/heun2/rk4 are fixed-grid
# solvers: they step on the output grid or on ``step_size``.
_TORCHDIFFEQ = [
    _rk("euler", "1fe", 1, False, "forward Euler (= rk1fe)"),
    _rk("midpoint", "2b", 2, False, "explicit midpoint, fixed steps (= rk2b)"),
    _rk("heun2", "2a", 2, False, "Heun's method, fixed steps (= rk2a)"),
    _rk("bosh3", "3bs", 3, True, "Bogacki-Shampine 3(2) (= rk3bs)"),
    _rk("dopri5", "5dp", 5, True, "Dormand-Prince 5(4) (= rk5dp)"),
]


def _implicit(name: str, ts_type: str, tableau: str | None, order: int, adaptive: bool, description: str,
              adjoint: bool = True) -> Method:
    return Method(name, ts_type, tableau, order, adaptive, implicit=True, adjoint=adjoint,
                  description=description, form="implicit", imex=ts_type == "arkimex")


# Implicit methods with a PETSc discrete adjoint: the theta family (fixed steps) and the L-stable ARKIMEX
# and DIRK tableaux (adaptive: all have an embedded estimate).  bdf and rosw integrate forward only.
_PETSC_IMPLICIT = [
    _implicit("beuler", "beuler", None, 1, False, "backward Euler (L-stable)"),
    _implicit("cn", "cn", None, 2, False, "Crank-Nicolson (trapezoid, A-stable)"),
    _implicit("theta", "theta", None, 2, False,
              "theta method, midpoint form; theta = options['theta'] (default 0.5; order 1 unless 0.5)"),
    _implicit("arkimexl2", "arkimex", "l2", 2, True, "ARKIMEX L-stable 2(1), IMEX-capable"),
    _implicit("arkimex3", "arkimex", "3", 3, True, "ARKIMEX Kennedy-Carpenter 3(2), L-stable, IMEX-capable"),
    _implicit("arkimex4", "arkimex", "4", 4, True, "ARKIMEX Kennedy-Carpenter 4(3), L-stable, IMEX-capable"),
    _implicit("arkimex5", "arkimex", "5", 5, True, "ARKIMEX Kennedy-Carpenter 5(4), L-stable, IMEX-capable"),
    _implicit("dirks212", "dirk", "s212", 2, True, "SDIRK 2(1), two stages, L-stable"),
    _implicit("dirkes122sal", "dirk", "es122sal", 1, True, "ESDIRK 1(2), stiffly accurate, L-stable"),
    _implicit("dirkes213sal", "dirk", "es213sal", 2, True, "ESDIRK 2(1), stiffly accurate, L-stable"),
    _implicit("dirkes324sal", "dirk", "es324sal", 3, True, "ESDIRK 3(2), four stages, stiffly accurate, L-stable"),
    _implicit("dirkes325sal", "dirk", "es325sal", 3, True, "ESDIRK 3(2), five stages, stiffly accurate, L-stable"),
    _implicit("bdf", "bdf", None, 2, True, "BDF (order 2 by default; -ts_bdf_order); forward only, no adjoint",
              adjoint=False),
    _implicit("rosw", "rosw", None, 3, True, "Rosenbrock-W (PETSc default tableau); forward only, no adjoint",
              adjoint=False),
]
# short names for the default tableau of each family
_ALIASES = [
    replace(row, name=alias, description=f"{row.description} (= {row.name})")
    for alias, row in (("arkimex", _PETSC_IMPLICIT[4]), ("dirk", _PETSC_IMPLICIT[10]))
]

# how each TS type's tableau is set and read back (types without tableaux are absent)
TABLEAU_ACCESS = {
    "rk": ("setRKType", "getRKType"),
    "arkimex": ("setARKIMEXType", "getARKIMEXType"),
    "dirk": ("setDIRKType", "getDIRKType"),
}

METHODS: dict[str, Method] = {m.name: m for m in _PETSC_RK}
METHODS.update({m.name: m for m in _TORCHDIFFEQ})
METHODS.update({m.name: m for m in _PETSC_IMPLICIT})
METHODS.update({m.name: m for m in _ALIASES})

DEFAULT_METHOD = "dopri5"


def available_methods() -> list[str]:
    """All method names, sorted."""
    return sorted(METHODS)


def method_table() -> str:
    """A human-readable listing of the method table (used in docs and error messages)."""
    rows = [f"  {m.name:<13} {m.ts_type + '/' + (m.tableau or '-'):<17} order {m.order}"
            f"{'  adaptive' if m.adaptive else '  fixed   '}  {m.description}"
            for m in sorted(METHODS.values(), key=lambda m: m.name)]
    return "\n".join(rows)


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name raises :class:`UnknownMethodError` listing the valid ones."""
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a string naming an integrator, got {type(name).__name__}; "
                                 f"valid methods: {', '.join(available_methods())}")
    key = name.strip().lower()
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods are:\n{method_table()}")
    return METHODS[key]


def by_petsc_type(ts_type: str, tableau: str | None, form: str = "rhs") -> Method | None:
    """The row PETSc is actually running (after command-line options), preferring PETSc's own naming;
    only rows of the given callback ``form`` qualify (a TS needs the callbacks it was built with)."""
    for m in _PETSC_RK + _PETSC_IMPLICIT:
        if m.ts_type == ts_type and m.tableau == tableau and m.form == form:
            return m
    return None


def set_tableau(ts, method: Method) -> None:
    """Give ``ts`` the method's tableau (types without one have nothing to set)."""
    if method.tableau is not None:
        getattr(ts, TABLEAU_ACCESS[method.ts_type][0])(method.tableau)


def running_tableau(ts) -> str | None:
    """The tableau ``ts`` runs now (after options), or ``None`` for types without tableaux."""
    access = TABLEAU_ACCESS.get(ts.getType())
    return getattr(ts, access[1])() if access else None


def require_adjoint(method: Method) -> None:
    if not method.adjoint:
        raise AdjointNotAvailableError(
            f"PETSc has no discrete adjoint for method {method.name!r} (TS type {method.ts_type}); "
            "gradients need one of: " + ", ".join(n for n, m in sorted(METHODS.items()) if m.adjoint))

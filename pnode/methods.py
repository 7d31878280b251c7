"""The method table: every integrator name pnode accepts, and what PETSc TS type runs it.

Explicit Runge-Kutta methods run in PETSc's RHS form (``form="rhs"``); implicit ones (theta family,
ARKIMEX, DIRK, BDF, Rosenbrock-W) in the IFunction form (``form="implicit"``).  ARKIMEX rows are also
IMEX-capable (``imex=True``): given a :class:`pnode.IMEXField`, the stiff part is implicit and the rest
explicit.

One table, no ``if`` ladders: a method is a row, looked up by name.  torchdiffeq's names map onto the
PETSc tableau that implements the same scheme; where PETSc ships no such tableau, pnode registers the
published one with PETSc (:mod:`pnode._tableaux`: Tsitouras 5(4), Dormand-Prince 8(7), Fehlberg 1(2),
Heun 3, the 3/8 rule, SDIRK2, TR-BDF2, implicit midpoint, Gauss-Legendre, Radau IIA), so PETSc runs it
natively with its controller and, except for the fully implicit TSIRK family (Gauss-Legendre, Radau
IIA: forward only, on an assembled Jacobian), its adjoint.  Every PETSc Runge-Kutta tableau is also
available as ``"rk" + <PETSc TSRKType>`` (``rk1fe``, ``rk2a``, ..., ``rk8vr``), so ``-ts_rk_type 5bs`` on the command
line and ``method="rk5bs"`` in Python name the same scheme; the one exception is PETSc's classic RK4
(``-ts_rk_type 4``), which is ``rk4classic`` because ``rk4`` is torchdiffeq's 3/8-rule variant.

Two families run outside PETSc, and say so in the table: torchdiffeq's Adams methods (``explicit_adams``,
``implicit_adams``; PETSc has no Adams type) are integrated by pnode in plain torch with an exact discrete
gradient (:mod:`pnode._adams`), and ``scipy_solver`` calls scipy, forward only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import _tableaux
from .errors import UnknownMethodError


@dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes
    ----------
    name: the name users pass as ``method=``.
    ts_type: PETSc ``TSType`` (``"rk"``, ...); ``"torch"`` (pnode's own Adams integrator) and ``"scipy"``
        for the rows PETSc does not run (:attr:`petsc` is False for them).
    tableau: PETSc sub-type (``TSRKType`` for ``rk``), or ``None``.
    order: order of accuracy of the propagated solution.
    adaptive: the tableau has an embedded error estimate, so steps adapt to ``rtol``/``atol`` unless a
        ``step_size`` is given.  Methods without one step on a fixed grid.
    implicit: stages need nonlinear solves.
    adjoint: a discrete adjoint exists: PETSc's TSAdjoint (pnode's autograd through the steps for the
        plain-torch Adams rows).
    form: which PETSc callback form runs it: ``"rhs"`` (explicit) or ``"implicit"`` (IFunction form);
        ``"torch"`` and ``"scipy"`` for the rows integrated outside PETSc.
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

    @property
    def petsc(self) -> bool:
        """Whether PETSc integrates this method (False: pnode's plain-torch Adams methods, scipy)."""
        return self.form in ("rhs", "implicit")


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
    _rk("rk4classic", "4", 4, False, "classic fourth-order Runge-Kutta (PETSc's TSRK4)"),
    _rk("rk5f", "5f", 5, True, "Fehlberg 5(4)"),
    _rk("rk5dp", "5dp", 5, True, "Dormand-Prince 5(4), FSAL"),
    _rk("rk5bs", "5bs", 5, True, "Bogacki-Shampine 5(4)"),
    _rk("rk6vr", "6vr", 6, True, "Verner 6(5)"),
    _rk("rk7vr", "7vr", 7, True, "Verner 7(6)"),
    _rk("rk8vr", "8vr", 8, True, "Verner 8(7)"),
]

# torchdiffeq's names.  euler/midpoint/heun2/heun3/rk4 are fixed-grid solvers: they step on the output grid
# or on ``step_size``.  Tableaux PETSc lacks are registered with it (pnode/_tableaux.py) under the names in
# the second column; they are PETSc RK types like any other (``-ts_rk_type tsit5`` works).
_TORCHDIFFEQ = [
    _rk("euler", "1fe", 1, False, "forward Euler (= rk1fe)"),
    _rk("midpoint", "2b", 2, False, "explicit midpoint, fixed steps (= rk2b)"),
    _rk("heun2", "2a", 2, False, "Heun's method, fixed steps (= rk2a)"),
    _rk("heun3", "heun3", 3, False, "Heun's third-order method, fixed steps (registered tableau)"),
    _rk("rk4", "rk38", 4, False, "Kutta's 3/8-rule fourth-order Runge-Kutta, fixed steps, as torchdiffeq's rk4 "
        "(registered tableau; PETSc's classic RK4 is rk4classic)"),
    _rk("adaptive_heun", "2a", 2, True, "Heun's method with embedded Euler, adaptive (= rk2a)"),
    _rk("fehlberg2", "fehlberg2", 2, True, "Fehlberg 1(2), second-order weights propagated, adaptive "
        "(registered tableau)"),
    _rk("bosh3", "3bs", 3, True, "Bogacki-Shampine 3(2) (= rk3bs)"),
    _rk("dopri5", "5dp", 5, True, "Dormand-Prince 5(4) (= rk5dp)"),
    _rk("tsit5", "tsit5", 5, True, "Tsitouras 5(4), FSAL, adaptive (registered tableau)"),
    _rk("dopri8", "dopri8", 8, True, "Dormand-Prince (Prince-Dormand 1981) 8(7), 13 stages, adaptive "
        "(registered tableau)"),
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
# torchdiffeq's implicit fixed-grid names: the theta family where it is the same scheme, registered DIRK
# tableaux otherwise (all with PETSc's discrete adjoint); stepped on the output grid or ``step_size``
_TORCHDIFFEQ_IMPLICIT = [
    _implicit("implicit_euler", "beuler", None, 1, False, "backward Euler, fixed steps (= beuler)"),
    _implicit("trapezoid", "cn", None, 2, False, "trapezoidal rule, fixed steps (= cn)"),
    _implicit("implicit_midpoint", "dirk", "gauss2", 2, False,
              "implicit midpoint rule (one-stage Gauss), fixed steps (registered DIRK tableau)"),
    _implicit("sdirk2", "dirk", "sdirk2", 2, False,
              "Alexander's two-stage SDIRK, gamma = 1 - 1/sqrt(2), L-stable, fixed steps (registered DIRK tableau)"),
    _implicit("trbdf2", "dirk", "trbdf2", 2, False,
              "TR-BDF2 as a three-stage ESDIRK, L-stable, fixed steps (registered DIRK tableau)"),
]
# fully implicit collocation methods: PETSc's TSIRK runs them (pnode registers the tableaux) on an assembled
# AIJ Jacobian (options['jacobian'] 'aij', the default for them), on the output grid or ``step_size`` as
# torchdiffeq's fixed-grid solvers do; forward only: TSIRK has no discrete adjoint in PETSc 3.26
_IRK = [
    _implicit("gl4", "irk", "gl4", 4, False, "Gauss-Legendre, 2 stages, fixed steps (TSIRK); forward only, no "
              "adjoint", adjoint=False),
    _implicit("gl6", "irk", "gl6", 6, False, "Gauss-Legendre, 3 stages, fixed steps (TSIRK); forward only, no "
              "adjoint", adjoint=False),
    _implicit("radauIIA3", "irk", "radauIIA3", 3, False, "Radau IIA, 2 stages, fixed steps (TSIRK); forward only, "
              "no adjoint", adjoint=False),
    _implicit("radauIIA5", "irk", "radauIIA5", 5, False, "Radau IIA, 3 stages, fixed steps (TSIRK); forward only, "
              "no adjoint", adjoint=False),
]

# short names for the default tableau of each family
_ALIASES = [
    replace(row, name=alias, description=f"{row.description} (= {row.name})")
    for alias, row in (("arkimex", _PETSC_IMPLICIT[4]), ("dirk", _PETSC_IMPLICIT[10]))
]

# how each TS type's tableau is set and read back (types without tableaux are absent); TSIRK's setter and
# getter are not wrapped by petsc4py 3.26 and go through pnode._tableaux
TABLEAU_ACCESS = {
    "rk": ("setRKType", "getRKType"),
    "arkimex": ("setARKIMEXType", "getARKIMEXType"),
    "dirk": ("setDIRKType", "getDIRKType"),
    "irk": (None, None),
}

# stiff methods to suggest when a gradient is asked of a forward-only family
_WITH_ADJOINT_HINT = "gauss2 (implicit_midpoint), sdirk2, trbdf2, arkimex4, dirkes324sal"
NO_ADJOINT_REASON = {
    "irk": "PETSc 3.26 has no discrete adjoint for TSIRK, the fully implicit Runge-Kutta family",
    "bdf": "PETSc 3.26 has no discrete adjoint for TS type bdf",
    "rosw": "PETSc 3.26 has no discrete adjoint for TS type rosw",
}

# torchdiffeq names pnode refuses, with the reason: running another scheme under these names would be wrong
REFUSED: dict[str, str] = {}

# torchdiffeq's Adams methods: PETSc 3.26 has no Adams TS type (its multistep types are bdf and the general
# linear glee/glle; CVODE's Adams is only reachable through TSSUNDIALS, absent from this build and without
# TSAdjoint), so pnode integrates them itself in plain torch (pnode/_adams.py), torchdiffeq's scheme on its
# fixed grid; gradients are exact for the discrete scheme (each step differentiated by autograd)
_ADAMS = [
    Method("explicit_adams", "torch", "ab", 4, False, form="torch",
           description="not PETSc: Adams-Bashforth on a fixed grid, plain torch (RK4 start, orders up to "
                       "options['max_order'] - 1, default 11), as torchdiffeq; exact discrete gradient"),
    Method("implicit_adams", "torch", "abm", 5, False, form="torch",
           description="not PETSc: Adams-Bashforth-Moulton predictor-corrector on a fixed grid, plain torch "
                       "(options['max_iters'] corrector iterations, default 4), as torchdiffeq; exact discrete "
                       "gradient"),
]
_ADAMS.append(replace(_ADAMS[1], name="fixed_adams", description=_ADAMS[1].description + " (= implicit_adams)"))

METHODS: dict[str, Method] = {m.name: m for m in _PETSC_RK}
METHODS.update({m.name: m for m in _TORCHDIFFEQ})
METHODS.update({m.name: m for m in _PETSC_IMPLICIT})
METHODS.update({m.name: m for m in _TORCHDIFFEQ_IMPLICIT})
METHODS.update({m.name: m for m in _IRK})
METHODS.update({m.name: m for m in _ALIASES})
METHODS.update({m.name: m for m in _ADAMS})
# torchdiffeq's wrapper of scipy.integrate.solve_ivp: outside PETSc, forward only (options['solver'])
METHODS["scipy_solver"] = Method("scipy_solver", "scipy", None, 5, True, adjoint=False, form="scipy",
                                 description="scipy.integrate.solve_ivp (options['solver'], default RK45); "
                                             "forward only, no adjoint")

# names are case-insensitive (torchdiffeq's radauIIA3 has capitals)
_METHODS_LOWER = {k.lower(): m for k, m in METHODS.items()}
_REFUSED_LOWER = {k.lower(): why for k, why in REFUSED.items()}

DEFAULT_METHOD = "dopri5"


def available_methods() -> list[str]:
    """All method names, sorted.

    Returns
    -------
    list of str
        Every name ``method=`` accepts (torchdiffeq's and PETSc's).

    Examples
    --------
    >>> "tsit5" in pnode.available_methods()
    True
    """
    return sorted(METHODS)


def method_table() -> str:
    """A human-readable listing of the method table (used in docs and error messages).

    Returns
    -------
    str
        One line per method: name, PETSc TS type/tableau, order, adaptive or fixed, description.

    Examples
    --------
    >>> print(pnode.method_table())   # doctest: +SKIP
    """
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
    if key in _REFUSED_LOWER:
        raise UnknownMethodError(f"method {name!r} is not available in pnode: {_REFUSED_LOWER[key]}")
    if key not in _METHODS_LOWER:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods are:\n{method_table()}")
    return _METHODS_LOWER[key]


def by_petsc_type(ts_type: str, tableau: str | None, form: str = "rhs") -> Method | None:
    """The row PETSc is actually running (after command-line options), preferring PETSc's own naming;
    only rows of the given callback ``form`` qualify (a TS needs the callbacks it was built with)."""
    for m in _PETSC_RK + _PETSC_IMPLICIT + _TORCHDIFFEQ + _TORCHDIFFEQ_IMPLICIT + _IRK:
        if m.ts_type == ts_type and m.tableau == tableau and m.form == form:
            return m
    return None


def set_tableau(ts, method: Method) -> None:
    """Give ``ts`` the method's tableau (types without one have nothing to set).

    pnode's own tableaux of the method's TS family are registered with PETSc first (once per process),
    so that the name, and a ``-ts_rk_type``/``-ts_dirk_type`` naming another of them, resolves."""
    if method.ts_type in TABLEAU_ACCESS:
        _tableaux.ensure_registered(method.ts_type)
    if method.tableau is None:
        return
    setter = TABLEAU_ACCESS[method.ts_type][0]
    if setter is None:
        _tableaux.set_irk_type(ts, method.tableau)
    else:
        getattr(ts, setter)(method.tableau)


def running_tableau(ts) -> str | None:
    """The tableau ``ts`` runs now (after options), or ``None`` for types without tableaux."""
    ts_type = ts.getType()
    access = TABLEAU_ACCESS.get(ts_type)
    if access is None:
        return None
    if access[1] is None:
        return _tableaux.irk_type(ts)
    return getattr(ts, access[1])()


def no_adjoint_message(method: Method) -> str:
    """Why ``method`` gives no gradient, and the methods that do (the stiff ones first for implicit ones)."""
    where = "scipy integrates outside PETSc" if method.ts_type == "scipy" else NO_ADJOINT_REASON.get(
        method.ts_type, f"PETSc has no discrete adjoint for TS type {method.ts_type}")
    stiff = f" (stiff problems: {_WITH_ADJOINT_HINT})" if method.implicit else ""
    return (f"method {method.name!r} runs forward only ({where}); gradients need one of{stiff}: "
            + ", ".join(n for n, m in sorted(METHODS.items()) if m.adjoint))

"""Butcher tableaux that PETSc 3.26 does not ship, as published, and their registration with PETSc.

Each tableau is data (:class:`Tableau`); :func:`ensure_registered` hands the ones of a TS family to PETSc
once per process, before the first TS uses them, so PETSc runs them natively: its step-size controller,
its trajectory and, where the family has one, its discrete adjoint (TSRK for explicit tableaux, the
ARKIMEX/DIRK machinery for diagonally implicit ones).  PETSc's TSIRK (fully implicit: Gauss-Legendre,
Radau IIA) has no adjoint, so those run forward only.

petsc4py 3.26 wraps none of ``TSRKRegister``, ``TSDIRKRegister`` or ``TSIRKRegister``; they are called
through ctypes on the very ``libpetsc`` that petsc4py has loaded (a second copy of the library would have
its own, separate lists of registered types).

Sources of the coefficients (written from the papers' published values):

- Heun 1900 (third order, ``heun3``); Kutta 1901 (the 3/8 rule, torchdiffeq's ``rk4``).
- E. Fehlberg, NASA TR R-315 (1969): the 1(2) pair; torchdiffeq propagates the second-order weights.
- Ch. Tsitouras, Comput. Math. Appl. 62 (2011) 770-775, Table 1: the 5(4) pair (``tsit5``).
- P. J. Prince, J. R. Dormand, J. Comput. Appl. Math. 7 (1981) 67-75: RK8(7)13M (``dopri8``), the
  paper's rational coefficients.
- R. Alexander, SIAM J. Numer. Anal. 14 (1977): two-stage L-stable SDIRK, gamma = 1 - 1/sqrt(2).
- R. E. Bank et al., IEEE Trans. CAD 4 (1985); M. E. Hosea, L. F. Shampine, Appl. Numer. Math. 20
  (1996): TR-BDF2 written as a three-stage ESDIRK.
- Hairer & Wanner, Solving ODEs II, Tables IV.5.1/5.2 and 5.5/5.6: Gauss-Legendre of orders 2, 4, 6 and
  Radau IIA of orders 3, 5.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import PetscConfigurationError

Row = tuple[float, ...]


def _q(text: str) -> float:
    """A published rational coefficient, 'p/q', to the nearest double."""
    return float(Fraction(text))


@dataclass(frozen=True)
class Tableau:
    """One Butcher tableau and the PETSc family that runs it.

    Attributes
    ----------
    name: the PETSc type name it is registered under (``-ts_rk_type``, ``-ts_dirk_type``, ``-ts_irk_type``).
    family: ``"rk"`` (explicit, TSRK), ``"dirk"`` (diagonally implicit, TSDIRK) or ``"irk"`` (fully
        implicit, TSIRK).
    order: order of the propagated solution.
    A: stage coefficients, row by row (lower triangular for ``rk``/``dirk``).
    b: weights of the propagated solution.
    c: abscissae.
    b_embedded: weights of the embedded solution (order ``order - 1``), or ``None`` (fixed steps only).
    source: where the coefficients are published.
    """

    name: str
    family: str
    order: int
    A: tuple[Row, ...]
    b: Row
    c: Row
    b_embedded: Row | None
    source: str

    @property
    def stages(self) -> int:
        return len(self.b)


def _explicit(name, order, rows, b, b_embedded=None, *, source):
    """An explicit tableau from its strictly lower rows (row i holds a_i1..a_i,i-1); c = row sums."""
    s = len(b)
    A = tuple(tuple(float(x) for x in row) + (0.0,) * (s - len(row)) for row in [(), *rows])
    c = tuple(math.fsum(row) for row in A)
    emb = None if b_embedded is None else tuple(float(x) for x in b_embedded)
    return Tableau(name, "rk", order, A, tuple(float(x) for x in b), c, emb, source)


def _implicit(name, family, order, A, b, c, *, source):
    return Tableau(name, family, order, tuple(tuple(float(x) for x in row) for row in A),
                   tuple(float(x) for x in b), tuple(float(x) for x in c), None, source)


_F = Fraction
_S2, _S3, _S6, _S15 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)

HEUN3 = _explicit("heun3", 3, [(_F(1, 3),), (0, _F(2, 3))], (_F(1, 4), 0, _F(3, 4)), source="Heun 1900")

RK38 = _explicit("rk38", 4, [(_F(1, 3),), (_F(-1, 3), 1), (1, -1, 1)], (_F(1, 8), _F(3, 8), _F(3, 8), _F(1, 8)),
                 source="Kutta 1901, the 3/8 rule")

FEHLBERG2 = _explicit("fehlberg2", 2, [(_F(1, 2),), (_F(1, 256), _F(255, 256))],
                      (_F(1, 512), _F(255, 256), _F(1, 512)), (_F(1, 256), _F(255, 256), 0),
                      source="Fehlberg 1969 (NASA TR R-315), RK1(2) with the second-order weights propagated")

# Tsitouras (2011), Table 1: the coefficients are given as decimals
TSIT5 = _explicit(
    "tsit5", 5,
    [(0.161,),
     (-0.008480655492356988544, 0.3354806554923569885),
     (2.897153057105493432, -6.359448489975074843, 4.362295432869581411),
     (5.325864828439256604, -11.74888356406282788, 7.495539342889836208, -0.09249506636175524926),
     (5.861455442946420029, -12.92096931784710929, 8.159367898576158643, -0.07158497328140099722,
      -0.02826905039406838291),
     (0.09646076681806522952, 0.01, 0.4798896504144995748, 1.379008574103741893, -3.290069515436080680,
      2.324710524099773982)],
    (0.09646076681806522952, 0.01, 0.4798896504144995748, 1.379008574103741893, -3.290069515436080680,
     2.324710524099773982, 0.0),
    (0.09468075576583945807, 0.009183565540343253097, 0.4877705284247615708, 1.234297566930478986,
     -2.707712349983525455, 1.866628418170587036, 1 / 66),
    source="Tsitouras 2011, 5(4) pair, FSAL")

# Prince & Dormand (1981), RK8(7)13M: rational coefficients as printed in the paper
_DP8_ROWS = [
    ("1/18",),
    ("1/48", "1/16"),
    ("1/32", "0", "3/32"),
    ("5/16", "0", "-75/64", "75/64"),
    ("3/80", "0", "0", "3/16", "3/20"),
    ("29443841/614563906", "0", "0", "77736538/692538347", "-28693883/1125000000", "23124283/1800000000"),
    ("16016141/946692911", "0", "0", "61564180/158732637", "22789713/633445777", "545815736/2771057229",
     "-180193667/1043307555"),
    ("39632708/573591083", "0", "0", "-433636366/683701615", "-421739975/2616292301", "100302831/723423059",
     "790204164/839813087", "800635310/3783071287"),
    ("246121993/1340847787", "0", "0", "-37695042795/15268766246", "-309121744/1061227803",
     "-12992083/490766935", "6005943493/2108947869", "393006217/1396673457", "123872331/1001029789"),
    ("-1028468189/846180014", "0", "0", "8478235783/508512852", "1311729495/1432422823",
     "-10304129995/1701304382", "-48777925059/3047939560", "15336726248/1032824649",
     "-45442868181/3398467696", "3065993473/597172653"),
    ("185892177/718116043", "0", "0", "-3185094517/667107341", "-477755414/1098053517", "-703635378/230739211",
     "5731566787/1027545527", "5232866602/850066563", "-4093664535/808688257", "3962137247/1805957418",
     "65686358/487910083"),
    ("403863854/491063109", "0", "0", "-5068492393/434740067", "-411421997/543043805", "652783627/914296604",
     "11173962825/925320556", "-13158990841/6184727034", "3936647629/1978049680", "-160528059/685178525",
     "248638103/1413531060", "0"),
]
_DP8_B = ("14005451/335480064", "0", "0", "0", "0", "-59238493/1068277825", "181606767/758867731",
          "561292985/797845732", "-1041891430/1371343529", "760417239/1151165299", "118820643/751138087",
          "-528747749/2220607170", "1/4")
_DP8_B7 = ("13451932/455176623", "0", "0", "0", "0", "-808719846/976000145", "1757004468/5645159321",
           "656045339/265891186", "-3867574721/1518517206", "465885868/322736535", "53011238/667516719", "2/45",
           "0")
DOPRI8 = _explicit("dopri8", 8, [tuple(_q(x) for x in row) for row in _DP8_ROWS], [_q(x) for x in _DP8_B],
                   [_q(x) for x in _DP8_B7], source="Prince & Dormand 1981, RK8(7)13M")

_G = 1.0 - _S2 / 2.0          # Alexander's gamma, the root of g^2 - 2g + 1/2 in (0, 1)
SDIRK2 = _implicit("sdirk2", "dirk", 2, [(_G, 0.0), (1.0 - _G, _G)], (1.0 - _G, _G), (_G, 1.0),
                   source="Alexander 1977, two-stage SDIRK, L-stable, stiffly accurate")

_D, _W = 1.0 - _S2 / 2.0, _S2 / 4.0   # TR-BDF2: trapezoid to 2*_D = 2 - sqrt(2), then BDF2
TRBDF2 = _implicit("trbdf2", "dirk", 2, [(0.0, 0.0, 0.0), (_D, _D, 0.0), (_W, _W, _D)], (_W, _W, _D),
                   (0.0, 2.0 * _D, 1.0), source="Bank et al. 1985; ESDIRK form of Hosea & Shampine 1996")

GAUSS2 = _implicit("gauss2", "dirk", 2, [(0.5,)], (1.0,), (0.5,),
                   source="implicit midpoint rule (one-stage Gauss-Legendre)")

GL4 = _implicit("gl4", "irk", 4, [(0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)], (0.5, 0.5),
                (0.5 - _S3 / 6, 0.5 + _S3 / 6), source="Hairer & Wanner II, Table IV.5.1 (Gauss, s=2)")

GL6 = _implicit("gl6", "irk", 6,
                [(5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
                 (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
                 (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36)],
                (5 / 18, 4 / 9, 5 / 18), (0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
                source="Hairer & Wanner II, Table IV.5.2 (Gauss, s=3)")

RADAU3 = _implicit("radauIIA3", "irk", 3, [(5 / 12, -1 / 12), (3 / 4, 1 / 4)], (3 / 4, 1 / 4), (1 / 3, 1.0),
                   source="Hairer & Wanner II, Table IV.5.5 (Radau IIA, s=2)")

RADAU5 = _implicit("radauIIA5", "irk", 5,
                   [((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
                    ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
                    ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9)],
                   ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9), ((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
                   source="Hairer & Wanner II, Table IV.5.6 (Radau IIA, s=3)")

TABLEAUX: dict[str, Tableau] = {t.name: t for t in (HEUN3, RK38, FEHLBERG2, TSIT5, DOPRI8, SDIRK2, TRBDF2,
                                                     GAUSS2, GL4, GL6, RADAU3, RADAU5)}


# ---------------------------------------------------------------------------------------------- PETSc
_PetscInt = ctypes.c_int32
_PetscReal = ctypes.c_double
_IRK_CREATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)   # PetscErrorCode (*)(TS)
_registered: set[str] = set()
_irk_callbacks: dict[str, object] = {}   # ctypes callbacks PETSc keeps pointers to: they must stay alive
_lib: ctypes.CDLL | None = None


def _check_build() -> None:
    from ._petsc import PETSc

    if np.dtype(PETSc.IntType).itemsize != ctypes.sizeof(_PetscInt) or \
            np.dtype(PETSc.RealType) != np.float64 or np.dtype(PETSc.ScalarType) != np.float64:
        raise PetscConfigurationError(
            "registering pnode's Butcher tableaux needs a PETSc built with 32-bit PetscInt and real double "
            f"scalars; this one has PetscInt {np.dtype(PETSc.IntType)}, PetscReal {np.dtype(PETSc.RealType)}, "
            f"PetscScalar {np.dtype(PETSc.ScalarType)}: use PETSc's own tableaux (method='rk5dp', ...) or "
            "rebuild PETSc with the defaults")


def _library_candidates() -> list[str]:
    """Where the libpetsc petsc4py loaded may be: petsc4py's extension module first (symbol lookup through
    its handle reaches the libpetsc it links, or the static PETSc linked into it), then its configured
    PETSC_DIR/PETSC_ARCH and the process's own list of mapped libraries (Linux)."""
    import petsc4py

    from ._petsc import PETSc

    found = [getattr(PETSc, "__file__", "")]
    config = petsc4py.get_config()
    lib_dir = os.path.join(config.get("PETSC_DIR", ""), config.get("PETSC_ARCH", "") or "", "lib")
    for pattern in ("libpetsc.so*", "libpetsc.dylib", "libpetsc*.dylib"):
        found += sorted(glob.glob(os.path.join(lib_dir, pattern)))
    try:
        with open("/proc/self/maps") as maps:
            found += sorted({line.split()[-1] for line in maps if "libpetsc" in line and "/" in line})
    except OSError:
        pass
    return [path for path in found if path]


def _libpetsc() -> ctypes.CDLL:
    """The libpetsc this process already runs (RTLD_NOLOAD: never a second copy)."""
    global _lib
    if _lib is not None:
        return _lib
    _check_build()
    mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
    tried = _library_candidates()
    for path in tried:
        try:
            lib = ctypes.CDLL(path, mode=mode)
            lib.TSRKRegister  # noqa: B018 - raises AttributeError if this is not PETSc's TS library
        except (OSError, AttributeError):
            continue
        _lib = lib
        return lib
    raise PetscConfigurationError(
        "cannot find the libpetsc shared library petsc4py has loaded (looked at: "
        f"{', '.join(tried) or 'nothing found'}), so pnode cannot register its Butcher tableaux with PETSc; "
        "use a PETSc-native method (rk5dp, rk8vr, beuler, ...) or a shared-library PETSc build")


def _reals(values) -> ctypes.Array:
    flat = [float(x) for x in np.asarray(values, dtype=np.float64).ravel()]
    return (_PetscReal * len(flat))(*flat)


def _call(function: str, *args) -> None:
    code = getattr(_libpetsc(), function)(*args)
    if code != 0:
        raise PetscConfigurationError(f"PETSc {function} failed with error code {code} while pnode registered a "
                                      "Butcher tableau")


def _register_explicit(tab: Tableau) -> None:
    emb = None if tab.b_embedded is None else _reals(tab.b_embedded)
    # p = 1 with binterp NULL: dense output reuses b (pnode steps onto output times, never interpolates)
    _call("TSRKRegister", tab.name.encode(), _PetscInt(tab.order), _PetscInt(tab.stages), _reals(tab.A),
          _reals(tab.b), _reals(tab.c), emb, _PetscInt(1), None)


def _register_dirk(tab: Tableau) -> None:
    emb = None if tab.b_embedded is None else _reals(tab.b_embedded)
    _call("TSDIRKRegister", tab.name.encode(), _PetscInt(tab.order), _PetscInt(tab.stages), _reals(tab.A),
          _reals(tab.b), _reals(tab.c), emb, _PetscInt(1), _reals(tab.b))


def _register_irk(tab: Tableau) -> None:
    s = tab.stages
    A = np.array(tab.A, dtype=np.float64)
    A_inv = np.linalg.inv(A)
    # TSIRK stores A^{-1} and the identity column-major; A_inv_rowsum[i] = sum_j (A^{-1})_ij
    arrays = (_reals(A), _reals(tab.b), _reals(tab.c), _reals(A_inv.T), _reals(A_inv.sum(axis=1)),
              _reals(np.eye(s)))
    lib = _libpetsc()

    def create(ts_handle):
        # PETSc calls this from TSIRKSetType: size the stage count, then hand over the coefficients
        code = lib.TSIRKSetNumStages(ctypes.c_void_p(ts_handle), _PetscInt(s))
        if code == 0:
            code = lib.TSIRKTableauCreate(ctypes.c_void_p(ts_handle), _PetscInt(s), arrays[0], arrays[1],
                                          arrays[2], None, arrays[3], arrays[4], arrays[5])
        return code

    callback = _IRK_CREATE(create)
    _irk_callbacks[tab.name] = (callback, arrays)
    _call("TSIRKRegister", tab.name.encode(), callback)


_REGISTER = {"rk": _register_explicit, "dirk": _register_dirk, "irk": _register_irk}


def ensure_registered(family: str) -> None:
    """Register every pnode tableau of a PETSc family (``"rk"``, ``"dirk"``, ``"irk"``) once per process.

    All of a family at once, so that a command-line ``-ts_rk_type tsit5`` finds its tableau too.

    Parameters
    ----------
    family: the TS type whose tableau list receives them; other families are ignored.

    Raises
    ------
    PetscConfigurationError
        libpetsc cannot be reached through ctypes, the build is not 32-bit-int double, or PETSc refuses a
        registration.

    Examples
    --------
    >>> ensure_registered("rk")    # afterwards ts.setRKType("tsit5") works
    """
    for tab in TABLEAUX.values():
        if tab.family == family and tab.name not in _registered:
            _REGISTER[family](tab)
            _registered.add(tab.name)


def set_irk_type(ts, name: str) -> None:
    """``TSIRKSetType`` (not wrapped by petsc4py 3.26) on a TS of type ``irk``.

    Parameters
    ----------
    ts: a ``PETSc.TS`` whose type is ``irk``.
    name: a registered TSIRK type (``gauss`` or one of pnode's: ``gl4``, ``gl6``, ``radauIIA3``,
        ``radauIIA5``).

    Raises
    ------
    PetscConfigurationError
        PETSc refuses the type.

    Examples
    --------
    >>> ensure_registered("irk"); set_irk_type(ts, "radauIIA5")   # doctest: +SKIP
    """
    _call("TSIRKSetType", ctypes.c_void_p(ts.handle), name.encode())


def irk_type(ts) -> str:
    """``TSIRKGetType`` on a TS of type ``irk``: the tableau it runs.

    Parameters
    ----------
    ts: a ``PETSc.TS`` whose type is ``irk``.

    Returns
    -------
    str
        The TSIRK type name.

    Examples
    --------
    >>> irk_type(ts)   # doctest: +SKIP
    'gl4'
    """
    out = ctypes.c_char_p()
    _call("TSIRKGetType", ctypes.c_void_p(ts.handle), ctypes.byref(out))
    return (out.value or b"").decode()

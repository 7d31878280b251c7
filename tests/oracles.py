"""Independent oracles for the tests: plain-torch Runge-Kutta schemes differentiated by autograd.

The Butcher tableaux below are written out from the literature (Hairer-Norsett-Wanner; Dormand & Prince
1980; Bogacki & Shampine 1989; Fehlberg 1969), not read from PETSc, so agreement with pnode checks that
pnode runs the scheme it claims and that its adjoint is exact for that scheme.
"""

from __future__ import annotations

from fractions import Fraction as F

import torch


def _t(rows):
    return [[float(x) for x in r] for r in rows]


TABLEAUX = {
    "1fe": (_t([[0]]), [1.0]),
    "2a": (_t([[0, 0], [1, 0]]), [0.5, 0.5]),                      # Heun / explicit trapezoid
    "2b": (_t([[0, 0], [F(1, 2), 0]]), [0.0, 1.0]),               # explicit midpoint
    "3": (_t([[0, 0, 0], [F(2, 3), 0, 0], [F(-1, 3), 1, 0]]), [0.25, 0.5, 0.25]),
    "3bs": (_t([[0, 0, 0, 0], [F(1, 2), 0, 0, 0], [0, F(3, 4), 0, 0], [F(2, 9), F(1, 3), F(4, 9), 0]]),
            [float(F(2, 9)), float(F(1, 3)), float(F(4, 9)), 0.0]),
    "4": (_t([[0, 0, 0, 0], [F(1, 2), 0, 0, 0], [0, F(1, 2), 0, 0], [0, 0, 1, 0]]),
          [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    "5f": (_t([[0, 0, 0, 0, 0, 0],
               [F(1, 4), 0, 0, 0, 0, 0],
               [F(3, 32), F(9, 32), 0, 0, 0, 0],
               [F(1932, 2197), F(-7200, 2197), F(7296, 2197), 0, 0, 0],
               [F(439, 216), -8, F(3680, 513), F(-845, 4104), 0, 0],
               [F(-8, 27), 2, F(-3544, 2565), F(1859, 4104), F(-11, 40), 0]]),
           [float(x) for x in (F(16, 135), 0, F(6656, 12825), F(28561, 56430), F(-9, 50), F(2, 55))]),
    "5dp": (_t([[0, 0, 0, 0, 0, 0, 0],
                [F(1, 5), 0, 0, 0, 0, 0, 0],
                [F(3, 40), F(9, 40), 0, 0, 0, 0, 0],
                [F(44, 45), F(-56, 15), F(32, 9), 0, 0, 0, 0],
                [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729), 0, 0, 0],
                [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656), 0, 0],
                [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]]),
            [float(x) for x in (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)]),
}


def rk_step(func, t, y, h, A, b):
    c = [sum(row) for row in A]
    ks = []
    for i, row in enumerate(A):
        yi = y
        for j in range(i):
            if row[j] != 0.0:
                yi = yi + (h * row[j]) * ks[j]
        ks.append(func(t + c[i] * h, yi))
    out = y
    for bi, k in zip(b, ks):
        if bi != 0.0:
            out = out + (h * bi) * k
    return out


def rk_solve(func, y0, step_times, output_times, tableau):
    """y at ``output_times`` from a fixed sequence of step boundaries (outputs must be boundaries)."""
    A, b = TABLEAUX[tableau] if isinstance(tableau, str) else tableau
    step_times = [float(s) for s in step_times]
    wanted = [float(s) for s in output_times]
    outputs = [y0]
    y = y0
    k = 1
    for i in range(len(step_times) - 1):
        t0, t1 = step_times[i], step_times[i + 1]
        y = rk_step(func, torch.tensor(t0, dtype=torch.float64), y, t1 - t0, A, b)
        if k < len(wanted) and abs(t1 - wanted[k]) <= 1e-12 * max(1.0, abs(t1)):
            outputs.append(y)
            k += 1
    assert k == len(wanted), "output times must be step boundaries"
    return torch.stack(outputs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(b.norm(), 1e-300))

"""Float32 exp and erf that LLVM can vectorise (libm's expf/erff are scalar calls: measured here
6.5 and 13 ns per element against ~1.5 ns for a vectorised rational function).

exp32: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2 / 2, then the degree-7 Taylor
    polynomial of e^r (truncation r^8 / 8! <= 5e-10) and 2^n built in the float32 exponent bits
    ((n + 127) << 23), which the caller reinterprets: see softmax_row_ in rows.py. Inputs are
    clamped to [-87, 88] so that 2^n stays a normal float, and below -87 the e^r part is 0: e^x is
    then 0, as the float32 reference gives below -104 (and within e^-87 = 1.65e-38 of it between).
    Returning e^-87 there instead, a masked key's probability came out as 1.65e-38 / row sum, a
    subnormal float, and every product with it took a microcode assist on Intel cores: MiniLM's
    attention at B = 8, T = 128 with padding took 122 ms per layer instead of 15 on an Intel Xeon VM
    (AMD cores take subnormals at full speed, which is why it went unseen there).
erf32: x P(x^2) / Q(x^2) with deg P = deg Q = 5, Q(0) = 1, fitted below by least squares on
    Chebyshev nodes of [0, 4] (relative error, reweighted by 1/Q); |x| >= 4 is clamped, where
    erf = +-(1 - 1.5e-8) rounds to +-1 in float32. The fit itself reaches 1 + 2^-23 from x = 3.62 on,
    so the result is clamped to [-1, 1] too: GELU's 1 + erf would otherwise be -1.2e-7, not 0, far
    out, and GELU(-1e4) +6e-4 instead of 0. Max |error| evaluated in float32: 3.4e-7
    (test_fast.py recomputes it against scipy.special.erf). The coefficients are written out below
    as `fit_erf()` returns them (test_fast.py refits and compares): fitting at import cost ~1 s of
    the first call in a fresh process (scipy.special's import and 6 least-squares solves).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ERF_CLAMP = 4.0
ERF_DEGREE = 5


def fit_erf(degree: int = ERF_DEGREE, clamp: float = ERF_CLAMP, nodes: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (p_0..p_deg, q_0 = 1..q_deg), low order first, of erf(x) ~ x P(x^2) / Q(x^2)."""
    from scipy.special import erf

    x = (np.cos(np.linspace(0.0, np.pi, nodes)) + 1.0) * clamp / 2  # Chebyshev nodes on [0, clamp]
    x = x[x > 1e-6]
    t, f = x * x, erf(x)
    powers = t[:, None] ** np.arange(degree + 1)  # (nodes, degree + 1)
    weight = np.ones_like(x)
    for _ in range(6):  # x P - f (Q - 1) = f, relative to f, reweighted by 1/Q toward true residuals
        design = np.hstack([x[:, None] * powers, -f[:, None] * powers[:, 1:]])
        scale = weight / f
        coefficients = np.linalg.lstsq(design * scale[:, None], f * scale, rcond=None)[0]
        p, q = coefficients[:degree + 1], np.concatenate([[1.0], coefficients[degree + 1:]])
        weight = 1.0 / np.abs(powers @ q)
    return p.astype(np.float32), q.astype(np.float32)


ERF_P = (1.1283791065216064, 0.1916729211807251, 0.0528525710105896, 0.003803411265835166,
         0.0002828319848049432, 2.00146428142034e-06)  # fit_erf()[0]
ERF_Q = (1.0, 0.5031986236572266, 0.11457489430904388, 0.015046131797134876, 0.0011663703480735421,
         3.748284507310018e-05)  # fit_erf()[1]
P0, P1, P2, P3, P4, P5 = (np.float32(c) for c in ERF_P)
_, Q1, Q2, Q3, Q4, Q5 = (np.float32(c) for c in ERF_Q)
CLAMP = np.float32(ERF_CLAMP)

LOG2E = np.float32(1.0 / math.log(2.0))
LN2_HI = np.float32(0.693359375)  # 355 / 512: ln 2 to 9 bits, so n * LN2_HI is exact for |n| < 2^15
LN2_LO = np.float32(math.log(2.0) - 0.693359375)
EXP_LOW, EXP_HIGH = np.float32(-87.0), np.float32(88.0)
C2, C3, C4, C5, C6, C7 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 8))
ZERO, ONE = np.float32(0.0), np.float32(1.0)


@njit(inline="always", cache=True)
def erf32(x):
    x = min(max(x, -CLAMP), CLAMP)
    t = x * x
    p = P0 + t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))))
    q = ONE + t * (Q1 + t * (Q2 + t * (Q3 + t * (Q4 + t * Q5))))
    return min(max(x * p / q, -ONE), ONE)


@njit(inline="always", cache=True)
def exp32_parts(x):
    """(e^r, n) with e^x = e^r * 2^n; the caller builds 2^n from the exponent bits (n + 127) << 23.
    Below EXP_LOW, e^r is 0 (a masked score: its probability must be 0, not subnormal)."""
    underflow = x < EXP_LOW
    x = min(max(x, EXP_LOW), EXP_HIGH)
    n = np.floor(x * LOG2E + np.float32(0.5))  # float32 (math.floor would give int64 and float64 math)
    r = (x - n * LN2_HI) - n * LN2_LO
    p = ONE + r * (ONE + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))))
    return (ZERO if underflow else p), np.int32(n)

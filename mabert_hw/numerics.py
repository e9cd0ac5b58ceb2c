"""Elementwise functions shared by the NumPy implementations (reference backend, NumPy FFF)."""

from __future__ import annotations

import numpy as np


def gelu(x: np.ndarray) -> np.ndarray:
    """HF hidden_act="gelu", the exact erf form: 0.5 * x * (1 + erf(x / sqrt(2))), in x's dtype."""
    from scipy.special import erf  # lazy: importing scipy costs ~0.5 s, and `profile` never needs it

    dtype = x.dtype.type
    return dtype(0.5) * x * (dtype(1.0) + erf(x / dtype(np.sqrt(2.0))))

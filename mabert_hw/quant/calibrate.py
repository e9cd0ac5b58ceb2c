"""Calibration: activation ranges observed through the reference backend, per op and operand slot.

`calibrate` runs texts through a ReferenceBackend whose op log also feeds observers; each tensor
"<op name>:in0|in1|out" keeps its exact min / max and a uniform random sample (seeded) from which the
range estimators work:
  minmax      [min, max]
  percentile  [P(100 - p), P(p)] of the sample
  mse         the clipped range alpha * [min, max], alpha on a grid, minimising the quantization MSE
  entropy     TensorRT's KL method on a 2048-bin histogram of |x|: the threshold whose quantized
              distribution Q has the least KL(P || Q) to the clipped reference P
Additive-mask entries (finfo.min) are not data and are dropped before observation.
Saved as one .npz (min, max, sample per tensor); ranges are recomputed from it on load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends.reference import ReferenceBackend
from .formats import IntFormat, choose_qparams, dequantize, quantize

MASKED = -1e30  # additive mask entries are finfo(float32).min ~ -3.4e38
SAMPLE_PER_CALL = 8192
SAMPLE_CAP = 65536
HIST_BINS = 2048  # TensorRT's calibration histogram
MSE_GRID = np.linspace(0.2, 1.0, 41)


@dataclass
class TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    samples: list = field(default_factory=list)

    def observe(self, x: np.ndarray, rng: np.random.Generator) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        x = x[x > MASKED]
        if not x.size:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.samples.append(x if x.size <= SAMPLE_PER_CALL else rng.choice(x, SAMPLE_PER_CALL, replace=False))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        s = np.concatenate(self.samples) if self.samples else np.zeros(1, np.float32)
        if s.size > SAMPLE_CAP:
            s = rng.choice(s, SAMPLE_CAP, replace=False)
        self.samples = [s]
        return s


@dataclass
class Calibration:
    stats: dict[str, TensorStats] = field(default_factory=dict)
    seed: int = 0
    _cache: dict = field(default_factory=dict)

    def range(self, key: str, calibrator: str, fmt: IntFormat, symmetric: bool, percentile: float = 99.99):
        """(lo, hi) for tensor `key`; None when it was never observed."""
        st = self.stats.get(key)
        if st is None:
            return None
        cache_key = (key, calibrator, fmt, symmetric, percentile)
        if cache_key not in self._cache:
            self._cache[cache_key] = self._estimate(st, calibrator, fmt, symmetric, percentile)
        return self._cache[cache_key]

    def _estimate(self, st: TensorStats, calibrator, fmt, symmetric, percentile):
        if calibrator == "minmax":
            return st.lo, st.hi
        x = st.sample(np.random.default_rng(self.seed)).astype(np.float64)
        if calibrator == "percentile":
            return float(np.percentile(x, 100 - percentile)), float(np.percentile(x, percentile))
        if calibrator == "mse":
            return mse_range(x, st.lo, st.hi, fmt, symmetric)
        if calibrator == "entropy":
            t = entropy_threshold(np.abs(x), fmt)
            return max(st.lo, -t), min(st.hi, t)
        raise ValueError(f"unknown calibrator {calibrator!r}")

    def save(self, path: str | Path) -> None:
        rng = np.random.default_rng(self.seed)
        arrays = {}
        for key, st in self.stats.items():
            arrays[key + "|range"] = np.array([st.lo, st.hi])
            arrays[key + "|sample"] = st.sample(rng)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        data = np.load(path)
        stats = {}
        for name in data.files:
            key, part = name.rsplit("|", 1)
            st = stats.setdefault(key, TensorStats())
            if part == "range":
                st.lo, st.hi = (float(v) for v in data[name])
            else:
                st.samples = [data[name]]
        return cls(stats)


def mse_range(x: np.ndarray, lo: float, hi: float, fmt: IntFormat, symmetric: bool):
    best, best_err = (lo, hi), np.inf
    for alpha in MSE_GRID:
        qp = choose_qparams(alpha * lo, alpha * hi, fmt, symmetric)
        err = float(np.mean((dequantize(quantize(x, qp), qp) - x) ** 2))
        if err < best_err:
            best, best_err = (alpha * lo, alpha * hi), err
    return best


def entropy_threshold(abs_x: np.ndarray, fmt: IntFormat) -> float:
    """TensorRT entropy calibration on |x|: levels = 2^(bits-1) quantization bins."""
    levels = 1 << (fmt.bits - 1)
    top = float(abs_x.max())
    if top == 0.0 or levels >= HIST_BINS:
        return top
    hist, edges = np.histogram(abs_x, bins=HIST_BINS, range=(0.0, top))
    hist = hist.astype(np.float64)
    best_i, best_kl = HIST_BINS, np.inf
    for i in range(levels, HIST_BINS + 1, 8):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = hist[:i] > 0
        q = np.zeros(i)
        for chunk in np.array_split(np.arange(i), levels):
            used = chunk[nonzero[chunk]]
            if used.size:
                q[used] = hist[:i][chunk].sum() / used.size
        mask = p > 0
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        kl = float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-300))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(edges[best_i])


@dataclass
class ObservingBackend(ReferenceBackend):
    """The reference backend; every executed op's activation operands and result feed `calibration`."""

    calibration: Calibration = field(default_factory=Calibration)
    name = "reference"

    def __post_init__(self):
        self._rng = np.random.default_rng(self.calibration.seed)

    def _log(self, kind, name, inputs, weights, output, **attrs):
        super()._log(kind, name, inputs, weights, output, **attrs)
        for i, x in enumerate(inputs):
            if np.asarray(x).dtype.kind == "f":
                self.calibration.stats.setdefault(f"{name}:in{i}", TensorStats()).observe(x, self._rng)
        if np.asarray(output).dtype.kind == "f":
            self.calibration.stats.setdefault(f"{name}:out", TensorStats()).observe(output, self._rng)


def calibrate(run: Callable[[ReferenceBackend], object], seed: int = 0) -> Calibration:
    """Observe every op of `run(backend)` (e.g. a calibration set's forwards) through the reference."""
    backend = ObservingBackend(calibration=Calibration(seed=seed))
    run(backend)
    return backend.calibration

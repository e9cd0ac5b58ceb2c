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

Per channel (one range per entry of the last axis, formats.py): every tensor whose last axis keeps
its length from call to call also keeps its exact per-channel min / max, and the residual stream's
tensors (config.RESIDUAL_KINDS: add, layernorm, embedding) a seeded sample of whole rows (token
vectors), at most CHANNEL_ROW_CAP of them, from which the per-channel estimators work (GEMM outputs,
which may be per channel too, keep no rows: minmax only, to keep the file small):
  minmax      the exact per-channel [min, max]
  percentile  [P(100 - p), P(p)] of each channel's column of the row sample (with a few hundred rows
              P(99.99) falls just inside that column's sample extremes)
  mse         alpha_c * [min_c, max_c], alpha_c on the same grid, minimising each channel's MSE
  entropy     per tensor only (a 2048-bin histogram per channel needs far more rows than are kept)
The row sample draws from its own generator, so the per-tensor samples (and results) are those of a
calibration without it.
Saved as one .npz (min, max, sample, per-channel min / max, rows per tensor); ranges are recomputed
from it on load.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import rel_entr

from ..atomic import atomic_write
from ..backends.reference import ReferenceBackend
from ..errors import UserError
from .config import CALIBRATION_SENTENCES, RESIDUAL_KINDS, SWEEP_CALIBRATION_BATCH
from .formats import IntFormat, choose_qparams, dequantize, quantize

MASKED = -1e30  # additive mask entries are finfo(float32).min ~ -3.4e38
SAMPLE_CAP = 1 << 16  # values kept per tensor: P(99.99) is then about the 7th largest (2^16 * 1e-4 = 6.6) and
# the entropy histogram holds 32 per bin on average. Measured on MiniLM (128 STS-B sentences, 0.5M values per
# tensor, median), ranges from the sample are those from every value to 0.5 % of max - min (percentile),
# 0 % (mse), 1 % (entropy), median over 233 tensors; a few outlier-heavy tensors differ by up to 56, 10, 73 %
SAMPLE_PER_CALL = SAMPLE_CAP // (CALIBRATION_SENTENCES // SWEEP_CALIBRATION_BATCH)  # the sweep's 8 calls fill the
# cap in equal shares; a call keeps at most this many until the cap's draw
HIST_BINS = 2048  # TensorRT's calibration histogram
MSE_GRID = np.linspace(0.2, 1.0, 41)  # alpha in steps of 0.02: on MiniLM (233 tensors) the best MSE is within
# 0.2 % (median; at most 5 %) of a 991-point grid's over [0.01, 1], and no best alpha lies below 0.2 at 6 and
# 8 bits; at 4 bits 17 tensors' do (up to 41 % more MSE than the best below 0.2)
CHANNEL_ROWS_PER_CALL = 32  # token rows sampled per call (a calibration batch) for per-channel estimators
CHANNEL_ROW_CAP = 256  # rows kept per tensor: ~100k values at C = 384, about the per-tensor SAMPLE_CAP


@dataclass
class TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    samples: list = field(default_factory=list)
    channel_lo: np.ndarray | None = None  # (C,) exact per-channel min / max over the last axis
    channel_hi: np.ndarray | None = None
    ragged: bool = False  # the last axis changed length between calls: no per-channel statistics
    rows: list = field(default_factory=list)  # sampled token rows, (n, C) each

    def observe_channels(self, x: np.ndarray, rng: np.random.Generator | None) -> None:
        """Per-channel min / max and, with an rng, a sample of whole rows (rows holding a mask entry dropped)."""
        x = np.asarray(x, np.float32)
        if self.ragged or x.ndim == 0:
            return
        C = x.shape[-1]
        if self.channel_lo is not None and self.channel_lo.shape != (C,):
            self.ragged, self.channel_lo, self.channel_hi, self.rows = True, None, None, []
            return
        rows = x.reshape(-1, C)  # (B*T, C)
        rows = rows[(rows > MASKED).all(axis=1)]
        if not rows.size:
            return
        lo, hi = rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64)
        first = self.channel_lo is None
        self.channel_lo = lo if first else np.minimum(self.channel_lo, lo)
        self.channel_hi = hi if first else np.maximum(self.channel_hi, hi)
        if rng is not None:
            keep = rng.choice(len(rows), min(len(rows), CHANNEL_ROWS_PER_CALL), replace=False)
            self.rows.append(rows[np.sort(keep)])

    def row_sample(self, rng: np.random.Generator) -> np.ndarray | None:
        if not self.rows:
            return None
        r = np.concatenate(self.rows)
        if len(r) > CHANNEL_ROW_CAP:
            r = r[np.sort(rng.choice(len(r), CHANNEL_ROW_CAP, replace=False))]
        self.rows = [r]
        return r

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

    def tuning_format(self, key: str, bits: int, nonneg: bool = False) -> IntFormat:
        """The format the mse and entropy calibrators tune tensor `key`'s range for: signed where it took
        negative values in calibration (the sign of a range alpha * [lo, hi] does not change with alpha),
        unsigned for a non-negative one (or one the op declares so). With symmetric activations that is the
        format the fixed backend then quantizes with (an unsigned one has twice the levels over [0, hi]);
        asymmetric ranges quantize to the same values in either, and entropy's bins over |x| are then the
        levels [0, t] gets."""
        st = self.stats.get(key)
        return IntFormat(bits, signed=not nonneg and st is not None and st.lo < 0)

    def channel_range(self, key: str, calibrator: str, fmt: IntFormat, symmetric: bool, percentile: float = 99.99):
        """(lo, hi), arrays (C,), for tensor `key` per channel; None when it was never observed."""
        st = self.stats.get(key)
        if st is None:
            return None
        if st.channel_lo is None:
            raise UserError(f"{key}: no per-channel calibration (its last axis changes length between calls, or "
                            "the calibration predates per-channel statistics: recalibrate)")
        cache_key = (key, "channel", calibrator, fmt, symmetric, percentile)
        if cache_key not in self._cache:
            self._cache[cache_key] = self._estimate_channels(key, st, calibrator, fmt, symmetric, percentile)
        return self._cache[cache_key]

    def _estimate_channels(self, key, st: TensorStats, calibrator, fmt, symmetric, percentile):
        if calibrator == "minmax":
            return st.channel_lo, st.channel_hi
        if calibrator == "entropy":
            raise UserError(f"{key}: entropy calibration is per tensor only; per channel use minmax, percentile or mse")
        rows = st.row_sample(np.random.default_rng([self.seed, 1]))
        if rows is None:
            raise UserError(f"{key}: per-channel {calibrator} needs sampled rows, kept only for the tensors of "
                            f"{', '.join(RESIDUAL_KINDS)} ops; use minmax")
        rows = rows.astype(np.float64)
        if calibrator == "percentile":
            return np.percentile(rows, 100 - percentile, axis=0), np.percentile(rows, percentile, axis=0)
        if calibrator == "mse":
            return channel_mse_range(rows, st.channel_lo, st.channel_hi, fmt, symmetric)
        raise ValueError(f"unknown calibrator {calibrator!r}")

    def save(self, path: str | Path) -> None:
        rng, row_rng = np.random.default_rng(self.seed), np.random.default_rng([self.seed, 1])
        arrays = {}
        for key, st in self.stats.items():
            arrays[key + "|range"] = np.array([st.lo, st.hi])
            arrays[key + "|sample"] = st.sample(rng)
            if st.channel_lo is not None:
                arrays[key + "|channel_range"] = np.stack([st.channel_lo, st.channel_hi])
            rows = st.row_sample(row_rng)
            if rows is not None:
                arrays[key + "|rows"] = rows
        path = Path(path)
        try:  # two runs calibrating the same model at once each write a temporary of their own (atomic.py)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(f, **arrays)
        except OSError as error:
            raise UserError(f"cannot write the calibration file {path}: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            data = np.load(path)
            arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UserError(f"cannot read the calibration file {path} ({error}): delete it and run again") from None
        stats = {}
        for name, array in arrays.items():
            key, part = name.rsplit("|", 1)
            st = stats.setdefault(key, TensorStats())
            if part == "range":
                st.lo, st.hi = (float(v) for v in array)
            elif part == "channel_range":
                st.channel_lo, st.channel_hi = array
            elif part == "rows":
                st.rows = [array]
            else:
                st.samples = [array]
        return cls(stats)


def mse_range(x: np.ndarray, lo: float, hi: float, fmt: IntFormat, symmetric: bool):
    best, best_err = (lo, hi), np.inf
    for alpha in MSE_GRID:
        qp = choose_qparams(alpha * lo, alpha * hi, fmt, symmetric)
        err = float(np.mean((dequantize(quantize(x, qp), qp) - x) ** 2))
        if err < best_err:
            best, best_err = (alpha * lo, alpha * hi), err
    return best


def channel_mse_range(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, fmt: IntFormat, symmetric: bool):
    """mse_range for every channel (column of rows (n, C)) at once: per channel the alpha * [lo, hi]
    whose quantization MSE over that column is least (the first alpha of the grid on ties, as mse_range)."""
    best_lo, best_hi, best_err = lo.copy(), hi.copy(), np.full(lo.shape, np.inf)
    for alpha in MSE_GRID:
        qp = choose_qparams(alpha * lo, alpha * hi, fmt, symmetric)
        err = np.mean((dequantize(quantize(rows, qp), qp) - rows) ** 2, axis=0)  # (C,)
        better = err < best_err
        best_lo, best_hi = np.where(better, alpha * lo, best_lo), np.where(better, alpha * hi, best_hi)
        best_err = np.where(better, err, best_err)
    return best_lo, best_hi


def _merge_levels(bins: int, levels: int) -> np.ndarray:
    """The level of each of `bins` consecutive bins merged into `levels` levels of sizes differing by at
    most one, the longer first (np.array_split's): bins = m * levels + r gives r levels of m + 1 bins."""
    m, r = divmod(bins, levels)
    index = np.arange(bins)
    long_bins = r * (m + 1)
    return np.where(index < long_bins, index // (m + 1), r + (index - long_bins) // max(m, 1))


def entropy_threshold(abs_x: np.ndarray, fmt: IntFormat) -> float:
    """TensorRT entropy calibration on |x|, with fmt.qmax + 1 quantization bins: 2^(bits-1) for a signed
    format (TensorRT's 128 at 8 bits), 2^bits for an unsigned one (a non-negative tensor)."""
    levels = fmt.qmax + 1
    top = float(abs_x.max())
    if top == 0.0 or levels >= HIST_BINS:
        return top
    hist, edges = np.histogram(abs_x, bins=HIST_BINS, range=(0.0, top))
    hist = hist.astype(np.float64)
    best_i, best_kl = HIST_BINS, np.inf
    for i in range(levels, HIST_BINS + 1):  # every candidate, as TensorRT
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = hist[:i] > 0
        level = _merge_levels(i, levels)  # (i,) the quantization level of each kept bin
        level_counts = np.bincount(level, weights=hist[:i], minlength=levels)
        level_nonzero = np.bincount(level, weights=nonzero, minlength=levels)
        # each level's count spread evenly over its bins that are non-empty in the histogram; empty ones get 0
        q = np.where(nonzero, level_counts[level] / np.maximum(level_nonzero[level], 1), 0.0)
        # Two zeros get a floor near the bottom of float64 (smallest normal 2.2e-308; p / 1e-300 <= 1e300 cannot
        # overflow): q.sum() is 0 only when all of |x| lies in bin i or beyond (a constant |x|), and qs then
        # stays 0, not nan; q = 0 < p happens only in the last bin, when the histogram's is empty and p's holds
        # the outliers. KL(P || Q) is then infinite (scipy.stats.entropy); the floor makes it p ln(p / 1e-300)
        # ~ 690 p nats, a large finite penalty that still ranks such candidates among themselves (inf would
        # move 9 of MiniLM's 239 thresholds).
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        kl = float(rel_entr(ps, np.maximum(qs, 1e-300)).sum())  # rel_entr(0, q) = 0: p's empty bins add nothing
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
        self._row_rng = np.random.default_rng([self.calibration.seed, 1])  # separate: per-tensor samples unchanged

    def _observe(self, key: str, x, keep_rows: bool) -> None:
        st = self.calibration.stats.setdefault(key, TensorStats())
        st.observe(x, self._rng)
        st.observe_channels(x, self._row_rng if keep_rows else None)

    def _log(self, kind, name, inputs, weights, output, **attrs):
        super()._log(kind, name, inputs, weights, output, **attrs)
        rows = kind in RESIDUAL_KINDS
        for i, x in enumerate(inputs):
            if np.asarray(x).dtype.kind == "f":
                self._observe(f"{name}:in{i}", x, rows)
        if np.asarray(output).dtype.kind == "f":
            self._observe(f"{name}:out", output, rows)


def calibrate(run: Callable[[ReferenceBackend], object], seed: int = 0) -> Calibration:
    """Observe every op of `run(backend)` (e.g. a calibration set's forwards) through the reference."""
    backend = ObservingBackend(calibration=Calibration(seed=seed))
    run(backend)
    return backend.calibration

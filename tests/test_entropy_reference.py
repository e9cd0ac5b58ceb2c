"""The entropy calibrator (quant/calibrate.py entropy_threshold) against an independent transcription of
TensorRT's KL-divergence threshold search (Migacz, "8-bit Inference with TensorRT", GTC 2017, S7310; the
expansion step as NVIDIA's pytorch-quantization writes it), with scipy.stats.entropy for the divergence.

Conventions, those the package documents (the slides leave them open):
  histogram   HIST_BINS = 2048 bins of |x| over [0, max |x|]
  candidates  i = levels, levels + 1, ..., 2048 kept bins (every one, as the slides)
  P           bins 0..i-1, the outliers (bins i..2047) added to bin i-1
  Q           bins 0..i-1 merged into `levels` levels of consecutive bins, sizes differing by at most one,
              the longer ones first (i = m * levels + r: r levels of m + 1 bins, then m bins); each level's
              count spread evenly over its bins that are non-empty in the histogram (before the outlier
              fold), empty bins get 0 (KL = inf where P > 0 there; the package's 1e-300 floor makes it huge)
  choice      the first i of least KL(P || Q); the threshold is bin i-1's upper edge, edges[i] (as
              pytorch-quantization; the slides write (m + 0.5) bin widths, half a bin further)
onnxruntime's HistogramCollector (calibrate.py, get_entropy_threshold) implements the same slides with
other conventions, too many to match exactly: a signed histogram grown symmetrically from its centre bin
one bin per side per step, integer (truncated) Q counts, the merge remainder put into the last level but
not expanded back over its bins, non-empty bins judged after the outlier fold, and both distributions
smoothed (eps = 1e-4) before scipy's entropy; so no cross-check against it here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy

from mabert_hw.quant.calibrate import entropy_threshold
from mabert_hw.quant.formats import IntFormat

BINS = 2048
# two float64 evaluations of one KL (different summation order) agree to ~1e-15 relative; the inputs must
# separate the best candidate from the next by far more, or the comparison would be a coin toss
KL_TIE_MARGIN = 1e-9


def tensorrt_entropy_threshold(abs_x: np.ndarray, levels: int) -> tuple[float, float]:
    """(threshold, relative KL gap between the best candidate and the next best) by the procedure above."""
    hist, edges = np.histogram(abs_x, bins=BINS, range=(0.0, float(abs_x.max())))
    counts = hist.tolist()
    divergences = {}
    for i in range(levels, BINS + 1):
        reference = [float(c) for c in counts[:i]]
        reference[i - 1] += float(sum(counts[i:]))
        candidate = [0.0] * i
        merged, longer = divmod(i, levels)
        start = 0
        for level in range(levels):
            stop = start + merged + (1 if level < longer else 0)
            filled = [k for k in range(start, stop) if counts[k] > 0]
            for k in filled:
                candidate[k] = sum(counts[start:stop]) / len(filled)
            start = stop
        assert start == i
        divergences[i] = float(entropy(reference, candidate))  # normalises both, natural log
    best = min(divergences, key=lambda i: (divergences[i], i))
    runner_up = min(v for i, v in divergences.items() if i != best)
    gap = (runner_up - divergences[best]) / max(runner_up, 1e-300)
    return float(edges[best]), gap


def _data(name: str) -> np.ndarray:
    rng = np.random.default_rng(11)
    if name == "normal+outliers":  # test_quant_backend's outlier case
        return np.concatenate([rng.normal(0, 1, 20000), [40.0, -35.0]])
    if name == "gamma":  # a long one-sided tail (softmax-like, unsigned)
        return rng.gamma(0.5, 1.0, 60000)
    if name == "laplace":
        return rng.laplace(0, 1, 30000)
    if name == "student3":  # heavy tails on both sides
        return rng.standard_t(3, 40000)
    raise ValueError(name)


@pytest.mark.parametrize("name,fmt", [("normal+outliers", IntFormat(8)), ("gamma", IntFormat(8, signed=False)),
                                      ("laplace", IntFormat(6)), ("student3", IntFormat(8)),
                                      ("student3", IntFormat(8, signed=False))])
def test_entropy_threshold_equals_tensorrt_transcription(name, fmt):
    abs_x = np.abs(_data(name))
    want, gap = tensorrt_entropy_threshold(abs_x, fmt.qmax + 1)  # 2^(bits-1) levels signed, 2^bits unsigned
    assert gap > KL_TIE_MARGIN
    assert want < abs_x.max()  # the search clipped: the outlier fold decided where
    assert entropy_threshold(abs_x, fmt) == want

"""Per-tensor quantization error of the fixed backend against the float reference, and sensitivity.

For one batch, every op's output is captured from both backends (the fixed one carries the error
accumulated up to that op). Per tensor: SQNR = 10 log10(sum ref^2 / sum (ref - fixed)^2) dB, cosine
similarity, max |ref - fixed|, accumulator overflows. Sensitivity: each quantizable op is quantized
alone (all others float) and ranked by the SQNR of the final hidden state it leaves (lowest first).
Additive-mask entries (finfo.min) are excluded from the comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..backends.base import Backend
from ..backends.fixed import FixedBackend
from ..backends.reference import ReferenceBackend
from .calibrate import MASKED, Calibration
from .config import QuantConfig

QUANTIZED_KINDS = ("embedding", "add", "linear", "matmul", "scale", "softmax", "layernorm", "gelu", "relu", "affine")


def capture(backend: Backend) -> dict[str, np.ndarray]:
    """Make `backend` keep every op's output (by op name) in the returned dict."""
    store: dict[str, np.ndarray] = {}
    original = backend._log

    def log(kind, name, inputs, weights, output, **attrs):
        original(kind, name, inputs, weights, output, **attrs)
        store[name] = np.asarray(output, np.float64)

    backend._log = log
    backend.record = True
    return store


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    keep = ref > MASKED
    r, g = ref[keep], got[keep]
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    sqnr = np.inf if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)
    denom = float(np.linalg.norm(r) * np.linalg.norm(g))
    return {"sqnr_db": round(float(sqnr), 2), "cosine": round(float(r @ g) / denom, 6) if denom else 1.0,
            "max_abs_err": float(np.abs(r - g).max(initial=0.0))}


def tensor_errors(run: Callable[[Backend], object], config: QuantConfig, calibration: Calibration) -> list[dict]:
    """Rows in forward order: tensor, kind, sqnr_db, cosine, max_abs_err, overflows."""
    reference = ReferenceBackend()
    ref_out = capture(reference)
    run(reference)
    fixed = FixedBackend(config=config, calibration=calibration)
    fixed_out = capture(fixed)
    run(fixed)
    kinds = {op.name: op.kind for op in reference.ops}
    return [{"tensor": name, "kind": kinds[name], **compare(ref_out[name], fixed_out[name]),
             "overflows": fixed.overflows.get(name, 0)} for name in ref_out]


def sensitivity(run: Callable[[Backend], np.ndarray], config: QuantConfig, calibration: Calibration,
                ops: list[tuple[str, str]], progress=None) -> list[dict]:
    """Quantize one op at a time; `run` returns the final hidden state. Most damaging first."""
    reference = run(ReferenceBackend())
    rows = []
    for name, kind in progress(ops) if progress else ops:
        alone = config.with_fields(rule=[*map(dict, config.rules), {"name": "*", "quantize": False},
                                         {"name": name, "quantize": True}])
        got = run(FixedBackend(config=alone, calibration=calibration))
        error = compare(np.asarray(reference, np.float64), np.asarray(got, np.float64))
        rows.append({"tensor": name, "kind": kind, **error})
    return sorted(rows, key=lambda r: r["sqnr_db"])

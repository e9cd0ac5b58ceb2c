"""Per-tensor quantization error of the fixed backend against the float reference, and sensitivity.

For one batch, every op's output is captured from both backends (the fixed one carries the error
accumulated up to that op). Per tensor: SQNR = 10 log10(sum ref^2 / sum (ref - fixed)^2) dB, cosine
similarity, max |ref - fixed|, accumulator overflows. Sensitivity: each quantizable op is quantized
alone (all others float) and ranked by the SQNR of the final hidden state it leaves (lowest first).
Additive-mask entries (finfo.min) are excluded from the comparison, and, given the batch's attention
mask, so are padding positions (their hidden states reach no pooled output; left in, their error swamps
the real tokens': e.g. 3 dB instead of 17 dB on a MiniLM residual sum). `with_baseline` sets the rows of
one config beside another's (e.g. per-channel vs per-tensor residual scales): the SQNR change per tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..backends.base import Backend
from ..backends.fixed import FixedBackend
from ..backends.reference import ReferenceBackend
from ..model import HEAD_OPS, indexes_keys
from .calibrate import MASKED, Calibration
from .config import RULE_KINDS, QuantConfig



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


def real_positions(shape: tuple, token_mask: np.ndarray | None, keys: bool = False) -> np.ndarray | bool:
    """Entries of an op output of `shape` that belong to real tokens: per-head (B, H, T, ...) rows and
    token-major (B, T, C) rows of padding tokens are dropped, and with `keys` (a (B, H, T, T) score or
    probability output, model.indexes_keys) padding keys too; True (all) for other shapes or without a
    mask. token_mask: (B, T), 1 for real tokens. Every 4-D op output of the forward is per head, so a
    4-D shape is read as per head (with H == T the (B, T, ...) reading would mask heads). Only `keys`
    says that the last axis is the keys': a head width D, an approximator width h or a hidden size C
    may equal T. 2-D outputs (pooler, logits) have no token axis."""
    if token_mask is None:
        return True
    real = np.asarray(token_mask) > 0  # (B, T)
    B, T = real.shape
    if len(shape) == 4 and shape[0] == B and shape[2] == T:
        rows = real[:, None, :, None]  # (B, 1, T, 1)
        return rows & real[:, None, None, :] if keys else rows
    if len(shape) == 3 and tuple(shape[:2]) == (B, T):
        return real[:, :, None]  # (B, T, 1)
    return True


def compare(ref: np.ndarray, got: np.ndarray, token_mask: np.ndarray | None = None, keys: bool = False) -> dict:
    keep = (ref > MASKED) & real_positions(ref.shape, token_mask, keys)
    r, g = ref[keep], got[keep]
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    sqnr = np.inf if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)
    return {"sqnr_db": round(float(sqnr), 2), "cosine": round(cosine(r, g), 6),
            "max_abs_err": float(np.abs(r - g).max(initial=0.0))}


def cosine(r: np.ndarray, g: np.ndarray) -> float:
    """Cosine similarity of two flat tensors. Against an all-zero tensor (e.g. every code of a 2-bit
    output rounded to the zero point) it is 0, as torch's cosine_similarity gives: nothing of r's
    direction survives; 1 only when both are all zero, i.e. equal."""
    denom = float(np.linalg.norm(r) * np.linalg.norm(g))
    if denom:
        return float(r @ g) / denom
    return 1.0 if not np.any(r) and not np.any(g) else 0.0


def tensor_errors(run: Callable[[Backend], object], config: QuantConfig, calibration: Calibration,
                  token_mask: np.ndarray | None = None) -> list[dict]:
    """Rows in forward order: tensor, kind, sqnr_db, cosine, max_abs_err, overflows (real tokens only
    when the batch's token_mask is given)."""
    reference = ReferenceBackend()
    ref_out = capture(reference)
    run(reference)
    fixed = FixedBackend(config=config, calibration=calibration)
    fixed_out = capture(fixed)
    run(fixed)
    kinds = {op.name: op.kind for op in reference.ops}
    return [{"tensor": name, "kind": kinds[name],
             **compare(ref_out[name], fixed_out[name], token_mask, indexes_keys(name)),
             "overflows": fixed.overflows.get(name, 0)} for name in ref_out]


def with_baseline(rows: list[dict], baseline: list[dict]) -> list[dict]:
    """rows (tensor_errors) with the baseline config's SQNR of the same tensor and the change, in dB."""
    base = {r["tensor"]: r["sqnr_db"] for r in baseline}
    return [{**r, "baseline_sqnr_db": base[r["tensor"]], "delta_db": sqnr_change(r["sqnr_db"], base[r["tensor"]])}
            for r in rows]


def sqnr_change(sqnr_db: float, baseline_db: float) -> float:
    """sqnr_db - baseline_db, rounded; 0 where both are exact (inf - inf would be nan: no change), and
    +-inf where only one is."""
    if sqnr_db == baseline_db:
        return 0.0
    return round(sqnr_db - baseline_db, 2)


def ranked_ops(rows: list[dict], config: QuantConfig) -> list[tuple[str, str]]:
    """The (tensor, kind) ops of tensor_errors' rows that sensitivity can rank: quantized under `config`
    and before the final hidden state it measures (a pooler or classifier op, quantized alone, leaves that
    state exact: every one would rank as harmless)."""
    return [(r["tensor"], r["kind"]) for r in rows if r["kind"] in RULE_KINDS and not r["tensor"].startswith(HEAD_OPS)
            and config.settings(r["tensor"], r["kind"]).quantize]


def sensitivity(run: Callable[[Backend], np.ndarray], config: QuantConfig, calibration: Calibration,
                ops: list[tuple[str, str]], progress=None, token_mask: np.ndarray | None = None) -> list[dict]:
    """Quantize one op at a time; `run` returns the final hidden state. Most damaging first."""
    reference = run(ReferenceBackend())
    rows = []
    for name, kind in progress(ops) if progress else ops:
        alone = config.with_fields(rule=[*map(dict, config.rules), {"name": "*", "quantize": False},
                                         {"name": name, "quantize": True}])
        got = run(FixedBackend(config=alone, calibration=calibration))
        error = compare(np.asarray(reference, np.float64), np.asarray(got, np.float64), token_mask)
        rows.append({"tensor": name, "kind": kind, **error})
    return sorted(rows, key=lambda r: r["sqnr_db"])

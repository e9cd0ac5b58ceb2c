"""Per-tensor quantization error of the fixed backend against the float reference, and sensitivity.

For a batch, every op's output is captured from both backends (the fixed one carries the error
accumulated up to that op). Per tensor: SQNR = 10 log10(sum ref^2 / sum (ref - fixed)^2) dB, cosine
similarity, max |ref - fixed|, accumulator overflows. Sensitivity: each quantizable op is quantized
alone (all others float) and ranked by the SQNR of the final hidden state it leaves (lowest first).
Additive-mask entries (finfo.min) are excluded from the comparison, and, given the batch's attention
mask, so are padding positions (their hidden states reach no pooled output; left in, their error swamps
the real tokens': e.g. 3 dB instead of 17 dB on a MiniLM residual sum). `with_baseline` sets the rows of
one config beside another's (e.g. per-channel vs per-tensor residual scales): the SQNR change per tensor.
Over several batches every figure is accumulated (`Agreement`): SQNR and cosine are ratios of sums over the
compared entries, the max error a max, overflows a count, so under one calibration they are those of one batch
holding every text (up to float32 rounding), except the overflow counts, which count padded positions too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend
from ..backends.fixed import FixedBackend
from ..backends.reference import ReferenceBackend
from ..model import HEAD_OPS, indexes_keys
from .calibrate import MASKED, Calibration
from .config import RULE_KINDS, QuantConfig

Run = Callable[[Backend], object]  # one batch's forward on a backend (for sensitivity: its final hidden state)
Batches = Sequence[tuple[Run, np.ndarray | None]]  # (forward, token mask (B, T) or None: all tokens real)


def capture(backend: Backend) -> dict[str, np.ndarray]:
    """Make `backend` keep every op's output (by op name) in the returned dict. Once per backend: its `_log`
    is then a plain function, which WeakMethod cannot take."""
    store: dict[str, np.ndarray] = {}
    # weak: the backend holds `log`, and a strong reference back would be a cycle, which keeps the backend and
    # every output captured alive until the garbage collector runs (memory grew with quant-error's batches)
    original = weakref.WeakMethod(backend._log)

    def log(kind, name, inputs, weights, output, **attrs):
        original()(kind, name, inputs, weights, output, **attrs)
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


@dataclass
class Agreement:
    """Running sums of ref against got over the entries compared (real tokens, no mask entries), batch by batch."""

    signal: float = 0.0  # sum ref^2
    noise: float = 0.0  # sum (ref - got)^2
    got_power: float = 0.0  # sum got^2
    dot: float = 0.0  # sum ref * got
    max_abs_err: float = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray, token_mask: np.ndarray | None = None, keys: bool = False) -> None:
        keep = (ref > MASKED) & real_positions(ref.shape, token_mask, keys)
        r, g = ref[keep], got[keep]
        self.signal += float(np.sum(r ** 2))
        self.noise += float(np.sum((r - g) ** 2))
        self.got_power += float(np.sum(g ** 2))
        self.dot += float(r @ g)
        self.max_abs_err = max(self.max_abs_err, float(np.abs(r - g).max(initial=0.0)))

    def figures(self) -> dict:
        sqnr = np.inf if self.noise == 0 else 10 * np.log10(max(self.signal, 1e-300) / self.noise)
        return {"sqnr_db": round(float(sqnr), 2), "cosine": round(self.cosine(), 6), "max_abs_err": self.max_abs_err}

    def cosine(self) -> float:
        """Cosine similarity of the flat tensors. Against an all-zero tensor (e.g. every code of a 2-bit
        output rounded to the zero point) it is 0, as torch's cosine_similarity gives: nothing of ref's
        direction survives; 1 only when both are all zero, i.e. equal."""
        denom = np.sqrt(self.signal) * np.sqrt(self.got_power)
        if denom:
            return float(self.dot / denom)
        return 1.0 if self.signal == 0 and self.got_power == 0 else 0.0


def compare(ref: np.ndarray, got: np.ndarray, token_mask: np.ndarray | None = None, keys: bool = False) -> dict:
    agreement = Agreement()
    agreement.add(ref, got, token_mask, keys)
    return agreement.figures()


def tensor_errors(run: Run, config: QuantConfig, calibration: Calibration,
                  token_mask: np.ndarray | None = None) -> list[dict]:
    """batched_tensor_errors of one batch."""
    return batched_tensor_errors([(run, token_mask)], config, calibration)


def batched_tensor_errors(batches: Batches, config: QuantConfig, calibration: Calibration,
                          progress: Callable[[Batches], Iterable] | None = None) -> list[dict]:
    """Rows in forward order: tensor, kind, sqnr_db, cosine, max_abs_err, overflows over every batch (real
    tokens only where a batch's token mask is given). Each batch's op outputs are compared and let go before
    the next is run: memory holds one batch's."""
    agreements: dict[str, Agreement] = {}
    kinds: dict[str, str] = {}
    overflows: dict[str, int] = {}
    for run, token_mask in progress(batches) if progress else batches:
        reference = ReferenceBackend()
        ref_out = capture(reference)
        run(reference)
        fixed = FixedBackend(config=config, calibration=calibration)
        fixed_out = capture(fixed)
        run(fixed)
        kinds.update((op.name, op.kind) for op in reference.ops)
        for name in ref_out:
            agreements.setdefault(name, Agreement()).add(ref_out[name], fixed_out[name], token_mask,
                                                         indexes_keys(name))
        for name, count in fixed.overflows.items():
            overflows[name] = overflows.get(name, 0) + count
    return [{"tensor": name, "kind": kinds[name], **agreement.figures(), "overflows": overflows.get(name, 0)}
            for name, agreement in agreements.items()]


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


def sensitivity(batches: Batches, config: QuantConfig, calibration: Calibration, ops: list[tuple[str, str]],
                progress: Callable[[Iterator], Iterable] | None = None) -> list[dict]:
    """Quantize one op at a time (all others float); each batch's run returns the final hidden state, compared
    with the reference's over every batch. Most damaging first. `progress` wraps the len(batches) * len(ops)
    steps."""
    alone = {name: config.with_fields(rule=[*map(dict, config.rules), {"name": "*", "quantize": False},
                                            {"name": name, "quantize": True}]) for name, _ in ops}
    agreements = {name: Agreement() for name in alone}
    steps = _against_reference(batches, list(alone))
    for run, token_mask, reference, name in progress(steps) if progress else steps:
        got = run(FixedBackend(config=alone[name], calibration=calibration))
        agreements[name].add(reference, np.asarray(got, np.float64), token_mask)
    rows = [{"tensor": name, "kind": kind, **agreements[name].figures()} for name, kind in ops]
    return sorted(rows, key=lambda r: r["sqnr_db"])


def _against_reference(batches: Batches, names: list[str]) -> Iterator[tuple]:
    """(run, token mask, reference final state, op name) for each batch and op, batch by batch: the reference
    runs once per batch, and only one batch's final state is held."""
    for run, token_mask in batches:
        reference = np.asarray(run(ReferenceBackend()), np.float64)
        for name in names:
            yield run, token_mask, reference, name

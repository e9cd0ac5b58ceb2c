"""quant-error over several batches: a large --limit ran as one batch, every op output of every text held at
once (--limit 100000 still running after 10 minutes at 3.3 GB), with no progress shown. The figures summed
batch by batch are those of one batch holding every text: SQNR and cosine are ratios of sums over the compared
entries, the max error a max, the overflows a count."""

from __future__ import annotations

import csv
import gc
import io
import weakref

import numpy as np
import pytest

from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.cli import main
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import calibrate
from mabert_hw.quant.error import (Agreement, batched_tensor_errors, capture, compare, ranked_ops, sensitivity,
                                   tensor_errors)
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

SPEC = TINY_SPECS[0]
B, T = 4, 7
CONFIG = qconfig.from_dict({"act_bits": 6, "acc_bits": 14})  # accumulators narrow enough to overflow
SPLIT = [slice(0, 1), slice(1, 3), slice(3, 4)]  # the rows of the one batch, as three


def _batches():
    """runs(rows): (forward, token mask) of those rows of one padded batch (the last row's padding after 4 tokens)."""
    weights = random_weights(SPEC, 7)
    ids = np.random.default_rng(7).integers(1, SPEC.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[3, 4:] = 0

    def runs(rows: slice):
        def run(backend):
            return forward(SPEC, weights, ids[rows], backend, mask[rows]).last_hidden_state

        return run, mask[rows]

    return runs


def test_agreement_summed_over_chunks_is_that_of_the_whole():
    rng = np.random.default_rng(0)
    ref, token_mask = rng.normal(0, 1, (B, T, 5)), np.ones((B, T))
    token_mask[3, 4:] = 0
    got = ref + rng.normal(0, 0.1, ref.shape)
    summed = Agreement()
    for rows in SPLIT:
        summed.add(ref[rows], got[rows], token_mask[rows])
    assert summed.figures() == compare(ref, got, token_mask)


def test_per_tensor_figures_over_batches_are_those_of_one_batch():
    runs = _batches()
    run, token_mask = runs(slice(None))
    calibration = calibrate(run)
    one = tensor_errors(run, CONFIG, calibration, token_mask)
    split = batched_tensor_errors([runs(rows) for rows in SPLIT], CONFIG, calibration)
    assert sum(r["overflows"] for r in one) > 0  # the counts are compared, not only zeros
    assert split == one


def test_sensitivity_over_batches_is_that_of_one_batch():
    runs = _batches()
    run, token_mask = runs(slice(None))
    calibration = calibrate(run)
    ops = ranked_ops(tensor_errors(run, CONFIG, calibration, token_mask), CONFIG)[:6]
    steps = []
    split = sensitivity([runs(rows) for rows in SPLIT], CONFIG, calibration, ops,
                        progress=lambda it: (steps.append(step) or step for step in it))
    assert split == sensitivity([(run, token_mask)], CONFIG, calibration, ops)
    assert len(steps) == len(SPLIT) * len(ops)  # the progress counts every (batch, op) step


def test_a_captured_backend_goes_with_its_last_reference():
    """capture's hook referred back to its backend: a cycle, which kept each batch's backends and captured outputs
    until the garbage collector ran (quant-error's memory grew with --limit: 1.5 GB at 64 sentences, 0.84 now)."""
    runs = _batches()
    run, _ = runs(slice(None))
    backend = ReferenceBackend()
    outputs = capture(backend)
    run(backend)
    gone, output = weakref.ref(backend), weakref.ref(next(iter(outputs.values())))
    gc.disable()
    try:
        del backend, outputs
        assert gone() is None and output() is None
    finally:
        gc.enable()


def _per_tensor(capsys, texts, batch_size: int) -> tuple[list[dict], str]:
    assert main(["quant-error", "minilm", "--data", str(texts), "--batch-size", str(batch_size),
                 "--no-sensitivity", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    return list(csv.DictReader(io.StringIO(captured.out))), captured.err


def test_quant_error_batches_give_the_one_batch_figures(tmp_path, minilm, capsys):
    """Texts of different lengths, so each batch of one is padded differently from the batch of three: the
    calibration runs on its own batches whatever --batch-size (it observes padding; it used to follow the batch
    size and move 83 of 105 rows), and the compared entries are the real tokens. The max error is compared to
    float32 rounding: the pooler's GEMM on 1 row or 3 differs in the last bit."""
    texts = tmp_path / "texts.txt"
    texts.write_text("A man is playing a flute.\nA woman is slicing an onion into very thin rings on a board.\n"
                     "Dogs run.\n")
    one, _ = _per_tensor(capsys, texts, 3)
    split, progress = _per_tensor(capsys, texts, 1)
    assert "per tensor" in progress and "3/3" in progress  # a bar over the batches
    figures = ("sqnr_db", "cosine", "max_abs_err")  # float32 GEMMs on 1 row or 3: the last bits differ
    assert [{k: v for k, v in r.items() if k not in figures} for r in split] == \
        [{k: v for k, v in r.items() if k not in figures} for r in one]
    for column, rel in zip(figures, (1e-3, 1e-5, 1e-5)):  # sqnr_db is printed to 0.01 dB
        assert [float(r[column]) for r in split] == pytest.approx([float(r[column]) for r in one], rel=rel), column


def test_quant_error_help_says_what_limit_and_batch_size_mean(capsys):
    with pytest.raises(SystemExit):
        main(["quant-error", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--limit N measure the first N sentences of --data (default 16)" in text
    assert "every figure is over all N sentences, summed batch by batch" in text

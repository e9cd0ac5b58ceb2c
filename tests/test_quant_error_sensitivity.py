"""quant-error's sensitivity ranking quantizes one op at a time and measures the final hidden state, so it
ranks only the ops that run before that state: a pooler or classifier op, quantized alone, leaves it
exact and used to be listed as harmless (infinite SQNR) among the real candidates."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import calibrate
from mabert_hw.quant.error import ranked_ops, sensitivity, tensor_errors
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

SPEC = dataclasses.replace(TINY_SPECS[0], num_labels=2)  # a pooler and a classification head


def _setup():
    weights = random_weights(SPEC, 5)
    ids = np.random.default_rng(5).integers(1, SPEC.vocab_size, (2, 7))

    def run(backend):
        return forward(SPEC, weights, ids, backend).last_hidden_state

    return run, calibrate(run), qconfig.from_dict({"act_bits": 6})


def test_head_ops_are_measured_but_not_ranked():
    run, calibration, config = _setup()
    rows = tensor_errors(run, config, calibration)
    head = [r["tensor"] for r in rows if r["tensor"].startswith(("pooler.", "classifier"))]
    assert {"pooler.dense", "pooler.activation", "classifier"} <= set(head)  # still in the per-tensor table
    ops = ranked_ops(rows, config)
    assert not [name for name, _ in ops if name in head]
    assert ("encoder.layer.0.attention.self.query", "linear") in ops
    # what leaving them out rests on: alone, a head op leaves the final hidden state exact
    alone = sensitivity([(run, None)], config, calibration, [("pooler.dense", "linear"), ("classifier", "linear")])
    assert all(math.isinf(r["sqnr_db"]) for r in alone), alone
    ranked = sensitivity([(run, None)], config, calibration, ops)
    assert all(math.isfinite(r["sqnr_db"]) for r in ranked), [r for r in ranked if not math.isfinite(r["sqnr_db"])]


def test_ops_the_config_leaves_in_float_are_not_ranked():
    run, calibration, _ = _setup()
    config = qconfig.from_dict({"act_bits": 6, "rule": [{"kind": "gelu", "quantize": False}]})
    ops = ranked_ops(tensor_errors(run, config, calibration), config)
    assert ops and not [kind for _, kind in ops if kind == "gelu"]

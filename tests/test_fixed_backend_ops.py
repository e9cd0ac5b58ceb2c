"""The fixed backend on particular ops: MA approximator weights quantized as stored (per group along n,
whatever T), group sizes checked against the stored widths, embedding outputs in the activation format, and
the PoWER selection run in float and listed as such.

Checked against what does not share the code under test: the padding invariance of the MA approximator (a
zero-padded score row must give the same result at any padded length) and counts of distinct values a
format can hold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.cli.common import check_configs_for_model
from mabert_hw.cost.counts import trace
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import calibrate
from mabert_hw.quant.error import capture
from mabert_hw.spec import Variant
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS


MA_SPEC = dataclasses.replace(TINY_SPECS[0], variant=Variant(softmax="mlp", ffn_activation="relu", norm="powernorm",
                                                             mask="multiplicative", softmax_input=16,
                                                             softmax_hidden=8))


APPROXIMATOR = "encoder.layer.0.attention.self.softmax.linear_relu_stack."


def _ma_runs(real: int):
    """Runs of MA_SPEC on two sentences of `real` tokens, unpadded and zero-padded to n = 16 tokens."""
    weights = random_weights(MA_SPEC, 4)
    ids = np.random.default_rng(4).integers(1, MA_SPEC.vocab_size, (2, real))
    n = MA_SPEC.variant.softmax_input
    padded = np.zeros((2, n), np.int64)
    padded[:, :real] = ids
    mask = (np.arange(n) < real).astype(np.int64)[None].repeat(2, 0)

    def run(input_ids, attention_mask):
        return lambda backend: forward(MA_SPEC, weights, input_ids, backend, attention_mask).last_hidden_state

    return run(ids, np.ones_like(ids)), run(padded, mask)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_ma_approximator_output_does_not_depend_on_the_padded_length(granularity):
    """The approximator reads a score row zero-padded to n (the padded keys' scores are 0 with the 0/1
    mask): the real rows and columns of its linears' outputs must not change with the padding, which
    holds only when W_1 (h, n) and W_2 (n, h) are quantized as stored, not as cut to the T tokens. Quantizing
    the cut weights at T = 7 with group_size 4 used to raise ValueError (7 columns are no whole number of groups)."""
    unpadded, padded = _ma_runs(7)
    calibration = calibrate(padded)
    config = qconfig.from_dict({"weight_granularity": granularity, "group_size": 4, "nonlinear": "integer"})
    outputs = []
    for run in (unpadded, padded):
        backend = FixedBackend(config=config, calibration=calibration)
        store = capture(backend)
        run(backend)
        outputs.append(store)
    short, long = outputs
    hidden = APPROXIMATOR + "0"
    assert short[hidden].shape[-2:] == (7, 8) and long[hidden].shape[-2:] == (16, 8)
    np.testing.assert_array_equal(short[hidden], long[hidden][:, :, :7])  # real queries
    np.testing.assert_array_equal(short[APPROXIMATOR + "2"], long[APPROXIMATOR + "2"][:, :, :7, :7])


def test_group_sizes_are_checked_against_the_stored_approximator_width():
    """n = 16, h = 8: group_size 4 fits every linear (a check that traced T = 2 used to refuse it: 'does
    not divide its 2 inputs'); 16 does not fit the second linear's h = 8 inputs."""
    check_configs_for_model([qconfig.from_dict({"weight_granularity": "group", "group_size": 4})], "cfg", MA_SPEC)
    approximator_groups = {"rule": [{"name": "*.softmax.linear_relu_stack.*", "weight_granularity": "group",
                                     "group_size": 16}]}
    with pytest.raises(UserError, match=r"cfg: encoder.layer.0.attention.self.softmax.linear_relu_stack.2: "
                                        r"group_size 16 does not divide its 8 inputs \(and 1 more ops\)$"):
        check_configs_for_model([qconfig.from_dict(approximator_groups)], "cfg", MA_SPEC)


def test_group_misfit_in_the_backend_is_a_user_error():
    spec = TINY_SPECS[0]  # intermediate 40: no groups of 3
    weights, batch = random_weights(spec, 1), random_batch(spec, 2, 6, seed=1)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask)

    backend = FixedBackend(config=qconfig.from_dict({"weight_granularity": "group", "group_size": 3}),
                           calibration=calibrate(run))
    with pytest.raises(UserError, match=r"output.dense: group_size 3 does not divide its 40 inputs"):
        run(backend)


@pytest.mark.parametrize("values, most, per_channel", [
    ({"rule": [{"kind": "embedding", "act_bits": 3}]}, 8, False),
    ({"rule": [{"kind": "embedding", "act_bits": 3, "act_granularity": "channel"}]}, 8, True),
    ({"residual_bits": 4}, 16, False),
])
def test_embedding_outputs_take_the_activation_format(values, most, per_channel):
    """A b-bit output holds at most 2^b distinct values (per channel with per-channel scales); the
    backend used to return the rows of the 8-bit per-row table (hundreds of distinct values)."""
    spec = TINY_SPECS[0]
    weights, batch = random_weights(spec, 2), random_batch(spec, 3, 12, seed=2, padded=False)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    backend = FixedBackend(config=qconfig.from_dict(values), calibration=calibrate(run))
    store = capture(backend)
    run(backend)
    for name in ("word_embeddings", "position_embeddings"):
        out = store["embeddings." + name].reshape(-1, spec.hidden)  # (B T, C)
        columns = out.T if per_channel else [out]
        assert max(len(np.unique(c)) for c in columns) <= most, name
        assert len(np.unique(out)) > 1


def test_power_selection_is_listed_in_float_ops():
    spec = TINY_SPECS[0].with_variant(retention=(8, 6))
    weights, batch = random_weights(spec, 3), random_batch(spec, 2, 10, seed=3)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    backend = FixedBackend(calibration=calibrate(run))
    backend.record = True
    run(backend)
    selection = {op.kind for op in backend.ops if op.name.endswith((".power.significance", ".power.top_tokens"))}
    assert selection == {"significance", "top_tokens"}
    assert backend.float_ops == selection


@pytest.mark.parametrize("spec", [*TINY_SPECS, MA_SPEC], ids=lambda s: s.name + "-" + s.variant.describe())
def test_fixed_backend_executes_the_ops_the_profiler_counts(spec):
    """README: every backend's executed ops equal the trace (cost.counts), the fixed one included."""
    weights = random_weights(spec, seed=2)
    batch = random_batch(spec, batch=2, seq_len=9, seed=4)

    def run(backend):
        return forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    fixed = FixedBackend(config=qconfig.QuantConfig(), calibration=calibrate(run), record=True)
    run(fixed)
    assert fixed.ops == trace(spec, *batch.shape)

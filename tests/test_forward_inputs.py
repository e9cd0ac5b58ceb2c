"""forward() refuses input ids, attention masks and token types of the wrong shape or dtype, in one line, on
every backend: a (B, 1) or (1, T) mask would broadcast, boolean ids would index the table as a mask."""

from __future__ import annotations

import numpy as np
import pytest

from mabert_hw.backends import make_backend
from mabert_hw.errors import UserError
from mabert_hw.inputs import random_batch
from mabert_hw.model import forward
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS


def _wrong_inputs():
    spec = TINY_SPECS[0]
    batch = random_batch(spec, 3, 8, seed=0)
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    return spec, [
        ("attention_mask", ids, mask[:, :1], types),  # (B, 1): broadcast over tokens, masked nothing per token
        ("attention_mask", ids, mask[:1], types),  # (1, T): row 0's padding for every row
        ("attention_mask", ids, mask[:, :-1], types),
        ("token_type_ids", ids, mask, types[:1]),
        ("token_type_ids", ids, mask, types[:, :-1]),
        ("token_type_ids", ids, mask, types.astype(np.float32)),
        ("input_ids", ids.astype(np.float32), mask, types),
        ("input_ids", ids > 5, mask, types),  # booleans would index the table as a mask
        ("attention_mask", ids, mask * 2, types),  # not 0/1
    ]


@pytest.mark.parametrize("case", range(len(_wrong_inputs()[1])))
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_forward_refuses_inputs_of_the_wrong_shape_or_type(case, backend):
    if backend == "fast":
        pytest.importorskip("numba")
    spec, cases = _wrong_inputs()
    name, ids, mask, types = cases[case]
    with pytest.raises(UserError, match=name) as caught:
        forward(spec, random_weights(spec), ids, make_backend(backend), mask, types)
    assert "\n" not in str(caught.value)

"""The FFF layer on input layouts tests/test_fff.py does not try: one token, a bare vector,
a (B, T, C) batch, rows that are not contiguous, float64, no tokens. Every backend's answer must be
the torch hard path's on the same float32 values."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mabert_hw.backends import make_backend
from mabert_hw.kernels.fff import fff_forward
from tests.test_fff import _layer, _report
from tests.tolerances import FFF_LAYER_VS_TORCH_ATOL

LAYOUTS = {
    "one token": lambda x: x[:1],
    "bare vector": lambda x: x[0],
    "batch (B, T, C)": lambda x: x.reshape(4, 5, -1),
    "column-major": np.asfortranarray,
    "every other row": lambda x: x[::2],
    "float64": lambda x: x.astype(np.float64),
    "no tokens": lambda x: x[:0],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("depth,trees", [(0, 3), (4, 2)])
def test_every_backend_takes_any_input_layout(layout, depth, trees):
    module, (w_in, b_in, w_out), tokens = _layer(depth, trees, seed=31 + depth)
    x = LAYOUTS[layout](tokens)
    with torch.no_grad():
        want = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    runs = {"numba": fff_forward(x, w_in, b_in, w_out, depth, trees)}
    for name in ("reference", "fast"):
        runs[name] = np.asarray(make_backend(name).fff("fff", x, w_in, b_in, w_out, depth, trees))
    for name, got in runs.items():
        assert got.shape == want.shape, f"{name}: shape {got.shape}, torch {want.shape}"
        assert np.allclose(got, want, rtol=0, atol=FFF_LAYER_VS_TORCH_ATOL), \
            f"{name}: {_report(got, want, FFF_LAYER_VS_TORCH_ATOL)}"

"""The fast engine's kernels on inputs the other fast tests miss, against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from mabert_hw.backends import make_backend  # noqa: E402

from .tolerances import FAST_VS_REFERENCE_ATOL, FAST_VS_REFERENCE_RTOL  # noqa: E402


def test_fast_gelu_far_from_zero_matches_torch_unfused_and_after_a_gemm():
    """GELU(x) -> 0 as x -> -inf: erf32's fit exceeds 1 by an ulp past x = 3.62, which made 1 + erf(x / sqrt 2)
    -1.2e-7 far out and GELU(-1e4) = +6e-4. Pre-activations this large are rare, but the sign was wrong."""
    x = np.concatenate([-np.geomspace(1e4, 6.0, 64), np.geomspace(6.0, 1e4, 64)]).astype(np.float32)[None, :]
    expected = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()  # erf form, HF hidden_act="gelu"
    fast = make_backend("fast")
    unfused = fast.activation("gelu", x, "gelu")
    eye, zeros = np.eye(x.shape[1], dtype=np.float32), np.zeros(x.shape[1], np.float32)
    fused = fast.finished(fast.activation("gelu", fast.linear("dense", x, eye, zeros), "gelu"))  # GEMM + bias + GELU
    for label, got in (("unfused", unfused), ("fused", fused)):
        np.testing.assert_allclose(got, expected, rtol=FAST_VS_REFERENCE_RTOL, atol=FAST_VS_REFERENCE_ATOL,
                                   err_msg=label)

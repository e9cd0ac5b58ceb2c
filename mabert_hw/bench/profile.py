"""Where an engine's time goes: wall time per protocol call kind, and the machine's GEMM rate.

`time_by_call` wraps a backend instance's protocol methods with timers. With the fast backend the
deferred work lands on the call that consumes it: `linear` is the BLAS GEMM alone, `activation`
the bias + GELU, `layernorm` the bias + residual + LayerNorm, `split_heads` the Q/K/V bias adds,
`matmul` the whole fused attention (the scores matmul, scale, mask and softmax only annotate).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from ..backends import make_backend
from ..inputs import Batch
from ..model import forward
from ..spec import ModelSpec
from ..weights import Weights

TIMED_CALLS = ("embedding", "add", "linear", "matmul", "scale", "mask_scores", "softmax", "layernorm",
               "activation", "first_token", "split_heads", "merge_heads", "finished")


def time_by_call(backend_name: str, spec: ModelSpec, weights: Weights, batch: Batch, repeat: int,
                 **options) -> list[dict]:
    """Rows {call, ms (mean per forward), share_%}, plus 'other' (model.py and Python overhead)."""
    backend = make_backend(backend_name, **options)
    spent: Counter = Counter()
    for name in TIMED_CALLS:
        method = getattr(backend, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            out = _method(*args, **kwargs)
            spent[_name] += time.perf_counter() - start
            return out

        setattr(backend, name, timed)

    def run():
        forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    run()
    spent.clear()
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    total = (time.perf_counter() - start) / repeat
    rows = [{"call": name, "ms": 1e3 * seconds / repeat} for name, seconds in spent.most_common()]
    rows.append({"call": "other", "ms": 1e3 * total - sum(r["ms"] for r in rows)})
    for row in rows:
        row["share_%"] = 100.0 * row["ms"] / (1e3 * total)
    return rows


def numpy_gemm_gflops(m: int = 1024, k: int = 768, n: int = 3072, repeat: int = 5) -> float:
    """Best-of-`repeat` GFLOP/s of one float32 (m, k) x (k, n) NumPy GEMM: 2 m k n FLOPs per call.

    Default shape: bert-base's intermediate GEMM at B*T = 1024 tokens (C = 768, F = 3072).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    np.dot(a, b)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.dot(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9

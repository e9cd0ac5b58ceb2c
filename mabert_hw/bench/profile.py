"""Where an engine's time goes: wall time per protocol call kind, and the machine's GEMM rate.

`time_by_call` wraps a backend instance's protocol methods with timers. With the fast backend the
deferred work lands on the call that consumes it (FAST_CALL_MEANING): GEMMs run inside the kernel of
the op that consumes their output.
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

# Every op of the protocol (backends/base.py), the variants' included: an FFF walk or a PoWER
# selection left out here would be timed as "other", the Python overhead.
TIMED_CALLS = ("embedding", "add", "linear", "matmul", "scale", "mask_scores", "softmax", "layernorm",
               "activation", "affine", "fff", "first_token", "significance", "top_tokens", "select_tokens",
               "split_heads", "merge_heads", "finished")
FAST_CALL_MEANING = {
    "matmul": "fused Q/K/V GEMM + attention (bias, scores, scale, mask, softmax, context)",
    "activation": "FFN-in GEMM + bias + GELU (pooler: GEMM + bias + tanh)",
    "layernorm": "GEMM + bias + residual + LayerNorm (attention output, FFN-out); embeddings LN",
    "linear": "nothing: the GEMM is deferred to its consumer",
    "finished": "GEMMs whose output leaves the forward (classifier)",
}


def time_by_call(backend_name: str, spec: ModelSpec, weights: Weights, batch: Batch, repeat: int,
                 clock=time.perf_counter, **options) -> list[dict]:
    """Rows {call, ms (mean per forward), share_%}, plus 'other' (model.py and Python overhead).

    clock: time.perf_counter (wall) or time.process_time (CPU time of the process: on one thread,
    the work done whatever else runs on the machine)."""
    backend = make_backend(backend_name, **options)
    spent: Counter = Counter()
    for name in TIMED_CALLS:
        method = getattr(backend, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start = clock()
            out = _method(*args, **kwargs)
            spent[_name] += clock() - start
            return out

        setattr(backend, name, timed)

    def run():
        forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)

    run()
    spent.clear()
    start = clock()
    for _ in range(repeat):
        run()
    total = (clock() - start) / repeat
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

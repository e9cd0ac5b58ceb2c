"""Engine benchmark record: fast vs reference vs torch eager vs onnxruntime fp32 on this CPU.

MiniLM-L6 (all-MiniLM-L6-v2 weights) and bert-base-uncased (random weights) at (B, T) in
{(1,128), (8,128), (32,128), (8,512)} on the machine's threads, plus MiniLM on 1 thread (the
reference engine and the 1-thread runs only up to B*T = 1024 tokens, to keep the run short), each
shape one `mabert_hw.bench.timing.bench` run (engines interleaved after warm-up). Also, in the same
run: one large NumPy GEMM's GFLOP/s (the yardstick of the 80% target), the fast engine's time by
protocol call, and the first forward in a fresh process (numba's cached compilation). The load
average is recorded: the machine may be shared.

    python analysis/bench_engines.py              # -> reports/engines/ (about 25 min on 2 shared cores)
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mabert_hw import checkpoint
from mabert_hw.bench.profile import numpy_gemm_gflops, time_by_call
from mabert_hw.bench.timing import bench, machine_threads
from mabert_hw.inputs import random_batch
from mabert_hw.report import engine_plots
from mabert_hw.report.tables import csv_table, markdown_table
from mabert_hw.spec import PRESETS
from mabert_hw.weights import random_weights

OUT = Path(__file__).resolve().parents[1] / "reports" / "engines"
SHAPES = ((1, 128), (8, 128), (32, 128), (8, 512))
SMALL_TOKENS = 8 * 128  # the reference engine and the 1-thread runs only up to B*T = 1024 (time)
TARGET_RATIO = 0.70  # issue 3: fast <= 0.70 x torch eager on MiniLM
TARGET_GEMM_FRACTION = 0.80  # issue 3: fast >= 80% of one large NumPy GEMM's GFLOP/s on bert-base
FIRST_CALL = textwrap.dedent("""
    import time
    from mabert_hw import checkpoint
    from mabert_hw.inputs import random_batch
    ck = checkpoint.load("minilm")
    batch = random_batch(ck.spec, 8, 128)
    start = time.perf_counter()
    from mabert_hw.backends import make_backend
    from mabert_hw.model import forward
    forward(ck.spec, ck.weights, batch.input_ids, make_backend("fast"), batch.attention_mask, batch.token_type_ids)
    print(time.perf_counter() - start)
""")
COLUMNS = ["model", "threads", "batch", "seq_len", "engine", "median_ms", "min_ms", "max_ms", "tokens_per_s",
           "gflops_per_s", "ratio_vs_torch", "skipped"]


def models():
    minilm = checkpoint.load("minilm")
    base = PRESETS["bert-base-uncased"]
    return [(minilm.spec, minilm.weights, ["fast", "reference", "torch", "ort"], (machine_threads(), 1)),
            (base, random_weights(base), ["fast", "torch", "ort"], (machine_threads(),))]


def first_call_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(repeat: int, base_repeat: int, shapes) -> dict:
    record = {"load_before": os.getloadavg(), "threads": machine_threads(), "rows": [], "profiles": {}}
    record["gemm_gflops_before"] = numpy_gemm_gflops()
    record["first_call_s"] = first_call_seconds()
    for spec, weights, engines, thread_counts in models():
        for threads in thread_counts:
            for batch, seq_len in shapes:
                if threads == 1 and batch * seq_len > SMALL_TOKENS:
                    continue
                n = repeat if spec.layers < 12 else base_repeat
                chosen = [e for e in engines if e != "reference" or batch * seq_len <= SMALL_TOKENS]
                print(f"{spec.name} B={batch} T={seq_len} threads={threads} ...", file=sys.stderr, flush=True)
                document = bench(spec, weights, batch, seq_len, chosen, n, threads, progress=True)
                for engine, result in document["engines"].items():
                    row = {"model": spec.name, "threads": threads, "batch": batch, "seq_len": seq_len,
                           "engine": engine}
                    row.update(result)
                    record["rows"].append(row)
        inputs = random_batch(spec, 8, 128)
        record["profiles"][spec.name] = time_by_call("fast", spec, weights, inputs, repeat=3)
    record["gemm_gflops_after"] = numpy_gemm_gflops()
    record["load_after"] = os.getloadavg()
    return record


def targets(record: dict) -> list[dict]:
    rows = {(r["model"], r["threads"], r["batch"], r["seq_len"], r["engine"]): r for r in record["rows"]}
    out = []
    minilm = record["rows"][0]["model"]
    for threads in (record["threads"], 1):
        for batch in (1, 8, 32):
            if (minilm, threads, batch, 128, "fast") not in rows:
                continue
            fast, ort = rows[(minilm, threads, batch, 128, "fast")], rows[(minilm, threads, batch, 128, "ort")]
            ratio = fast.get("ratio_vs_torch")
            label = f"{minilm} B={batch} T=128, {threads} thread(s)"
            out.append({"target": f"{label}: fast <= {TARGET_RATIO} x torch",
                        "measured": f"{ratio:.3f} x" if ratio else "n/a",
                        "met": bool(ratio and ratio <= TARGET_RATIO)})
            if "median_ms" in ort:
                out.append({"target": f"{label}: fast <= onnxruntime",
                            "measured": f"{fast['median_ms']:.1f} ms vs {ort['median_ms']:.1f} ms",
                            "met": fast["median_ms"] <= ort["median_ms"]})
    gemm = max(record["gemm_gflops_before"], record["gemm_gflops_after"])
    fast_base = rows.get(("bert-base-uncased", record["threads"], 8, 128, "fast"), {}).get("gflops_per_s", 0.0)
    out.append({"target": f"bert-base B=8 T=128: fast >= {TARGET_GEMM_FRACTION:.0%} of one NumPy GEMM",
                "measured": f"{fast_base:.1f} / {gemm:.1f} GFLOP/s = {fast_base / gemm:.0%}",
                "met": fast_base >= TARGET_GEMM_FRACTION * gemm})
    out.append({"target": "first MiniLM forward in a fresh process < 3 s",
                "measured": f"{record['first_call_s']:.2f} s", "met": record["first_call_s"] < 3.0})
    return out


def write(record: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.csv").write_text(csv_table(record["rows"], COLUMNS))
    profile_rows = [{"model": m, **r} for m, rows in record["profiles"].items() for r in rows]
    (out / "fast_profile.csv").write_text(csv_table(profile_rows))
    plotted = [{**r, "model": f"{r['model']}, {r['threads']} thread(s)"} for r in record["rows"]
               if r["engine"] != "reference"]  # reference: 10-50x slower, off scale
    engine_plots.ratio_bars(plotted, out / "engines.png", TARGET_RATIO)
    shown = [{k: r.get(k) for k in COLUMNS if k != "skipped"} for r in record["rows"]]
    load = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    readme = f"""# Engine benchmark: fast (Numba) vs reference vs torch eager vs onnxruntime fp32

Made by `{command}` (one run, {time.strftime('%Y-%m-%d %H:%M')}), {record['threads']} threads per engine.
Load average (1, 5, 15 min) before: {load(record['load_before'])}; after: {load(record['load_after'])}
(the 2-core machine was shared with other jobs: absolute times are noisy, ratios from one
interleaved run are the figures to read). GFLOP/s = counted FLOPs (cost.counts) / median time.

## Targets

{markdown_table(targets(record))}

One large NumPy GEMM (1024 x 768 x 3072 float32), best of 5: {record['gemm_gflops_before']:.1f} GFLOP/s
before the engine runs, {record['gemm_gflops_after']:.1f} GFLOP/s after.

## All runs

{markdown_table(shown)}

![ratio to torch eager](engines.png)

## Reading these numbers

The load average above counts runnable processes on 2 cores. Under such load a 2-thread engine
waits at each parallel region until its second thread is scheduled. The fast engine has about 12
such regions per layer (6 BLAS GEMMs, 6 Numba kernels); the profile below shows it under load: the
Q/K/V bias adds (`split_heads`), which do almost no work, take a visible share of the time. torch
eager falls apart the same way; onnxruntime suffers much less (not investigated). So under load the
2-thread rows mostly measure the scheduler; the 1-thread rows compare the engines themselves.

## Where the fast engine's time goes (B=8, T=128, mean ms per forward)

Deferred work lands on the call that consumes it: `linear` = BLAS GEMM only, `activation` = bias +
GELU, `layernorm` = bias + residual + LayerNorm, `split_heads` = Q/K/V bias adds, `matmul` = the
fused attention kernel; `other` = model.py and Python overhead.

{markdown_table(profile_rows)}

Files: engines.csv (every engine x shape), fast_profile.csv, engines.png.
"""
    (out / "README.md").write_text(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="timed calls per engine, MiniLM (default 4)")
    parser.add_argument("--base-repeat", type=int, default=1, help="timed calls per engine, bert-base (default 1)")
    parser.add_argument("--shapes", default=",".join(f"{b}x{t}" for b, t in SHAPES),
                        help="BxT list (default: the issue's four shapes)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    record = run(args.repeat, args.base_repeat, shapes)
    write(record, args.out, "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""MA-MiniLM-L6 study -> reports/ma_bert/ (README.md written by hand from results.json, CSV, PNG).

    mabert-hw convert minilm --out ~/.cache/mabert-hw/ma-minilm --data WIKI STSB_TRAIN ...  (see README)
    python analysis/ma_minilm.py [--ckpt ~/.cache/mabert-hw/ma-minilm] [--extra NAME=DIR ...]

Measures on the converted checkpoint(s): STS-B dev Spearman (mean pooling, cosine) vs the baseline,
the softmax-approximation error on STS-B dev sentences, the op-count difference, the fast-engine
latency of MA vs baseline at MiniLM shapes B=8, T=128 (interleaved, medians), the training curve.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mabert_hw import checkpoint
from mabert_hw.cache import CACHE_ROOT as CACHE
from mabert_hw.backends import make_backend
from mabert_hw.cli import main as cli
from mabert_hw.cost.counts import count_ops, model_ops
from mabert_hw.eval.tasks import load_stsb, stsb_spearman
from mabert_hw.inputs import DATA_DIR, tokenize
from mabert_hw.model import forward
from mabert_hw.report.ma_plots import plot_history
from mabert_hw.report.tables import csv_table
from mabert_hw.cli.common import script_description

OUT = Path(__file__).resolve().parents[1] / "reports" / "ma_bert"


def spearman(source, task, backend_name: str) -> tuple[float, float]:
    ck = checkpoint.load(source) if isinstance(source, str) else source
    started = time.perf_counter()
    value = stsb_spearman(ck, task, make_backend(backend_name), batch_size=32, max_len=128)
    return value, time.perf_counter() - started


def latency(ck_base, ck_ma, texts: list[str], reps: int, backend_name: str) -> dict:
    """Interleaved runs at B=8, T=128 on real sentences padded to 128 tokens; medians in ms.

    Real text, not random ids: random ids drive MA-MiniLM's hidden states to inf/NaN from layer 4, and
    non-finite (or denormal) floats run at a different speed, which would time the wrong thing.
    """
    batch = tokenize(ck_base.tokenizer_dir, texts[:8], 128)
    runs = {"baseline": [], "ma": []}
    for _ in range(reps + 1):  # the first round warms up (numba compilation, caches)
        for name, ck in (("baseline", ck_base), ("ma", ck_ma)):
            backend = make_backend(backend_name)
            started = time.perf_counter()
            out = forward(ck.spec, ck.weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
            np.asarray(out.last_hidden_state).sum()
            runs[name].append(1e3 * (time.perf_counter() - started))
    return {name: statistics.median(times[1:]) for name, times in runs.items()} | {"reps": reps}


def latencies(ck_base, ck_ma, texts: list[str], reps: int, backends: str) -> dict:
    """{backend: {baseline, ma, ma_over_baseline, reps, load_average}} for each comma-separated backend."""
    out = {}
    for backend_name in backends.split(","):
        load = os.getloadavg()[0]
        times = latency(ck_base, ck_ma, texts, reps, backend_name)
        out[backend_name] = times | {"ma_over_baseline": times["ma"] / times["baseline"], "load_average": load}
        print(f"latency, {backend_name} engine: {out[backend_name]}")
    return out


def op_counts(spec_base, spec_ma) -> list[dict]:
    rows = []
    for name, spec in (("baseline", spec_base), ("ma", spec_ma)):
        profile = count_ops(model_ops(spec, 8, 128))
        rows.append({"model": name, "macs": profile.total("macs"), **dict(profile.elementwise())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=script_description(__doc__))
    parser.add_argument("--ckpt", default=str(CACHE / "ma-minilm"))
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=DIR more converted checkpoints to score")
    parser.add_argument("--data", default=str(DATA_DIR))
    parser.add_argument("--limit", type=int, help="STS-B dev pairs (default all 1500)")
    parser.add_argument("--softmax-rows", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--backend", default="fast")
    parser.add_argument("--latency-backends", default="fast,reference",
                        help="engines to time MA vs baseline in (comma-separated; default fast,reference)")
    parser.add_argument("--latency-only", action="store_true", help="re-measure only the latency")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    task = load_stsb(args.data, args.limit)
    if args.latency_only:
        base, ma = checkpoint.load("minilm"), checkpoint.load(args.ckpt)
        results["latency_ms"] = latencies(base, ma, task.first, args.reps, args.latency_backends)
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
        return
    scores = results.setdefault("stsb_spearman", {})
    ma_ck = checkpoint.load(args.ckpt)
    # the same MA weights with the exact softmax (and HF's additive mask) in place of the approximator
    exact = replace(ma_ck, spec=ma_ck.spec.with_variant(softmax="exact", mask="additive"))
    candidates = [("baseline", "minilm"), ("ma", args.ckpt), ("ma_with_exact_softmax", exact)]
    for name, source in candidates + [tuple(e.split("=", 1)) for e in args.extra]:
        if name not in scores:
            value, seconds = spearman(source, task, args.backend)
            label = source if isinstance(source, str) else f"{args.ckpt} ({source.spec.variant.describe()})"
            scores[name] = {"spearman": value, "pairs": len(task.scores), "seconds": seconds, "source": label}
            print(f"STS-B dev Spearman {name}: {value:.2f}")
            (OUT / "results.json").write_text(json.dumps(results, indent=2))
    sentences = CACHE / "stsb_dev_sentences.txt"
    sentences.write_text("\n".join(task.first) + "\n")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        cli(["softmax-error", args.ckpt, "--data", str(sentences), "--teacher", "minilm", "--max-rows",
             str(args.softmax_rows), "--pad-to", "64", "128", "--output-dir", str(OUT)])
    (OUT / "softmax_error.txt").write_text(captured.getvalue())
    print(captured.getvalue())
    base, ma = checkpoint.load("minilm"), checkpoint.load(args.ckpt)
    (OUT / "op_counts.csv").write_text(csv_table(op_counts(base.spec, ma.spec)))
    results["latency_ms"] = latencies(base, ma, task.first, args.reps, args.latency_backends)
    history_path = Path(args.ckpt) / "history.json"
    if history_path.exists():
        history = json.loads(history_path.read_text())
        plot_history(history, OUT / "training_loss.png")
        results["training"] = {"steps_done": len(history), "last": history[-1],
                               "conversion": json.loads((Path(args.ckpt) / "config.json").read_text())["conversion"]}
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""`mabert-hw bench`: time the engines (fast, reference, torch eager, onnxruntime) on one shape."""

from __future__ import annotations

import argparse
import json

from .. import checkpoint
from ..bench.engines import ENGINES
from ..bench.timing import THREADS_IDLE_S, bench, table_rows
from ..errors import UserError
from ..report.tables import text_table
from ..spec import ModelSpec
from ..weights import random_weights
from .common import add_checkpoint, add_output, emit, name_list, non_negative_float, non_negative_int, positive_int


MAX_PAUSE_S = 60.0  # 400 times THREADS_IDLE_S, far past any engine's spinning threads; more only stalls the run


def pause_seconds(text: str) -> float:
    value = non_negative_float(text)
    if value > MAX_PAUSE_S:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_PAUSE_S:g} seconds, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the fast/reference backends against torch eager and onnxruntime",
        description="Run the engines interleaved in one process on the same random batch after a "
        "warm-up call each; report median, min and max ms, tokens/s, achieved GFLOP/s (counted "
        "FLOPs / median time) and the ratio to torch eager. A checkpoint without weights (a preset) "
        "runs with random weights. Engines that cannot run here are reported as skipped.",
    )
    add_checkpoint(parser)
    parser.add_argument("--batch", type=positive_int, default=8, help="batch size B (default 8)")
    parser.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence T (default 128)")
    parser.add_argument("--engines", type=name_list(ENGINES, "engine"), default=",".join(ENGINES),
                        help=f"comma-separated, each once (default {','.join(ENGINES)})")
    parser.add_argument("--repeat", type=positive_int, default=10, help="timed calls per engine (default 10)")
    parser.add_argument("--threads", type=positive_int,
                        help="threads for every engine, at most one per core (default: one per core, or "
                        "NUMBA_NUM_THREADS when that is less and the fast engine runs)")
    parser.add_argument("--settle", type=non_negative_int, default=1,
                        help="untimed calls an engine makes in its turn before the timed one, so the previous "
                             "engine's spinning threads have gone quiet (default 1)")
    parser.add_argument("--pause", type=pause_seconds, default=THREADS_IDLE_S,
                        help="seconds of sleep before each engine's turn, so that the previous engine's "
                             f"spinning BLAS / onnxruntime threads go to sleep (default {THREADS_IDLE_S}, "
                             f"at most {MAX_PAUSE_S:g})")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="a table, or the whole JSON record (default table)")
    add_output(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    engines = args.engines
    ck = checkpoint.load(args.ckpt)
    check_seq_len(ck.spec, args.seq_len)
    weights = ck.weights if ck.weights is not None else random_weights(ck.spec)
    document = bench(ck.spec, weights, args.batch, args.seq_len, engines, args.repeat, args.threads,
                     settle=args.settle, progress=True, pause=args.pause)
    if args.format == "json":
        text = json.dumps(document, indent=2)
    else:
        title = (f"{document['model']}  B={document['batch']}  T={document['seq_len']}  "
                 f"threads={document['threads']}  (ratio: median / torch eager median)\n")
        kernels = ", ".join(sorted({f"{b['library']} {b['architecture']}" for b in document["blas"]})) or "unknown"
        text = title + text_table(table_rows(document)) + f"\nBLAS kernels: {kernels}\n"
    emit(text, args.output)
    return 0


def check_seq_len(spec: ModelSpec, seq_len: int) -> None:
    """Refuse a --seq-len the MA-BERT forward pass would refuse, before the engines are prepared and
    warmed up (random_batch checks the positions)."""
    n = spec.variant.softmax_input
    if spec.variant.softmax == "mlp" and seq_len > n:
        raise UserError(f"--seq-len {seq_len} exceeds the MA-BERT softmax approximator's {n} inputs: "
                        f"use --seq-len {n} or less")

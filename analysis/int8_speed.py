"""Speed of the fixed (int8 simulation) backend against the fast fp32 engine -> reports/int8/speed.json
(wall clock) or speed_cpu.json (--clock cpu); analysis/int8_minilm.py --report-only renders both.

    python analysis/int8_speed.py [--data DIR (default ../shared/data)] [--batch 8] [--rounds 7]
    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python analysis/int8_speed.py --clock cpu

The same batch (the first --batch STS-B dev sentences padded to 128 tokens) through the fast engine
and the fixed backend under each configuration below, interleaved in one process after a warm-up
call each (mabert_hw.bench.timing.time_calls, one untimed settle call per turn), medians. Ratio =
configuration median / fast median; the issue's target is <= 3x. --clock cpu times each call in CPU
seconds of this process instead, with no settle calls: with one thread each for Numba and BLAS that
is the work done, which other processes' load on the shared machine moves far less than wall time
(with more threads it would count spinning threads too). Calibration: the study's cached file
(analysis/int8_minilm.py makes it).
"""

from __future__ import annotations

import argparse
import sys
import json
import os
import statistics
from pathlib import Path

import numba
from int8_minilm import CHANNEL, CHANNEL_GEMM_OUT, OUT
from int8_report import SPEED_RECORDS

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends import make_backend
from mabert_hw.backends.fixed import FixedBackend
from mabert_hw.bench.timing import time_calls
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.cli.common import interruptible, output_file, positive_int, run_script
from mabert_hw.eval.sweep import prepare_calibration
from mabert_hw.eval.tasks import load_stsb
from mabert_hw.inputs import DATA_DIR, tokenize
from mabert_hw.model import forward
from mabert_hw.quant import config as qconfig
from mabert_hw.quant.calibrate import Calibration

CLOCKS = SPEED_RECORDS  # --clock -> its record in reports/int8, which int8_minilm.py --report-only renders
SEQ_LEN = 128  # tokens each sentence is padded to: the shape of the fp32 and onnxruntime anchors (batch 8 x 128,
# ../shared/DESIGN.md) and of reports/engines/
CONFIGS = {
    "W8A8, float non-linearities, per-tensor residual": {},
    "W8A8, float non-linearities, per-channel residual": CHANNEL,
    "W8A8, integer non-linearities": {"nonlinear": "integer"},
    "W8A8, integer non-linearities, per-channel residual + GEMM outputs": {**CHANNEL_GEMM_OUT, "nonlinear": "integer"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA_DIR))
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    parser.add_argument("--out", type=output_file, help="default: reports/int8/" + ", ".join(CLOCKS.values()))
    return run_script(parser, lambda args: interruptible(  # the record is written only at the end
        parser.prog, lambda: run(args), f"{args.out or OUT / CLOCKS[args.clock]} is as it was"), argv)


def run(args) -> int:
    ck = checkpoint.load("minilm")
    dev = str(Path(args.data) / "glue/STS-B/dev.tsv")
    calibration = Calibration.load(prepare_calibration(ck, "stsb", dev, CACHE_ROOT))
    batch = tokenize(ck.tokenizer_dir, load_stsb(dev, args.batch).first, SEQ_LEN)

    def call(backend):
        return lambda: forward(ck.spec, ck.weights, batch.input_ids, backend, batch.attention_mask,
                               batch.token_type_ids).last_hidden_state

    calls = {"fast fp32": call(make_backend("fast"))}
    for name, config in CONFIGS.items():
        calls[name] = call(FixedBackend(config=qconfig.from_dict(config), calibration=calibration))
    load_before = os.getloadavg()[0]
    if args.clock == "cpu":
        samples = time_calls(calls, args.rounds, warmup=1, progress=True).cpu
    else:
        samples = time_calls(calls, args.rounds, warmup=1, settle=1, progress=True).wall
    fast = statistics.median(samples["fast fp32"])
    record = {"clock": args.clock, "batch": args.batch, "seq_len": SEQ_LEN, "rounds": args.rounds,
              "numba_threads": numba.get_num_threads(), "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0],
              "median_ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
              "ratio_vs_fast": {k: statistics.median(v) / fast for k, v in samples.items()},
              "configs": {"fast fp32": None, **CONFIGS}}
    write_text_whole(args.out or OUT / CLOCKS[args.clock], json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

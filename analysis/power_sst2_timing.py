"""Re-time PoWER-BERT schedules against the same model without elimination, in one run (interleaved
rounds, medians), on the first --sentences SST-2 dev sentences padded to N = 64 -> a JSON record.

    python analysis/power_sst2_timing.py 48,27,20,15,11,1 42,27,18,11,7,5 --sentences 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from power_sst2 import ROOT, speedups

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.bench.timing import check_threads
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.cli.common import output_file, positive_int, run_script
from mabert_hw.eval.tasks import load_sst2
from mabert_hw.inputs import DATA_DIR
from mabert_hw.power import parse_retention
from mabert_hw.power_search import encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("schedules", nargs="+", help="retention configurations, L1,..,LL")
    parser.add_argument("--ckpt", default=str(CACHE_ROOT / "minilm-sst2"))
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--engine", default="fast")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="the fast engine's threads (default 1; at most one per core this process may run on)")
    parser.add_argument("--seq-len", type=positive_int, default=64)
    parser.add_argument("--sentences", type=positive_int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--out", type=output_file, default=str(ROOT / "reports" / "power_bert" / "timing_recheck.json"))
    return run_script(parser, run, argv)


def run(args) -> int:
    check_threads(args.threads)  # the fast engine would hold the cores there are; the record names --threads
    ck = checkpoint.load(args.ckpt)
    schedules = {text: parse_retention(text, ck.spec.layers, args.seq_len) for text in args.schedules}
    options = {"threads": args.threads} if args.engine == "fast" else {}
    backend = make_backend(args.engine, **options)
    sentences = load_sst2(args.data, args.sentences).sentences  # fewer than --sentences when dev runs out
    batches = encode(ck, sentences, args.seq_len)
    result = speedups(ck, schedules, batches, backend, args.repeats)
    record = {"engine": args.engine, "threads": args.threads, "seq_len": args.seq_len, "sentences": len(sentences),
              "repeats": args.repeats, "load_average_1min_at_end": os.getloadavg()[0],
              "median_seconds": {k: v[0] for k, v in result.items()}, "speedup": {k: v[1] for k, v in result.items()}}
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

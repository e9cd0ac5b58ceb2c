"""PoWER-BERT on MA-MiniLM and on MiniLM: STS-B dev Spearman and FLOPs -> reports/power_bert/power_ma_stsb.csv.

    export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
    python analysis/power_ma_stsb.py --model MiniLM=minilm
    python analysis/power_ma_stsb.py --model "MA-MiniLM=$HOME/.cache/mabert-hw/ma-minilm"

One --model LABEL=CKPT per run keeps each run near 5-8 min on 1 thread; a run replaces the rows of
its labels in the CSV and keeps the others. Every checkpoint is loaded before any is scored. Ctrl-C or
SIGTERM writes the rows of the models finished so far and exits 130 (143 on SIGTERM); the model cut short
keeps its rows in the CSV if it has any, else its rows finished so far are written, marked "interrupted".

STS-B as `mabert-hw eval --task stsb` scores it: length-sorted batches of 32 texts, each padded to its
longest (dynamic padding), cosine of the mean of the last layer's real tokens (under elimination, the
ones it kept) against the gold scores, Spearman x 100. A retention count l_j is a count of tokens
(STS-B dev texts: median 14, 90th percentile 27, longest 53), so a text shorter than l_j loses only
padding at layer j. On MA-MiniLM, significance is the attention its softmax approximator's output rows
give each token (mabert_hw/power.py). FLOPs: the trace of the very batches evaluated, summed
(cost.counts); flops_ratio is the same model without elimination over the schedule, flops_vs_minilm
the baseline MiniLM without elimination over the row.
Control (selection "random"): the same schedules with each layer's kept tokens drawn at random (CLS
still kept, padding still dropped first): what the significance ranking is worth at equal FLOPs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends import make_backend
from mabert_hw.cache import CACHE_ROOT as CACHE
from mabert_hw.cli.common import positive_int, run_script
from mabert_hw.eval.tasks import length_batches, load_stsb, stsb_spearman
from mabert_hw.inputs import DATA_DIR
from mabert_hw.interrupts import stopped_status
from mabert_hw.power import geometric_retention, parse_retention
from mabert_hw.power_search import subset_flops
from mabert_hw.report.tables import counted, csv_table, read_csv_rows

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE, MAX_LEN = 32, 128  # as `mabert-hw eval` and analysis/ma_minilm.py (MA's approximator n = 128)
LAYERS = 6  # MiniLM-L6
DEFAULT_MODELS = ("MiniLM=minilm", f"MA-MiniLM={CACHE / 'ma-minilm'}")
# Fixed before any was scored. Geometric l_j = round(32 * r^j): 32 tokens hold 96 % of STS-B dev texts
# whole; r = 0.85 mild, r = 0.7 aggressive. "cap 16": the 16 most significant tokens at every layer
# (60 % of the texts have no more).
SCHEDULES = {
    "geometric N=32 r=0.85": geometric_retention(32, LAYERS, 0.85),
    "geometric N=32 r=0.7": geometric_retention(32, LAYERS, 0.7),
    "cap 16": (16,) * LAYERS,
}


def dataset_flops(ck, texts: list[str]) -> int:
    """FLOPs of one pass over texts in the batches stsb_spearman runs, from the trace."""
    return subset_flops(ck, ck.spec.variant.retention, length_batches(ck, texts, BATCH_SIZE, MAX_LEN))


def pooled_tokens(real: np.ndarray, retention) -> float:
    """Mean number of real tokens the last layer keeps (padding always loses): min(l_L, n_i)."""
    return float(real.mean() if retention is None else np.minimum(real, retention[-1]).mean())


def random_selection(engine: str, options: dict, seed: int):
    """The engine with significance replaced by seeded random scores for the real tokens."""
    rng = np.random.default_rng(seed)

    class RandomSignificance(type(make_backend(engine, **options))):
        def _significance(self, probs, token_mask):
            scores = rng.random(token_mask.shape).astype(np.float32)  # (B, T)
            return np.where(np.asarray(token_mask) > 0, scores, np.float32(-np.inf))

    return RandomSignificance(**options)


def labelled_checkpoint(text: str) -> str:
    label, equals, source = text.partition("=")
    if not (equals and label and source):
        raise argparse.ArgumentTypeError(f"expected LABEL=CKPT, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", metavar="LABEL=CKPT", type=labelled_checkpoint,
                        help=f"a model to score, repeatable (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--baseline-ckpt", default="minilm", help="the MiniLM of flops_vs_minilm")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--limit", type=positive_int, help="only the first N dev pairs (default: all 1500)")
    parser.add_argument("--engine", choices=("reference", "fast"), default="fast")
    parser.add_argument("--schedules", nargs="*", help="retention configurations L1,..,L6 (default: "
                        + "; ".join(f"{name} = {','.join(map(str, r))}" for name, r in SCHEDULES.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="random-selection control's seed")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "power_bert" / "power_ma_stsb.csv")
    return run_script(parser, lambda args: run(args, parser.prog), argv)


def run(args, prog: str) -> int:
    schedules = SCHEDULES if args.schedules is None else {s: parse_retention(s, LAYERS) for s in args.schedules}
    sources = dict(text.split("=", 1) for text in args.model or DEFAULT_MODELS)
    rows, label = [], None
    try:
        task = load_stsb(args.data, args.limit)
        texts = task.first + task.second
        models = {name: checkpoint.load(source) for name, source in sources.items()}  # all, before any scoring
        baseline = checkpoint.load(args.baseline_ckpt)
        real = np.concatenate([b.attention_mask.sum(1) for _, b in length_batches(baseline, texts)])  # (N,)
        minilm_flops = dataset_flops(baseline, texts)
        for label, ck in models.items():
            for row in model_rows(args, label, sources[label], ck, schedules, task, real, minilm_flops):
                rows.append(row)
    except KeyboardInterrupt as stop:
        save_interrupted(args.out, prog, rows, label)
        return stopped_status(stop)
    save(args.out, set(sources), rows)
    print(f"wrote {args.out}; load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    return 0


def model_rows(args, model: str, source: str, ck, schedules: dict, task, real: np.ndarray, minilm_flops: int):
    """One model's rows, each yielded once scored: without elimination, then each schedule by significance
    and by random selection. real: the baseline's real tokens per text."""
    texts = task.first + task.second
    options = {"threads": 1} if args.engine == "fast" else {}
    plain_flops = dataset_flops(ck, texts)
    runs = [("none", None, "significance")] + [(name, retention, selection) for name, retention in schedules.items()
                                                for selection in ("significance", "random")]
    for name, retention, selection in runs:
        eliminating = replace(ck, spec=ck.spec.with_variant(retention=retention))
        backend = (make_backend(args.engine, **options) if selection == "significance"
                   else random_selection(args.engine, options, args.seed))
        started = time.perf_counter()
        spearman = stsb_spearman(eliminating, task, backend, batch_size=BATCH_SIZE, max_len=MAX_LEN)
        seconds = time.perf_counter() - started
        flops = dataset_flops(eliminating, texts)
        row = {"model": model, "checkpoint": source, "schedule": name,
               "retention": "none" if retention is None else ",".join(map(str, retention)),
               "selection": selection if retention else "", "pairs": len(task.scores),
               "spearman": round(spearman, 2), "flops": flops, "flops_ratio": round(plain_flops / flops, 3),
               "flops_vs_minilm": round(minilm_flops / flops, 3),
               "tokens_in_mean": round(float(real.mean()), 2),
               "tokens_pooled_mean": round(pooled_tokens(real, retention), 2), "engine": args.engine}
        print(row, f"({seconds:.1f} s, 1 thread)", flush=True)  # one run under shared load: not a speed figure
        yield row


def save(out: Path, models: set[str], rows: list[dict]) -> None:
    """`rows` in place of the CSV's rows of `models`, the other models' rows kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = [row for row in read_csv_rows(out) if row["model"] not in models]
    write_text_whole(out, csv_table(kept + rows))


def save_interrupted(out: Path, prog: str, rows: list[dict], model: str | None) -> None:
    """Save the rows of an interrupted run: those of the models it finished replace theirs. `model`, the one cut
    short, keeps its rows in `out` when it has any (a part of its rows would replace a whole set); only when it
    has none are its rows finished so far written, marked interrupted."""
    cut = [row for row in rows if row["model"] == model]
    earlier = any(row["model"] == model for row in read_csv_rows(out))
    written = [row for row in rows if row["model"] != model]
    if not earlier:
        written += [{**row, "interrupted": True} for row in cut]
    if written:
        save(out, {row["model"] for row in written}, written)
    print(said_interrupted(prog, out, written, model, len(cut), earlier), file=sys.stderr)


def said_interrupted(prog: str, out: Path, written: list[dict], model: str | None, cut: int, earlier: bool) -> str:
    """What an interrupted run left in `out`: `written`, the rows it wrote, and when `earlier`, the rows that
    `model`, cut short after `cut` rows, had there before (its `cut` rows then dropped, else written marked
    interrupted)."""
    if not written and not cut:
        return f"{prog}: interrupted; no row was finished: {out} is as it was"
    held = [f"the {counted(len(written), 'finished row')} of this run"] if written else []
    if earlier:
        held.append(f"{model}'s earlier rows")
    said = f"{prog}: interrupted while scoring {model}; {out} holds {' and '.join(held)}"
    if not cut:
        return said
    fate = f"this run's {counted(cut, 'row')} of {model} dropped" if earlier else f"{model}'s {cut} marked interrupted"
    return f"{said}, {fate} (rerunning its label scores all its rows again)"


if __name__ == "__main__":
    sys.exit(main())

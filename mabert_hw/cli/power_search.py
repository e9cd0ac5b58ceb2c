"""`mabert-hw power-search`: find a PoWER-BERT retention configuration for an accuracy budget,
training-free, on a dev subset; print the accuracy/FLOPs frontier and write the chosen config."""

from __future__ import annotations

import json
import sys

from tqdm import tqdm

from .. import checkpoint
from ..eval import tasks
from ..interrupts import sigterm_interrupts
from ..power_search import (GEOMETRIC_RATIOS, GREEDY_SHRINK, Scored, Scorer, as_record, choose, encode, frontier,
                            geometric_search, greedy_search)
from ..report.tables import FORMATS, render
from .common import (INTERRUPTED_EXIT, add_checkpoint, add_task_engine, emit, non_negative_float, output_file,
                     positive_int, task_backend)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "power-search",
        help="search PoWER-BERT retention configurations within an accuracy budget (training-free)",
        description="Score geometric and greedy per-layer retention schedules on the first --limit "
        "examples of the dev file (fixed --seq-len padding, as the paper's N), print the frontier "
        "(accuracy vs FLOPs of the subset) and write the cheapest schedule within --budget-loss.",
    )
    add_checkpoint(parser)
    parser.add_argument("--task", choices=("sst2",), required=True, help="sst2: SST-2 dev accuracy (a classifier CKPT)")
    parser.add_argument("--data", required=True, help="the task's TSV, or a data root")
    parser.add_argument("--budget-loss", type=non_negative_float, default=1.0,
                        help="accuracy points allowed to lose (default 1.0)")
    parser.add_argument("--out", metavar="CONFIG.json", type=output_file,
                        help="write the chosen configuration and frontier here (when Ctrl-C or SIGTERM stops "
                        "the search: the schedules scored so far, marked interrupted, none chosen)")
    parser.add_argument("--method", choices=("geometric", "greedy", "both"), default="both",
                        help=f"geometric: l_j = round(T r^j) for r in {GEOMETRIC_RATIOS[0]} .. {GEOMETRIC_RATIOS[-1]}; "
                        "greedy: from no elimination, cut one layer's count (and the later ones) by "
                        f"{GREEDY_SHRINK} at a time, taking the cut that loses least "
                        "accuracy per FLOP saved, while within --budget-loss; both (default)")
    add_task_engine(parser)
    parser.add_argument("--seq-len", type=positive_int, default=64,
                        help="padded length N (default 64, the paper's SST-2 N)")
    parser.add_argument("--limit", type=positive_int, default=400, help="dev examples scored (default 400)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default 32)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.set_defaults(run=run)


def run(args) -> int:
    ck = checkpoint.load(args.ckpt)
    ck.require_weights("power-search")
    tasks.require_sst2_classifier(ck, "power-search")
    task = tasks.load_sst2(args.data, args.limit)
    batches = encode(ck, task.sentences, args.seq_len, args.batch_size)
    backend = task_backend(args.engine, ck, "sst2", args.data)
    with tqdm(desc="schedules scored", unit="schedule") as bar:
        scorer = Scorer(ck, task.labels, batches, backend, progress=lambda s: bar.update(1))
        finished = search(scorer, args)
    scored = list(scorer.scored.values())
    if not finished:
        return keep_interrupted(scored, run_fields(ck, args, len(task.labels)), args.out)
    baseline = scorer.scored[None]
    chosen = choose(scored, baseline, args.budget_loss)
    front = frontier(scored)
    rows = [{"family": s.family, "retention": "none" if s.retention is None else ",".join(map(str, s.retention)),
             "accuracy": round(s.accuracy, 2), "loss": round(baseline.accuracy - s.accuracy, 2),
             "flops_ratio": round(baseline.flops / s.flops, 3), "chosen": s is chosen} for s in front]
    emit(render(rows, args.format), None)
    if args.out:
        document = {**run_fields(ck, args, len(task.labels)),
                    "retention": None if chosen.retention is None else list(chosen.retention),
                    "accuracy": chosen.accuracy, "baseline_accuracy": baseline.accuracy,
                    "flops": chosen.flops, "baseline_flops": baseline.flops, **scored_fields(scored)}
        emit(json.dumps(document, indent=2), args.out)
    return 0


def search(scorer: Scorer, args) -> bool:
    """Score the baseline, then the schedules of --method; False when Ctrl-C or SIGTERM stopped it (the
    schedules scored until then stay in scorer.scored; the one under way is lost)."""
    try:
        with sigterm_interrupts():
            scorer(None, "baseline")
            if args.method in ("geometric", "both"):
                geometric_search(scorer, args.seq_len)
            if args.method in ("greedy", "both"):
                greedy_search(scorer, args.seq_len, args.budget_loss)
    except KeyboardInterrupt:
        return False
    return True


def run_fields(ck, args, examples: int) -> dict:
    """What the scores depend on, as a --out document records it."""
    return {"checkpoint": ck.source, "task": args.task, "seq_len": args.seq_len, "examples": examples,
            "engine": args.engine, "budget_loss": args.budget_loss}


def scored_fields(scored: list[Scored]) -> dict:
    return {"frontier": [as_record(s) for s in frontier(scored)], "scored": [as_record(s) for s in scored]}


def keep_interrupted(scored: list[Scored], fields: dict, out: str | None) -> int:
    """Write the schedules scored before an interruption to OUT, as sweep keeps its finished rows. The
    document is marked interrupted and holds no chosen "retention": a schedule chosen among part of the
    search is not the search's answer, and `eval --retention` refuses a document without one."""
    if out and scored:  # the search scores the baseline first: scored[0]
        document = {**fields, "interrupted": True, "baseline_accuracy": scored[0].accuracy,
                    "baseline_flops": scored[0].flops, **scored_fields(scored)}
        emit(json.dumps(document, indent=2), out)
        kept = f"{out} holds them, marked interrupted, with no schedule chosen: run the search again for one"
    else:
        kept = f"nothing written to {out}" if out else "no --out to keep them in"
    print(f"mabert-hw: interrupted after {len(scored)} schedules scored; {kept}", file=sys.stderr)
    return INTERRUPTED_EXIT

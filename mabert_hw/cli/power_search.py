"""`mabert-hw power-search`: find a PoWER-BERT retention configuration for an accuracy budget,
training-free, on a dev subset; print the accuracy/FLOPs frontier and write the chosen config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from .. import checkpoint
from ..errors import UserError
from ..eval import tasks
from ..interrupts import stopped_status
from ..power_search import (GEOMETRIC_RATIOS, GREEDY_SHRINK, Scored, Scorer, choose, encode, frontier,
                            geometric_search, greedy_search)
from ..power_search_record import document, refuse_overwriting, resumed_scores, save, scores_depend_on
from ..report.tables import FORMATS, render
from ..inputs import SPECIAL_TOKENS
from .common import (STANDARD_STREAMS, add_checkpoint, add_task_engine, emit, int_between,
                     non_negative_float, output_file, positive_int, task_backend, task_calibration, task_data_help)

SCORED_BAR = "{desc}: {n_fmt} schedules [{elapsed}, {rate_inv_fmt}]"  # "3 schedules [00:03, 1.20s/schedule]":
# tqdm's own meter glues the unit to the count ("3schedule") or, past a second each, writes "1.20s/ schedules"


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
    parser.add_argument("--data", required=True, help=task_data_help("sst2"))
    parser.add_argument("--budget-loss", type=non_negative_float, default=1.0,
                        help="accuracy points allowed to lose (default 1.0)")
    parser.add_argument("--out", metavar="CONFIG.json", type=output_file,
                        help="write the chosen configuration, the frontier and every schedule scored here; a "
                        "file is rewritten after each schedule (marked interrupted, none chosen, until the search "
                        "ends), so a stopped search keeps what it scored. Without --resume, an existing file must "
                        "be empty or a finished search's document, which is replaced")
    parser.add_argument("--resume", action="store_true",
                        help="continue the search saved in --out (none yet: a new search): score only the schedules "
                        "it lacks, and choose as a search that scored everything would (the same checkpoint, data, "
                        "--limit, --seq-len, --engine and --batch-size; --budget-loss and --method may differ, and "
                        "re-score none of the schedules the file has). The file's schedules this search does not "
                        "ask for (another budget's or method's) are kept apart, under scored_not_asked, outside "
                        "the frontier and the choice, for the next --resume")
    parser.add_argument("--method", choices=("geometric", "greedy", "both"), default="both",
                        help=f"geometric: l_j = round(T r^j) for r in {GEOMETRIC_RATIOS[0]} .. {GEOMETRIC_RATIOS[-1]}; "
                        "greedy: from no elimination, cut one layer's count (and the later ones) by "
                        f"{GREEDY_SHRINK} at a time, taking the cut that loses least "
                        "accuracy per FLOP saved, while within --budget-loss; both (default)")
    add_task_engine(parser)
    parser.add_argument("--seq-len", type=int_between(SPECIAL_TOKENS, why="room for [CLS] and [SEP]"), default=64,
                        help="padded length N (default 64, the paper's SST-2 N)")
    parser.add_argument("--limit", type=positive_int, default=400, help="dev examples scored (default 400)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default 32)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.set_defaults(run=run)


def run(args) -> int:
    out = saved_file(args)
    if out and not args.resume:
        refuse_overwriting(out)
    ck = checkpoint.load(args.ckpt)
    ck.require_weights("power-search")
    tasks.require_sst2_classifier(ck, "power-search")
    task = tasks.load_sst2(args.data, args.limit)
    batches = encode(ck, task.sentences, args.seq_len, args.batch_size, warn_cuts="--seq-len")
    calibration = task_calibration(args.engine, ck, "sst2", args.data)
    depends_on = scores_depend_on(ck, task.sentences, task.labels, args.seq_len, args.engine, calibration,
                                  args.batch_size)
    earlier = resumed_scores(out, depends_on, ck.spec.layers) if args.resume else []
    fields = {"checkpoint": ck.source, "task": args.task, "data": str(tasks.resolve(args.data, "sst2").resolve()),
              "seq_len": args.seq_len, "examples": len(task.labels), "engine": args.engine,
              "budget_loss": args.budget_loss, "method": args.method, "scores_depend_on": depends_on}
    if args.resume:
        print(f"mabert-hw: resuming: {len(earlier)} schedules scored in {out}" if earlier else
              f"mabert-hw: nothing to resume in {out}: starting a new search", file=sys.stderr)
    backend = task_backend(args.engine, calibration)
    with tqdm(desc="schedules scored", unit="schedule", bar_format=SCORED_BAR) as bar:
        def scored_one(_):
            bar.update(1)
            if out:  # after every schedule: a kill loses at most the one under way
                save(out, scorer_document(fields, scorer))

        scorer = Scorer(ck, task.labels, batches, backend, progress=scored_one, known=earlier)
        stop = search(scorer, args)
    scored = list(scorer.scored.values())
    if stop is not None:
        if scorer.new and out:  # again: a Ctrl-C during the last save left the one before it
            save(out, scorer_document(fields, scorer))
        elif scorer.new and args.out:  # a stream or device: written once, here
            emit(json.dumps(scorer_document(fields, scorer), indent=2), args.out)
        return said_interrupted(scorer, args.out, resumable=bool(out), stop=stop)
    baseline = scorer.scored[None]
    chosen = choose(scored, baseline, args.budget_loss)
    rows = [{"family": s.family, "retention": "none" if s.retention is None else ",".join(map(str, s.retention)),
             "accuracy": round(s.accuracy, 2), "loss": round(baseline.accuracy - s.accuracy, 2),
             "flops_ratio": round(baseline.flops / s.flops, 3), "chosen": s is chosen} for s in frontier(scored)]
    emit(render(rows, args.format), None)
    if args.out:
        emit(json.dumps(scorer_document(fields, scorer, chosen), indent=2), args.out)
    return 0


def saved_file(args) -> Path | None:
    """The --out file the search saves itself into as it goes (None: no --out, or a stream or device, which
    gets the finished document only). --resume needs one."""
    out = Path(args.out) if args.out and args.out not in STANDARD_STREAMS else None
    if out and out.exists() and not out.is_file():
        out = None
    if args.resume and out is None:
        raise UserError("--resume continues the search saved in --out FILE: give the --out of the interrupted run")
    return out


def search(scorer: Scorer, args) -> KeyboardInterrupt | None:
    """Score the baseline, then the schedules of --method; the stop when Ctrl-C or SIGTERM ended it early (the
    schedules scored until then stay in scorer.scored; the one under way is lost)."""
    try:  # SIGTERM raises Terminated, a KeyboardInterrupt, here too (cli.main)
        scorer(None, "baseline")
        if args.method in ("geometric", "both"):
            geometric_search(scorer, args.seq_len)
        if args.method in ("greedy", "both"):
            greedy_search(scorer, args.seq_len, args.budget_loss)
    except KeyboardInterrupt as stop:
        return stop
    return None


def scorer_document(fields: dict, scorer: Scorer, chosen: Scored | None = None) -> dict:
    """The document of the schedules the search has asked for, and apart, those of the resumed document it
    has not (kept for the next --resume); with `chosen` None, a search under way (marked interrupted)."""
    return document(fields, scorer.scored.values(), chosen, scorer.known.values())


def said_interrupted(scorer: Scorer, out: str | None, resumable: bool, stop: KeyboardInterrupt) -> int:
    """Say what an interruption kept: the schedules this run scored, in OUT (marked interrupted, none chosen:
    `eval --retention` refuses it), which --resume continues when it is a file. A resumed run stopped before
    it scored anything new leaves OUT as it was (a finished search's document keeps its answer)."""
    reused = len(scorer.scored) - scorer.new
    taken = f" ({reused} more taken from {out})" if reused else ""
    if not scorer.new:
        kept_where = f"{out} is as it was" if reused else (f"nothing written to {out}" if out else
                                                           "no --out to keep them in")
    elif out:
        then = "run the same command with --resume to continue" if resumable else "none chosen"
        kept_where = f"{out} holds them, marked interrupted: {then}"
    else:
        kept_where = "no --out to keep them in"
    print(f"mabert-hw: interrupted after {scorer.new} schedules scored{taken}; {kept_where}", file=sys.stderr)
    return stopped_status(stop)

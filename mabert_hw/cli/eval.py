"""`mabert-hw eval`: a checkpoint's SST-2 accuracy or STS-B Spearman on any engine, optionally with a
PoWER-BERT retention configuration."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from tqdm import tqdm

from .. import checkpoint
from ..errors import UserError
from ..eval import tasks
from ..power_search import encode, predict
from ..report.tables import FORMATS, render
from ..inputs import SPECIAL_TOKENS
from .common import (add_checkpoint, add_output, add_task_engine, emit, int_between, positive_int, task_backend,
                     task_calibration, task_data_help)
from .retention import add_retention_argument, read_retention, searched_record, searched_seq_len


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="SST-2 accuracy or STS-B Spearman of a checkpoint on an engine",
        description="Evaluate a checkpoint on a GLUE dev file (or its folder, or a data root holding "
        "glue/SST-2/dev.tsv, glue/STS-B/dev.tsv). SST-2 needs a classifier (BertForSequenceClassification); "
        "STS-B scores cosine similarity of mean-pooled vectors. --retention applies PoWER-BERT elimination (STS-B "
        "then pools the tokens the last layer kept). MA-BERT results depend on padding: as in the official "
        "code, its softmax approximator also sees the padded keys (score 0), so an MA score depends on "
        "--seq-len or, with each batch padded to its longest text, on --batch-size and on which texts "
        "share a batch (baselines do not); the output row records the batch size and the padding.",
    )
    add_checkpoint(parser)
    parser.add_argument("--task", choices=("sst2", "stsb"), required=True,
                        help="sst2: SST-2 dev accuracy; stsb: STS-B dev Spearman x 100")
    parser.add_argument("--data", required=True, help=task_data_help("sst2", "stsb"))
    add_task_engine(parser)
    add_retention_argument(parser)
    parser.add_argument("--seq-len", type=int_between(SPECIAL_TOKENS, why="room for [CLS] and [SEP]"),
                        help="SST-2 only (STS-B pads each batch to its longest): pad/truncate every text to this "
                        "many tokens (default: the length a --retention CONFIG.json was searched at; else pad each "
                        "batch to its longest text, cutting texts to min(128, the model's positions, an MA "
                        "approximator's n) tokens)")
    parser.add_argument("--limit", type=positive_int, help="only the first N examples")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    add_output(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.task == "stsb" and args.seq_len:
        raise UserError("--seq-len applies to --task sst2 (STS-B pads each batch to its longest)")
    seq_len = args.seq_len or (searched_seq_len(args.retention) if args.task == "sst2" else None)
    ck = checkpoint.load(args.ckpt)
    ck.require_weights("eval")
    if args.task == "sst2":  # before any calibration or data work
        tasks.require_sst2_classifier(ck)
    retention = read_retention(args.retention, ck.spec.layers, seq_len)
    warn_other_search(args.retention, ck, args.task, seq_len, args.engine)
    if retention is not None and seq_len is None:
        refuse_idle_retention(retention, tasks.token_limit(ck.spec))
    backend = task_backend(args.engine, task_calibration(args.engine, ck, args.task, args.data))
    started = time.perf_counter()
    if args.task == "sst2":
        task = tasks.load_sst2(args.data, args.limit)
        batches = encode(ck, task.sentences, seq_len, args.batch_size,
                         warn_cuts="--seq-len" if args.seq_len else "the retention config's seq_len")
        predictions = predict(ck, retention, tqdm(batches, desc="sst2", leave=False), backend)
        metric, value, n = "accuracy", tasks.accuracy(predictions, task.labels), len(task.labels)
    else:
        task = tasks.load_stsb(args.data, args.limit)
        ck = replace(ck, spec=ck.spec.with_variant(retention=retention))  # mean pools the kept tokens
        value = tasks.stsb_spearman(ck, task, backend, batch_size=args.batch_size, warn_cuts=True,
                                    progress=lambda b: tqdm(b, desc="stsb", leave=False))
        metric, n = "spearman", len(task.scores)
    seconds = time.perf_counter() - started
    row = {"checkpoint": ck.source, "task": args.task, "engine": args.engine, "examples": n,
           "retention": "none" if retention is None else ",".join(map(str, retention)),
           "seq_len": seq_len or "dynamic", "batch_size": args.batch_size, "padding": padding_rule(seq_len),
           metric: round(value, 2), "seconds": round(seconds, 2)}
    emit(render([row], args.format), args.output)
    return 0


def refuse_idle_retention(retention: tuple[int, ...], longest: int) -> None:
    """With each batch padded to its longest text, no text has more than `longest` tokens: a schedule whose
    every layer keeps at least that many eliminates nothing (a layer acts only where it keeps fewer tokens
    than are present), and its row would report a retention that changed nothing."""
    if retention[-1] >= longest:
        shown = ",".join(map(str, retention))
        raise UserError(f"retention {shown} keeps at least {longest} tokens at every layer, and texts are cut to "
                        f"{longest} here: it eliminates nothing (keep fewer at some layer)")


def warn_other_search(retention: str | None, ck: checkpoint.Checkpoint, task: str, seq_len: int | None,
                      engine: str) -> None:
    """A warning per setting a `power-search --out` config was searched under that this run does not share (its
    task, its model's digest, its padded length, its engine): the schedule is applied, but its recorded accuracy
    and FLOPs were measured elsewhere. A setting the config does not record is not compared; nor are the search's
    examples and batch size, which an evaluation on other data or batches does not share by design."""
    searched = searched_record(retention)
    differences = []
    if searched.get("task") not in (None, task):
        differences.append(f"was searched on {searched['task']}, this run evaluates {task}")
    depends_on = searched.get("scores_depend_on") or {}
    model = depends_on.get("model")
    if model is not None and model != ck.hasher().hexdigest():
        differences.append(f"was searched on another model ({searched.get('checkpoint')}, digest {model}), not "
                           f"{ck.source}")
    if searched.get("seq_len") not in (None, seq_len):
        here = f"pads to {seq_len}" if seq_len else "pads each batch to its longest text"
        differences.append(f"was searched at --seq-len {searched['seq_len']}, this run {here}")
    if depends_on.get("engine") not in (None, engine):
        differences.append(f"was searched on the {depends_on['engine']} engine, this run uses {engine}")
    for difference in differences:
        print(f"mabert-hw: warning: {retention} {difference}", file=sys.stderr)


def padding_rule(seq_len: int | None) -> str:
    """How the batches were padded: part of an MA-BERT result, whose approximator sees the padded keys."""
    return "batch-longest" if seq_len is None else f"fixed-{seq_len}"

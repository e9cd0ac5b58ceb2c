"""`mabert-hw softmax-error`: the MA-BERT softmax approximator against the exact softmax on real rows."""

from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint
from ..errors import UserError
from ..inputs import read_texts, tokenize
from ..report.tables import text_table
from .common import add_checkpoint, positive_int

COLUMNS = ("rows", "max_abs", "mean_abs", "negative_%", "sum_off_%", "kl", "argmax_agree_%", "topk_overlap_%")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "softmax-error",
        help="exact softmax vs the MA approximator on real attention-score rows",
        description="Collect real score rows (every layer and head) from the baseline TEACHER on the texts in "
        "--data and compare the exact softmax with CKPT's approximators: max/mean |p - q|, how often q leaves "
        "the simplex, KL(p || q clipped to the simplex), argmax agreement, top-5 mass overlap; by layer, by "
        "layer x head, by sentence length, and for the same sentences padded to longer batches.",
    )
    add_checkpoint(parser)
    parser.add_argument("--data", required=True, help="text file, one text per line")
    parser.add_argument("--teacher", help="baseline checkpoint (default: the one CKPT was converted from)")
    parser.add_argument("--max-rows", type=positive_int, default=20000, help="stop after this many query rows")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--pad-to", type=positive_int, nargs="*", default=[64, 128],
                        help="also pad the first batch to these lengths (padding dependence)")
    parser.add_argument("--by", choices=("layer", "head", "length"), default="layer")
    parser.add_argument("--output-dir", help="write CSV/JSON tables and PNG plots here")
    parser.set_defaults(run=run)


def run(args) -> int:
    try:
        from ..torch_ref import softmax_error as se
        from ..torch_ref.ma_bert import load_official
    except ImportError as error:
        raise UserError(f"`softmax-error` needs torch ({error.name} is not installed)") from None
    ck = checkpoint.load(args.ckpt)
    if ck.spec.variant.softmax != "mlp":
        raise UserError(f"{ck.source} has no softmax approximator (variant {ck.spec.variant.describe()})")
    teacher_source = args.teacher or json.loads((Path(args.ckpt) / "config.json").read_text()
                                                if (Path(args.ckpt) / "config.json").exists() else "{}"
                                                ).get("conversion", {}).get("teacher")
    if not teacher_source:
        raise UserError("no --teacher given and CKPT does not name the checkpoint it was converted from")
    teacher_ck = checkpoint.load(teacher_source)
    teacher = load_official(teacher_ck.spec, teacher_ck.require_weights("softmax-error"))
    weights = ck.require_weights("softmax-error")
    tokenizer_dir = ck.tokenizer_dir or teacher_ck.tokenizer_dir
    if tokenizer_dir is None:
        raise UserError("neither checkpoint has a tokenizer")
    texts, n = read_texts(args.data), ck.spec.variant.softmax_input
    parts, rows = [], 0
    for start in range(0, len(texts), args.batch):
        batch = tokenize(tokenizer_dir, texts[start:start + args.batch])
        if batch.shape[1] > n:
            batch = tokenize(tokenizer_dir, texts[start:start + args.batch], n)
        parts.append(se.row_errors(teacher, ck.spec, weights, batch))
        rows += int(batch.attention_mask.sum())
        if rows >= args.max_rows:
            break
    errors = se.merge(parts)
    table = se.summary_rows(errors, args.by)
    first = texts[:args.batch]
    padding = []
    for length in [None] + [p for p in args.pad_to if p <= n]:
        batch = tokenize(tokenizer_dir, first, length)
        if length is None or int(batch.attention_mask.sum(1).max()) <= length:
            e = se.row_errors(teacher, ck.spec, weights, batch)
            padding.append({"padded_to": batch.shape[1], **se.summary_rows(e, "layer")[0],
                            "mean_abs_all_layers": float(e["mean_abs"].mean())})
    print(f"{rows} query rows x {ck.spec.layers} layers x {ck.spec.heads} heads; teacher {teacher_source}")
    print(text_table(table, [c for c in table[0] if c not in COLUMNS] + list(COLUMNS)))
    print("\npadding dependence (first batch, same sentences):")
    print(text_table(padding, ["padded_to", "mean_abs_all_layers", "kl", "argmax_agree_%"]))
    if args.output_dir:
        from ..report.ma_plots import write_softmax_error

        write_softmax_error(Path(args.output_dir), errors, padding)
    return 0

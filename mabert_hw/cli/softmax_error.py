"""`mabert-hw softmax-error`: the MA-BERT softmax approximator against the exact softmax on real rows."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

from .. import checkpoint
from ..errors import UserError
from ..inputs import data_texts, tokenize_cut, tokenize_within, warn_truncated
from ..report.tables import text_table
from ..spec import PRESETS
from .common import add_checkpoint, output_dir, positive_int
from .convert import conversion_record
from .infer import checkpoint_config

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
    parser.add_argument("--data", required=True,
                        help="text file, one text per line, or a GLUE .tsv (its sentence columns)")
    parser.add_argument("--teacher", help="baseline checkpoint (default: the one CKPT was converted from)")
    parser.add_argument("--max-rows", type=positive_int, default=20000,
                        help="measure the first this many query rows (real tokens, in the texts' order; all, "
                        "where there are fewer): stop after this many rows (default %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=16, help="texts per batch (default %(default)s)")
    parser.add_argument("--pad-to", type=positive_int, nargs="*", default=[64, 128],
                        help="also pad the first batch to these lengths (padding dependence: KL and argmax "
                        "agreement of layer 0, mean |p - q| over all layers and all key columns of the padded batch; "
                        "default %(default)s); lengths above CKPT's approximator input n or its positions, or below "
                        "the batch's own length, are skipped with a warning, and its own length is not measured twice")
    parser.add_argument("--by", choices=("layer", "head", "length"), default="layer",
                        help="group the main table by this (default %(default)s)")
    parser.add_argument("--output-dir", help="write CSV/JSON tables and PNG plots here (created if missing, and "
                        "removed again if the run fails or is interrupted while it is still empty)")
    parser.set_defaults(run=run)


def input_limit(ma_spec, teacher_spec) -> tuple[int, str]:
    """The widest batch both models take (the approximator's n inputs, each model's positions), and what sets it."""
    n, positions = ma_spec.variant.softmax_input, min(ma_spec.max_positions, teacher_spec.max_positions)
    return (n, f"the approximator's n = {n}") if n <= positions else (positions, f"the model's {positions} positions")


def padding_lengths(requested: list[int], width: int, widest: int, what: str) -> list[int]:
    """The --pad-to lengths that pad the first batch's sentences without cutting them and fit input_limit,
    each once; the first batch's own width is measured already (it is the table's first row)."""
    kept = [p for p in dict.fromkeys(requested) if width < p <= widest]
    for p in dict.fromkeys(requested):
        if p not in kept and p != width:
            why = f"above {what}" if p > widest else f"below the first batch's length {width}"
            print(f"mabert-hw: warning: --pad-to {p} skipped: {why}", file=sys.stderr)
    return kept


def check_teacher_shape(ma_spec, teacher_ck) -> None:
    """The teacher's score rows feed CKPT's approximators layer by layer and head by head."""
    differ = [f"{name} {getattr(teacher_ck.spec, name)} (CKPT: {getattr(ma_spec, name)})"
              for name in ("layers", "heads", "hidden") if getattr(teacher_ck.spec, name) != getattr(ma_spec, name)]
    if differ:
        raise UserError(f"teacher {teacher_ck.source} has another shape than CKPT: {', '.join(differ)}; "
                        "give the checkpoint CKPT was converted from")


def recorded_teacher(ckpt: str) -> str:
    """The teacher that CKPT's config.json says `convert` made it from. Records from before `convert` made
    the path absolute hold it as typed, relative to a directory they do not name: such a path that does
    not lead to a checkpoint from here is an error asking for --teacher."""
    teacher = conversion_record(checkpoint_config(ckpt)).get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise UserError("no --teacher given and CKPT does not name the checkpoint it was converted from")
    named = teacher in PRESETS or teacher == checkpoint.MINILM_ALIAS
    if not named and not Path(teacher).is_absolute() and not Path(teacher).exists():
        raise UserError(f"CKPT names its teacher {teacher!r}, a path relative to the directory `convert` ran in: "
                        "give --teacher")
    return teacher


def padding_table(padding: list[dict]) -> list[dict]:
    """The printed view of the padding rows: their KL and argmax agreement are layer 0's only."""
    return [{"padded_to": r["padded_to"], "mean_abs_all_layers": r["mean_abs_all_layers"],
             "layer0_kl": r["kl"], "layer0_argmax_agree_%": r["argmax_agree_%"]} for r in padding]


def run(args) -> int:
    try:
        from ..torch_ref.ma_bert import load_official
    except ImportError as error:
        raise UserError(f"`softmax-error` needs torch ({error.name} is not installed)") from None
    ck = checkpoint.load(args.ckpt)
    if ck.spec.variant.softmax != "mlp":
        raise UserError(f"{ck.source} has no softmax approximator (variant {ck.spec.variant.describe()})")
    teacher_source = args.teacher or recorded_teacher(args.ckpt)
    teacher_ck = checkpoint.load(teacher_source)
    if not teacher_ck.spec.variant.is_baseline:
        raise UserError(f"teacher {teacher_ck.source} is not a baseline BERT (variant "
                        f"{teacher_ck.spec.variant.describe()}): give the checkpoint CKPT was converted from")
    check_teacher_shape(ck.spec, teacher_ck)
    teacher = load_official(teacher_ck.spec, teacher_ck.require_weights("softmax-error"))
    # a run that fails or is stopped before it writes leaves no empty --output-dir, as `convert` leaves no --out
    with output_dir(args.output_dir) if args.output_dir else nullcontext() as folder:
        return measure(args, ck, teacher_ck, teacher, teacher_source, folder)


def measure(args, ck, teacher_ck, teacher, teacher_source: str, folder: Path | None) -> int:
    """`run`'s tables, on the teacher's torch module: printed and, with a folder, written there."""
    from ..torch_ref import softmax_error as se

    weights = ck.require_weights("softmax-error")
    tokenizer_dir = ck.tokenizer_dir or teacher_ck.tokenizer_dir
    if tokenizer_dir is None:
        raise UserError("neither checkpoint has a tokenizer")
    texts, (widest, what) = data_texts(args.data), input_limit(ck.spec, teacher_ck.spec)
    first = tokenize_within(tokenizer_dir, texts[:args.batch], widest)  # never wider than input_limit
    padded = [first] + [tokenize_within(tokenizer_dir, texts[:args.batch], widest, p)
                        for p in padding_lengths(args.pad_to, first.shape[1], widest, what)]
    parts, rows, truncated, read = [], 0, 0, 0
    for start in range(0, len(texts), args.batch):
        batch, cut = tokenize_cut(tokenizer_dir, texts[start:start + args.batch], widest)
        truncated, read = truncated + cut, read + batch.shape[0]
        parts.append(se.row_errors(teacher, ck.spec, weights, batch))
        rows += int(batch.attention_mask.sum())
        if rows >= args.max_rows:
            break
    warn_truncated(truncated, read, widest)
    errors = se.first_rows(se.merge(parts), args.max_rows)
    table = se.summary_rows(errors, args.by)
    padding = []
    for batch in padded:
        e = se.row_errors(teacher, ck.spec, weights, batch)
        padding.append({"padded_to": batch.shape[1], **se.summary_rows(e, "layer")[0],
                        "mean_abs_all_layers": float(e["mean_abs"].mean())})
    print(f"{errors['length'].size} query rows x {ck.spec.layers} layers x {ck.spec.heads} heads; "
          f"teacher {teacher_source}")
    print(text_table(table, [c for c in table[0] if c not in COLUMNS] + list(COLUMNS)))
    print("\npadding dependence (first batch, same sentences; mean |p - q| over all layers and all key columns "
          "of the padded batch, KL and argmax agreement of layer 0):")
    print(text_table(padding_table(padding)))
    if folder:
        from ..report.ma_plots import write_softmax_error

        write_softmax_error(folder, errors, padding)
    return 0

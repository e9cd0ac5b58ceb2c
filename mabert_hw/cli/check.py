"""`mabert-hw check`: the reference backend against torch (HF transformers, torch_ref's MA-BERT for MA
checkpoints, torch_ref's crammed model for crammed BERT / UltraFastBERT ones) on the same inputs.

A HF checkpoint directory is loaded a second time by transformers' own from_pretrained, so a config key
that checkpoint.py drops or misreads shows as a difference; presets and bare configs (random weights)
have only our spec to build HF from.

Precision. float32 rounding error grows with length and depth: on MiniLM at 512 tokens HF float32 is
itself 2.2e-4 from float64 (the reference float32 1.4e-4), so no float32 tolerance both passes correct
long inputs and stays discriminating. The HF comparison therefore runs in float64 on both sides: the
same amplification (2.2e-4 / 2^-24 ~ 4e3) times float64's 2^-53 gives ~5e-13, and FLOAT64_ATOL = 1e-9
leaves three decades for deeper, wider models while any real difference (a wrong mask, eps, activation)
is many decades larger. torch_ref's MA-BERT and crammed modules run in float32, with FLOAT32_ATOL."""

from __future__ import annotations

import math
from .. import checkpoint
from ..errors import UserError
from ..inputs import SAMPLE_TEXTS, Batch, check_seq_len, data_texts, random_batch, tokenize
from ..report.tables import text_table
from ..weights import random_weights
from .common import add_checkpoint, non_negative_float, positive_int, seed_int

FLOAT64_ATOL = 1e-9  # reference float64 vs HF float64 (module docstring; tests/tolerances.py)
FLOAT32_ATOL = 1e-4  # float32 reference vs torch float32 at T ~ 128: summation order only (tests/tolerances.py)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="compare the NumPy reference with the torch model, layer by layer",
        description="Run the reference backend and HF transformers (eager attention) on the same inputs "
        "(for an MA-BERT checkpoint: torch_ref's MA-BERT on the weights as stored, before PowerNorm folding; "
        "for a crammed BERT / UltraFastBERT one: torch_ref's crammed model on its state dict as stored): "
        "real tokenised text when the checkpoint has a tokenizer, seeded random ids with padding otherwise. "
        "A checkpoint without weights (preset, config.json) gets seeded random weights. "
        "A HF checkpoint directory is loaded by transformers' own from_pretrained; the HF comparison runs "
        "in float64 on both sides. Exit status 1 when any max |diff| exceeds --atol.",
    )
    add_checkpoint(parser)
    parser.add_argument("--texts", metavar="FILE", help="one text per line, or a GLUE .tsv (its sentence columns) "
                        "(default: built-in sentences)")
    parser.add_argument("--batch", type=positive_int, default=4,
                        help="number of sequences (default 4): the first BATCH texts, taken again in turn where "
                        "there are fewer")
    parser.add_argument("--seq-len", type=positive_int,
                        help="pad/truncate to T tokens (default: longest text, or 64 (at most the model "
                        "positions and an MA-BERT approximator's inputs) for random ids)")
    parser.add_argument("--atol", type=non_negative_float,
                        help=f"tolerance (default {FLOAT64_ATOL:g} against HF in float64, "
                        f"{FLOAT32_ATOL:g} against the float32 MA-BERT and crammed modules)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed for random weights and ids (default 0)")
    parser.set_defaults(run=run)


def run(args) -> int:
    texts = given_texts(args)  # before torch loads (seconds): a missing or bad file is one line at once
    try:
        from ..torch_ref.check import compare_with_crammed_torch, compare_with_hf, compare_with_ma_torch
    except ImportError as error:
        raise UserError(f"`check` needs torch and transformers ({error.name} is not installed)") from None
    ck = checkpoint.load(args.ckpt)
    weights = ck.weights
    if weights is None:
        weights = random_weights(ck.spec, args.seed)
        print(f"{ck.source} has no weights: using random weights (seed {args.seed})")
    batch = check_inputs(args, ck, texts)
    if ck.unfolded is not None:
        print("MA-BERT checkpoint: comparing with torch_ref.ma_bert on the stored (unfolded) weights")
        diffs, atol = compare_with_ma_torch(ck.spec, ck.unfolded, batch), FLOAT32_ATOL
    elif ck.crammed is not None:
        print("crammed BERT checkpoint: comparing with torch_ref.crammed on the state dict as stored")
        diffs, atol = compare_with_crammed_torch(ck.spec, ck.crammed, batch, args.seed), FLOAT32_ATOL
    else:
        diffs, atol = compare_with_hf(ck, weights, batch, checkpoint.source_path(args.ckpt)), FLOAT64_ATOL
    atol = atol if args.atol is None else args.atol
    print(text_table([{"output": label, "max_abs_diff": f"{d:.3e}", "ok": d <= atol} for label, d in diffs]))
    ok = all(d <= atol for _, d in diffs)  # a nan row fails: nan <= atol is False (max() would skip it)
    worst = max((d for _, d in diffs), key=lambda d: (math.isnan(d), d))  # nan, where any row is nan
    print(f"{'OK' if ok else 'FAIL'}: max |diff| {worst:.3e} (atol {atol:g})")
    return 0 if ok else 1


def given_texts(args) -> list[str] | None:
    """The texts of --texts, None without it."""
    if args.texts == "":  # a file name left empty (an unset shell variable): not the built-in sentences
        raise UserError("--texts is empty: give a file of texts")
    return data_texts(args.texts) if args.texts else None


def check_inputs(args, ck: checkpoint.Checkpoint, texts: list[str] | None) -> Batch:
    """Tokenised texts (--texts', else the built-in sentences) when the checkpoint has a tokenizer, seeded
    random ids with padding otherwise."""
    if ck.tokenizer_dir is not None:
        if args.seq_len:
            check_seq_len(ck.spec, args.seq_len)
        texts = list(SAMPLE_TEXTS) if texts is None else texts
        batch = tokenize(ck.tokenizer_dir, cycled(texts, args.batch), args.seq_len)
        repeated = f" (repeating {len(texts)} in turn)" if len(texts) < args.batch else ""
        print(f"inputs: {args.batch} tokenised texts{repeated}, {batch.shape[1]} tokens")
        return batch
    if texts is not None:
        raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt): cannot use --texts")
    batch = random_batch(ck.spec, args.batch, args.seq_len or default_random_length(ck.spec), args.seed)
    print(f"inputs: random ids {batch.shape[0]} x {batch.shape[1]} with padding (seed {args.seed})")
    return batch


def cycled(texts: list[str], count: int) -> list[str]:
    """`count` texts: the first `count`, or all of them taken again in turn where there are fewer."""
    return [texts[i % len(texts)] for i in range(count)]


def default_random_length(spec) -> int:
    """64 tokens, at most the model's positions and an MA-BERT approximator's n (its forward refuses more)."""
    length = min(64, spec.max_positions)
    return min(length, spec.variant.softmax_input) if spec.variant.softmax == "mlp" else length

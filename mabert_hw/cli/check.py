"""`mabert-hw check`: the reference backend against torch (HF transformers, torch_ref's MA-BERT for MA
checkpoints, torch_ref's crammed model for crammed BERT / UltraFastBERT ones) on the same inputs."""

from __future__ import annotations

from .. import checkpoint
from ..errors import UserError
from ..inputs import SAMPLE_TEXTS, check_seq_len, random_batch, read_texts, tokenize
from ..report.tables import text_table
from ..weights import random_weights
from .common import add_checkpoint, non_negative_float, non_negative_int, positive_int

DEFAULT_ATOL = 1e-4  # float32 reference vs torch float32: summation order only (tests/tolerances.py)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="compare the NumPy reference with the torch model, layer by layer",
        description="Run the reference backend and HF transformers (eager attention) on the same inputs "
        "(for an MA-BERT checkpoint: torch_ref's MA-BERT on the weights as stored, before PowerNorm folding; "
        "for a crammed BERT / UltraFastBERT one: torch_ref's crammed model on its state dict as stored): "
        "real tokenised text when the checkpoint has a tokenizer, seeded random ids with padding otherwise. "
        "A checkpoint without weights (preset, config.json) gets seeded random weights. "
        "Exit status 1 when any max |diff| exceeds --atol.",
    )
    add_checkpoint(parser)
    parser.add_argument("--texts", metavar="FILE", help="one text per line (default: built-in sentences)")
    parser.add_argument("--batch", type=positive_int, default=4, help="number of sequences (default 4)")
    parser.add_argument("--seq-len", type=positive_int,
                        help="pad/truncate to T tokens (default: longest text, or 64 (at most the model positions) for random ids)")
    parser.add_argument("--atol", type=non_negative_float, default=DEFAULT_ATOL,
                        help=f"tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed for random weights and ids (default 0)")
    parser.set_defaults(run=run)


def run(args) -> int:
    try:
        from ..torch_ref.check import compare_with_crammed_torch, compare_with_hf, compare_with_ma_torch
    except ImportError as error:
        raise UserError(f"`check` needs torch and transformers ({error.name} is not installed)") from None
    ck = checkpoint.load(args.ckpt)
    weights = ck.weights
    if weights is None:
        weights = random_weights(ck.spec, args.seed)
        print(f"{ck.source} has no weights: using random weights (seed {args.seed})")
    if ck.tokenizer_dir is not None:
        if args.seq_len:
            check_seq_len(ck.spec, args.seq_len)
        texts = read_texts(args.texts) if args.texts else list(SAMPLE_TEXTS)
        batch = tokenize(ck.tokenizer_dir, texts[: args.batch], args.seq_len)
        print(f"inputs: {len(texts[: args.batch])} tokenised texts, {batch.shape[1]} tokens")
    else:
        if args.texts:
            raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt): cannot use --texts")
        batch = random_batch(ck.spec, args.batch, args.seq_len or min(64, ck.spec.max_positions), args.seed)
        print(f"inputs: random ids {batch.shape[0]} x {batch.shape[1]} with padding (seed {args.seed})")
    if ck.unfolded is not None:
        print("MA-BERT checkpoint: comparing with torch_ref.ma_bert on the stored (unfolded) weights")
        diffs = compare_with_ma_torch(ck.spec, ck.unfolded, batch)
    elif ck.crammed is not None:
        print("crammed BERT checkpoint: comparing with torch_ref.crammed on the state dict as stored")
        diffs = compare_with_crammed_torch(ck.spec, ck.crammed, batch, args.seed)
    else:
        diffs = compare_with_hf(ck.spec, weights, batch)
    print(text_table([{"output": label, "max_abs_diff": f"{d:.3e}", "ok": d <= args.atol} for label, d in diffs]))
    worst = max(d for _, d in diffs)
    verdict = "OK" if worst <= args.atol else "FAIL"
    print(f"{verdict}: max |diff| {worst:.3e} (atol {args.atol:g})")
    return 0 if worst <= args.atol else 1

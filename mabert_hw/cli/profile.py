"""`mabert-hw profile`: per-op MACs, FLOPs, elementwise primitives, parameters and bytes."""

from __future__ import annotations

import json

from .. import checkpoint
from ..errors import UserError
from ..cost.summary import GROUPINGS, document, profile_model, rows
from ..report.tables import FORMATS, render
from .common import add_checkpoint, emit, positive_int

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="count MACs, FLOPs, elementwise primitives, params and bytes of one forward pass",
        description="Trace one forward pass (shapes only, no weights needed) and count every op. "
        "GEMM FLOPs are 2*MACs; elementwise primitives (add, mul, exp, erf, ...) are counted by name.",
    )
    add_checkpoint(parser)
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size B (default 1)")
    parser.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence T (default 128)")
    parser.add_argument("--by", choices=GROUPINGS, default="kind", help="row grouping (default kind)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--precision", choices=PRECISION_BYTES, default="fp32",
                        help="element size for the byte counts (default fp32)")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(run=run)


def run(args) -> int:
    spec = checkpoint.load(args.ckpt).spec
    if args.seq_len > spec.max_positions:
        raise UserError(f"--seq-len {args.seq_len} exceeds the model's {spec.max_positions} positions")
    bytes_per_element = PRECISION_BYTES[args.precision]
    profile = profile_model(spec, args.batch, args.seq_len, bytes_per_element)
    if args.format == "json":
        text = json.dumps(document(spec, args.batch, args.seq_len, profile, bytes_per_element), indent=2)
    else:
        text = render(rows(profile, args.by), args.format)
        if args.format == "table":
            total = profile.total("flops")
            text = (f"{spec.name}  B={args.batch} T={args.seq_len}  variant={spec.variant.describe()}\n"
                    f"{text}\ntotal: {profile.total('macs'):,} MACs, {total / 1e9:.3f} GFLOPs, "
                    f"{profile.total('params'):,} params")
            if profile.unknown:
                text += f"\nunknown ops (not counted): {', '.join(op.name for op in profile.unknown)}"
    emit(text, args.output)
    return 0

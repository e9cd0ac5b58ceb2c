"""`mabert-hw profile`: per-op MACs, FLOPs, elementwise primitives, parameters and bytes; with
`--hw`, cycles, time, energy and the compute/memory bound on an accelerator description."""

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
    add_hardware_arguments(parser)
    parser.set_defaults(run=run)


def add_hardware_arguments(parser) -> None:
    parser.add_argument("--hw", metavar="PRESET|FILE.toml",
                        help="add cycles, time, energy and bound on this accelerator (presets: "
                        "edge-32x32-int8, ma-motivation, tpu-128x128-bf16, tpu-256x256-int8); the "
                        "hardware's own precisions price its bytes, --precision only sets the byte columns")
    parser.add_argument("--overlap", choices=("on", "off"),
                        help="DRAM transfers overlap compute (default: the hardware file's setting)")


def load_hardware(args):
    from ..cost import hardware

    hw = hardware.load(args.hw)
    return hw if args.overlap is None else hw.with_overlap(args.overlap == "on")


def run(args) -> int:
    spec = checkpoint.load(args.ckpt).spec
    if args.seq_len > spec.max_positions:
        raise UserError(f"--seq-len {args.seq_len} exceeds the model's {spec.max_positions} positions")
    bytes_per_element = PRECISION_BYTES[args.precision]
    profile = profile_model(spec, args.batch, args.seq_len, bytes_per_element)
    estimate = None
    if args.hw:
        from ..cost.cycles import estimate as estimate_cycles

        estimate = estimate_cycles([c.op for c in profile.counts] + profile.unknown, load_hardware(args))
    if args.format == "json":
        doc = document(spec, args.batch, args.seq_len, profile, bytes_per_element)
        if estimate is not None:
            add_hw_to_document(doc, profile, estimate)
        text = json.dumps(doc, indent=2)
    else:
        table = rows(profile, args.by)
        if estimate is not None:
            from ..cost.hw_summary import add_hw_columns

            table = add_hw_columns(table, profile, estimate, args.by)
        text = render(table, args.format)
        if args.format == "table":
            total = profile.total("flops")
            text = (f"{spec.name}  B={args.batch} T={args.seq_len}  variant={spec.variant.describe()}\n"
                    f"{text}\ntotal: {profile.total('macs'):,} MACs, {total / 1e9:.3f} GFLOPs, "
                    f"{profile.total('params'):,} params")
            if profile.unknown:
                text += f"\nunknown ops (not counted): {', '.join(op.name for op in profile.unknown)}"
            if estimate is not None:
                text += "\n" + hardware_summary(estimate)
    emit(text, args.output)
    return 0


def hardware_summary(estimate) -> str:
    hw, parts = estimate.hardware, estimate.energy_parts()
    energy = ", ".join(f"{part} {pj / 1e6:.4g}" for part, pj in parts.items())
    text = (f"on {hw.name} ({hw.rows}x{hw.cols} {hw.dataflow} {hw.array_precision}, {hw.clock_ghz:g} GHz, "
            f"overlap {'on' if hw.overlap else 'off'}): {estimate.total('cycles'):,} cycles = "
            f"{estimate.seconds * 1e3:.4g} ms, {sum(parts.values()) / 1e6:.4g} uJ ({energy} uJ)")
    if estimate.unknown:
        text += "\nops without a cycle rule (not priced): " + "; ".join(
            f"{op.name} ({why})" for op, why in estimate.unknown)
    return text


def add_hw_to_document(doc: dict, profile, estimate) -> None:
    from ..cost.hw_summary import cost_record, hw_document

    by_op = {id(c.op): c for c in estimate.costs}
    reasons = {id(op): why for op, why in estimate.unknown}
    for record, count in zip(doc["ops"], profile.counts):
        key = id(count.op)
        record["hw"] = cost_record(by_op[key]) if key in by_op else {"unpriced": reasons[key]}
    doc.update(hw_document(estimate))

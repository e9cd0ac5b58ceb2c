"""`mabert-hw profile`: per-op MACs, FLOPs, elementwise primitives, parameters and bytes; with
`--hw`, cycles, time, energy and the compute/memory bound on an accelerator description. With
`--retention`, PoWER-BERT elimination is applied (each layer's ops at its kept tokens T_l) and the
savings against the same model without elimination are printed (FLOPs, MACs and, with --hw, cycles)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import checkpoint
from ..cost.hardware import PRECISION_BYTES, preset_names
from ..cost.hw_summary import HW_RULE
from ..cost.summary import GROUPINGS, document, layer_label, profile_model, rows
from ..errors import UserError
from ..inputs import check_positions
from ..power import kept_tokens
from ..report.tables import FORMATS, render
from .common import add_checkpoint, add_output, emit, positive_int
from .retention import add_retention_argument, read_retention, searched_seq_len

DEFAULT_SEQ_LEN = 128


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="count MACs, FLOPs, elementwise primitives, params and bytes of one forward pass",
        description="Trace one forward pass (shapes only, no weights needed) and count every op. "
        "GEMM FLOPs are 2*MACs; elementwise primitives (add, mul, exp, erf, ...) are counted by name. "
        f"With --hw: {HW_RULE}",
    )
    add_checkpoint(parser)
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size B (default 1)")
    parser.add_argument("--seq-len", type=positive_int,
                        help=f"tokens per sequence T (default {DEFAULT_SEQ_LEN}, or the N a --retention "
                        "config file was searched at)")
    parser.add_argument("--by", choices=GROUPINGS, default="kind",
                        help="row grouping of the table, csv and md formats (json lists every op, with "
                        "totals by kind; default kind)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--precision", choices=PRECISION_BYTES, default="fp32",
                        help="element size for the byte counts (default fp32)")
    add_output(parser)
    add_retention_argument(parser, "; each layer is counted at the tokens it keeps, with the savings vs none "
                           "(--by layer adds a tokens_out column)")
    add_hardware_arguments(parser, "add cycles, time, energy and bound on this accelerator",
                           "; the hardware's own precisions price its bytes, --precision only sets the byte columns")
    parser.set_defaults(run=run)


def hardware_source(text: str) -> str:
    """--hw: a preset's name or the path of an existing FILE.toml, checked as the flag is parsed (the file's
    contents are read, and refused in one line, when the command runs: cost.hardware.load)."""
    if not text.endswith(".toml"):
        if text not in preset_names():
            raise argparse.ArgumentTypeError(f"unknown hardware {text!r}; presets: {', '.join(preset_names())}, "
                                             "or a FILE.toml")
        return text
    try:
        if not Path(text).exists():
            raise argparse.ArgumentTypeError(f"no such hardware file: {text}")
        if Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a directory, not a hardware file")
    except OSError as error:  # a name too long for the file system, and the like
        raise argparse.ArgumentTypeError(f"cannot read hardware file {text}: {error.strerror or error}") from None
    return text


def add_hardware_arguments(parser, what: str, extra_help: str = "") -> None:
    """--hw and --overlap; `what` says what --hw does in this command (profile: adds columns)."""
    parser.add_argument("--hw", metavar="PRESET|FILE.toml", type=hardware_source,
                        help=f"{what} (presets: {', '.join(preset_names())}){extra_help}")
    parser.add_argument("--overlap", choices=("on", "off"),
                        help="DRAM transfers overlap compute (default: the hardware file's setting)")


def load_hardware(args):
    from ..cost import hardware

    hw = hardware.load(args.hw)
    return hw if args.overlap is None else hw.with_overlap(args.overlap == "on")


def run(args) -> int:
    if args.overlap is not None and args.hw is None:  # it sets the hardware's overlap: without one, nothing
        raise UserError("--overlap applies to the --hw accelerator, and no --hw is given")
    spec = checkpoint.load(args.ckpt).spec
    seq_len = args.seq_len or searched_seq_len(args.retention) or DEFAULT_SEQ_LEN
    check_positions(spec, seq_len)
    retention = read_retention(args.retention, spec.layers, seq_len)
    if retention is not None:
        spec = spec.with_variant(retention=retention)
    bytes_per_element = PRECISION_BYTES[args.precision]
    profile = profile_model(spec, args.batch, seq_len, bytes_per_element)
    hw = load_hardware(args) if args.hw else None
    estimate = None if hw is None else estimate_cycles(profile, hw)
    savings = None
    if retention is not None:
        savings = elimination_savings(spec, args.batch, seq_len, bytes_per_element, profile, hw, estimate)
    if args.format == "json":
        doc = document(spec, args.batch, seq_len, profile, bytes_per_element)
        if estimate is not None:
            add_hw_to_document(doc, profile, estimate)
        if savings is not None:
            doc["power"] = savings
        text = json.dumps(doc, indent=2)
    else:
        table = rows(profile, args.by)
        if estimate is not None:
            from ..cost.hw_summary import add_hw_columns

            table = add_hw_columns(table, profile, estimate, args.by)
        if retention is not None and args.by == "layer":
            table = with_tokens_out(table, profile)
        text = render(table, args.format)
        if args.format == "table":
            total = profile.total("flops")
            text = (f"{spec.name}  B={args.batch} T={seq_len}  variant={spec.variant.describe()}\n"
                    f"{text}\ntotal: {profile.total('macs'):,} MACs, {total / 1e9:.3f} GFLOPs, "
                    f"{profile.total('params'):,} params")
            if profile.unknown:
                text += f"\nunknown ops (not counted): {', '.join(op.name for op in profile.unknown)}"
            if estimate is not None:
                text += "\n" + hardware_summary(estimate)
            if savings is not None:
                text += "\n" + savings_summary(savings)
    emit(text, args.output)
    return 0


def estimate_cycles(profile, hw):
    from ..cost.cycles import estimate

    return estimate([c.op for c in profile.counts] + profile.unknown, hw)


def elimination_savings(spec, batch: int, seq_len: int, bytes_per_element: float, profile, hw, estimate) -> dict:
    """What the retention schedule saves against the same model without elimination; ratios are
    without / with (2.0: half the work), the convention of `power-search`."""
    full = profile_model(spec.with_variant(retention=None), batch, seq_len, bytes_per_element)
    savings = {"retention": list(spec.variant.retention), "tokens_in": seq_len,
               "kept_tokens": kept_tokens(seq_len, spec.variant.retention)}
    for total in ("macs", "flops"):
        savings[total] = profile.total(total)
        savings[f"{total}_without_elimination"] = full.total(total)
        savings[f"{total}_ratio"] = full.total(total) / profile.total(total)
    if estimate is not None:
        full_estimate = estimate_cycles(full, hw)
        savings["cycles"] = estimate.total("cycles")
        savings["cycles_without_elimination"] = full_estimate.total("cycles")
        # an unpriced op is missing from its total, not free: such totals are not compared (as in compare)
        comparable = not estimate.unknown and not full_estimate.unknown
        savings["cycles_ratio"] = savings["cycles_without_elimination"] / savings["cycles"] if comparable else None
    return savings


def savings_summary(savings: dict) -> str:
    tokens = " -> ".join(map(str, [savings["tokens_in"], *savings["kept_tokens"]]))
    text = (f"PoWER-BERT retention {','.join(map(str, savings['retention']))}: tokens per layer {tokens}; "
            f"{savings['flops'] / 1e9:.3f} vs {savings['flops_without_elimination'] / 1e9:.3f} GFLOPs without "
            f"elimination: {savings['flops_ratio']:.3f}x fewer FLOPs ({savings['macs_ratio']:.3f}x fewer MACs)")
    if "cycles" in savings and savings["cycles_ratio"] is None:
        text += "; cycles not compared: ops without a cycle rule are missing from the totals"
    elif "cycles" in savings:
        text += (f"; {savings['cycles']:,} vs {savings['cycles_without_elimination']:,} cycles: "
                 f"{savings['cycles_ratio']:.3f}x fewer")
    return text


def with_tokens_out(table: list[dict], profile) -> list[dict]:
    """--by layer rows with the tokens each layer passes on (T_l), read from its last (B, T, C) output."""
    tokens = {}
    for count in profile.counts:
        label = layer_label(count)
        if label != "head" and len(count.op.output) == 3:
            tokens[label] = count.op.output[1]
    return [{"layer": row["layer"], "tokens_out": tokens.get(row["layer"]), **row} for row in table]


def hardware_summary(estimate) -> str:
    hw, parts = estimate.hardware, estimate.energy_parts()
    energy = ", ".join(f"{part} {pj / 1e6:.4g}" for part, pj in parts.items())
    text = (f"on {hw.describe()}: {estimate.total('cycles'):,} cycles = "
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

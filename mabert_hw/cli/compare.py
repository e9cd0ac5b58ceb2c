"""`mabert-hw compare`: BERT vs MA-BERT vs PoWER-BERT vs UltraFastBERT on one accelerator description.

Each row is one published recipe's arithmetic on the checkpoint's architecture (VARIANT_RULE, also in
the help), so the rows differ in the recipe alone:
- from the checkpoint, in every row: the dimensions, which biases, token types and position table it
  has, where its norms sit (pre- or post-LN), its pooler and head; the width F of a dense FFN (for an
  FFF checkpoint, as many neurons as its tree nodes: the "equivalent feedforward" of as many neurons
  UltraFastBERT's speed-ups are measured against, arXiv 2311.10770); an FFF checkpoint's trees in the
  fff row and an MA checkpoint's approximator (n, h, shared) in the ma row;
- from the recipe (mabert_hw.spec.VARIANTS): softmax, norm, mask, FFN kind and activation. bert is
  BERT's (GELU), whatever activation the checkpoint's own FFN uses; power is the bert row plus the
  retention schedule of `power_retention` or --retention (inline or a `power-search --out` file, as in
  `profile`), so a schedule that keeps every token prices exactly as bert; ma is MA-BERT's (ReLU,
  PowerNorm, approximator n = h = 128 unless the checkpoint is MA's), fff UltraFastBERT-1x11's one tree
  of depth 11 unless the checkpoint has its own.
The recipe's approximator input n is raised to T when T exceeds it (a model trained for T-token rows;
its hidden width h stays); an MA checkpoint's own approximator is not: T > n skips the ma row, as
`profile` refuses it. A variant whose trace fails with a UserError is listed as skipped with the
reason, not dropped silently. Speedup and energy saved are against bert, between fully priced variants
only: a total without its unpriced ops is short.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .. import checkpoint
from ..cost.hw_summary import HW_RULE, SHARES_RULE
from ..errors import UserError
from ..inputs import check_positions
from ..report.tables import FORMATS, render, unpriced_count
from ..spec import VARIANTS, ModelSpec, Variant
from .common import add_checkpoint, add_output, emit, make_output_dir, name_list, positive_int
from .profile import DEFAULT_SEQ_LEN, add_hardware_arguments, load_hardware
from .retention import add_retention_argument, read_retention, searched_seq_len

DEFAULT_VARIANTS = "bert,ma,power,fff"
DEFAULT_HW = "edge-32x32-int8"
POWER_LAST_LAYER_FRACTION = 0.1  # a round default for a power row without --retention (power-search
# finds real schedules): the last layer keeps 10 % of T, and the average layer about half of them
VARIANT_RULE = ("Every row is its recipe's arithmetic on the checkpoint's architecture: dimensions, biases, "
                "token types, positions, norm placement and dense FFN width F (an FFF checkpoint: as many "
                "neurons as tree nodes) come from the checkpoint, and so do an FFF checkpoint's trees (fff row) "
                "and an MA checkpoint's approximator (ma row: skipped when T exceeds its input size n; the recipe's "
                "n = 128 is raised to T); the checkpoint's own FFN activation does not "
                "enter: bert is GELU BERT, power is the bert row plus the retention schedule.")


def power_retention(seq_len: int, layers: int) -> tuple[int, ...]:
    """Linear decay: layer j of L keeps round(T * (1 - (1 - f) * j / L)) tokens, f = 0.1 (so the
    last layer keeps 10% of T; on average a layer keeps 1 - 0.45 (L + 1) / L of them, 51% for L = 12)."""
    drop = 1 - POWER_LAST_LAYER_FRACTION
    return tuple(max(1, round(seq_len * (1 - drop * j / layers))) for j in range(1, layers + 1))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="cycles, time and energy of BERT variants side by side on one accelerator",
        description="Trace each variant (shapes only), price every op on the accelerator and print the "
        f"side-by-side table; optionally write plots. Variants: {', '.join(VARIANTS)}, power. {VARIANT_RULE} "
        f"PoWER-BERT retention default: layer j of L keeps round(T*(1 - {1 - POWER_LAST_LAYER_FRACTION:g}*j/L)) "
        f"tokens. Columns: {SHARES_RULE} "
        f"{HW_RULE}",
    )
    add_checkpoint(parser)
    parser.add_argument("--variants", type=name_list([*VARIANTS, "power"], "variant"), default=DEFAULT_VARIANTS,
                        help=f"comma-separated, each once (default {DEFAULT_VARIANTS})")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size B (default 1)")
    parser.add_argument("--seq-len", type=positive_int,
                        help=f"tokens per sequence T (default {DEFAULT_SEQ_LEN}, or the N a --retention "
                        "config file was searched at)")
    add_retention_argument(parser, "; the power variant's schedule")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    parser.add_argument("--plots", metavar="DIR", help="write cycles_by_kind.png and roofline.png to DIR")
    add_output(parser)
    add_hardware_arguments(parser, f"the accelerator every variant is priced on, default {DEFAULT_HW}")
    parser.set_defaults(run=run, hw=DEFAULT_HW)


def variant_spec(spec: ModelSpec, name: str, seq_len: int, retention: tuple[int, ...] | None = None) -> ModelSpec:
    """The checkpoint `spec` with variant `name`'s arithmetic, by VARIANT_RULE (the module doc).
    retention: the power variant's validated schedule (read_retention), None for `power_retention`."""
    if name == "power":
        bert = variant_spec(spec, "bert", seq_len)
        return bert.with_variant(retention=retention or power_retention(seq_len, spec.layers))
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}, power")
    variant: Variant = VARIANTS[name]
    own = spec.variant
    if variant.softmax == "mlp" and own.softmax == "mlp":  # its trained approximator: T > n is refused
        variant = replace(variant, softmax_input=own.softmax_input, softmax_hidden=own.softmax_hidden,
                          share_softmax=own.share_softmax)
    elif variant.softmax == "mlp" and seq_len > variant.softmax_input:
        variant = replace(variant, softmax_input=seq_len)
    if variant.ffn == "fff" and own.ffn == "fff":
        variant = replace(variant, fff_depth=own.fff_depth, fff_trees=own.fff_trees)
    return replace(spec, variant=replace(variant, norm_position=own.norm_position))


@dataclass
class Outcome:
    name: str
    spec: ModelSpec
    estimate: object | None  # cost.cycles.Estimate, or None when skipped
    skipped: str | None = None


def evaluate(spec: ModelSpec, names: list[str], batch: int, seq_len: int, hw,
             retention: tuple[int, ...] | None = None):
    """One Outcome per variant name; a variant whose trace raises UserError is skipped with the reason."""
    from ..cost.counts import model_ops
    from ..cost.cycles import estimate

    outcomes = []
    for name in names:
        try:
            vspec = variant_spec(spec, name, seq_len, retention)
            outcomes.append(Outcome(name, vspec, estimate(model_ops(vspec, batch, seq_len), hw)))
        except UserError as error:
            outcomes.append(Outcome(name, spec, None, str(error)))
    return outcomes


def comparison_rows(outcomes: list[Outcome]) -> list[dict]:
    from ..cost.hw_summary import shares

    base = next((o.estimate for o in outcomes if o.name == "bert" and o.estimate), None)
    rows = []
    for o in outcomes:
        if o.estimate is None:
            rows.append({"variant": o.name, "status": f"skipped: {o.skipped}"})
            continue
        e = o.estimate
        cycles, energy = e.total("cycles"), e.total("energy")
        # an unpriced op is missing from its variant's total, not free: such totals are not compared
        comparable = base is not None and not base.unknown and not e.unknown
        memory_bound = sum(c.cycles for c in e.costs if c.bound == "memory")
        rows.append({
            "variant": o.name,
            "status": "ok" if not e.unknown else unpriced_count(len(e.unknown)),
            "gmacs": model_macs(e) / 1e9,
            "cycles": cycles,
            "time_ms": e.seconds * 1e3,
            "energy_uj": energy / 1e6,
            "speedup": base.total("cycles") / cycles if comparable and cycles else None,
            "energy_saved_%": 100.0 * (1 - energy / base.total("energy")) if comparable else None,
            "memory_bound_%": 100.0 * memory_bound / cycles if cycles else 0.0,
            **shares(e),
        })
    return rows


def model_macs(e) -> int:
    """The MACs of every op, priced or not: they are the model's, whatever the hardware can price."""
    from ..cost.counts import count_ops

    return count_ops([c.op for c in e.costs] + [op for op, _ in e.unknown]).total("macs")


def run(args) -> int:
    spec = checkpoint.load(args.ckpt).spec
    seq_len = args.seq_len or searched_seq_len(args.retention) or DEFAULT_SEQ_LEN
    check_positions(spec, seq_len)
    names = args.variants  # known names, each once: checked as the flag was parsed (name_list)
    retention = None if args.retention is None else check_retention_flag(args.retention, names, spec, seq_len)
    hw = load_hardware(args)
    plots_dir = make_output_dir(args.plots) if args.plots else None
    outcomes = evaluate(spec, names, args.batch, seq_len, hw, retention)
    rows = comparison_rows(outcomes)
    if args.format == "json":
        text = json.dumps(comparison_document(spec, args.batch, seq_len, hw, outcomes, rows), indent=2)
    else:  # csv and md stay plain tables of the rows: their context is the command line
        text = render(rows, args.format)
    if args.format == "table":
        notes = [f"  {o.name}: {o.spec.variant.describe()}" for o in outcomes if o.estimate is not None]
        unpriced = [f"  {o.name}: {op.name} ({why})" for o in outcomes if o.estimate for op, why in o.estimate.unknown]
        text = (f"{spec.name}  B={args.batch} T={seq_len}  on {hw.describe()}\n{text}\n"
                "variants:\n" + "\n".join(notes))
        if unpriced:
            text += "\nops without a cycle rule (not priced):\n" + "\n".join(unpriced)
    emit(text, args.output)
    if plots_dir:
        write_plots(outcomes, hw, plots_dir, f"{spec.name} B={args.batch} T={seq_len}")
    return 0


def comparison_document(spec: ModelSpec, batch: int, seq_len: int, hw, outcomes: list[Outcome],
                        rows: list[dict]) -> dict:
    """The JSON output: the table's rows with what the table prints around them (model, sizes, hardware,
    each variant's arithmetic and its ops without a cycle rule)."""
    from ..cost.hw_summary import hardware_record

    variants = []
    for o, row in zip(outcomes, rows):
        if o.estimate is not None:
            unpriced = [{"name": op.name, "kind": op.kind, "reason": why} for op, why in o.estimate.unknown]
            row = {**row, "spec": o.spec.variant.describe(), "unpriced_ops": unpriced}
        variants.append(row)
    return {"model": spec.name, "batch": batch, "seq_len": seq_len, "hardware": hardware_record(hw),
            "variants": variants}


def check_retention_flag(retention: str, names: list[str], spec: ModelSpec, seq_len: int) -> tuple[int, ...]:
    """Up front, so a malformed schedule is an error, not a "skipped" power row (or a silently unused flag)."""
    if "power" not in names:
        raise UserError(f"--retention applies to the power variant, which --variants {','.join(names)} leaves out")
    return read_retention(retention, spec.layers, seq_len)


def write_plots(outcomes: list[Outcome], hw, folder: Path, title: str) -> list[Path]:
    """cycles_by_kind.png and roofline.png in `folder`, an existing directory (make_output_dir)."""
    from ..cost.hw_summary import category_totals
    from ..report import plots

    done = [o for o in outcomes if o.estimate is not None]
    if not done:  # nothing to draw: empty axes (and a legend warning) would pass for a result
        print(f"mabert-hw: warning: every variant was skipped: no plots written to {folder}", file=sys.stderr)
        return []
    by_kind = {o.name: category_totals(o.estimate, "cycles") for o in done}
    unpriced = {o.name: [op.kind for op, _ in o.estimate.unknown] for o in done}  # short bars, marked
    try:
        paths = [plots.stacked_cycles(by_kind, folder / "cycles_by_kind.png", f"{title} on {hw.name}", unpriced),
                 plots.roofline({o.name: o.estimate for o in done}, hw, folder / "roofline.png",
                                f"{title} on {hw.name}")]
    except OSError as error:  # a folder that exists but cannot be written to (read-only, /proc)
        raise UserError(f"cannot write plots to {folder}: {error.strerror or error}") from None
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return paths


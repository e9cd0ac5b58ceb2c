"""`mabert-hw quant-error`: per-tensor error of a quantization config, and the sensitivity ranking."""

from __future__ import annotations

import math

from .. import checkpoint
from ..errors import UserError
from ..inputs import data_texts, tokenize_within
from ..model import forward
from ..quant import config as qconfig
from ..quant.config import CALIBRATION_SENTENCES
from ..report.tables import FORMATS, csv_table, markdown_table, text_table
from .common import add_checkpoint, add_output, emit, plot_file, positive_int, check_configs_for_model

DEFAULT_TOP = 10  # sensitivity rows shown: one screen, past MiniLM's six worst ops (its FFN outputs, reports/int8)
CALIBRATION_BATCH = 32  # calibration's own batches, whatever --batch-size: the observers see padding and keep a
# sample per call (quant/calibrate.py), so the ranges depend on the batching. 32 is eval's default batch and what
# quant-error calibrated on before --batch-size existed (the reports' `--limit 32` runs: one batch)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quant-error",
        help="per-tensor SQNR / cosine / max error of a quantization config vs float, and sensitivity",
        description=f"Calibrate on the texts (the first {CALIBRATION_SENTENCES}), run the fixed backend with the "
        "config and the float reference on them, --batch-size at a time, and report per tensor (real tokens "
        "only, padding left out) the SQNR (dB), cosine, max abs error and accumulator overflows over all of them; "
        "then quantize each op the config quantizes alone (all others float) and rank them by the final-layer "
        "SQNR they leave. A tensor with no error has an infinite SQNR: inf in the table and CSV, null in JSON.",
    )
    add_checkpoint(parser)
    parser.add_argument("--config", help="QuantConfig TOML (default: W8A8, per-channel weights, float "
                        f"non-linears); {qconfig.fields_help()}")
    parser.add_argument("--baseline", help="a second QuantConfig TOML ('default': the built-in W8A8 one) whose "
                        "per-tensor SQNR is shown beside the config's, with the change (delta_db)")
    parser.add_argument("--data", required=True, help="text file, one sentence per line, or a GLUE .tsv (its "
                        "sentence columns); each text cut to the model's positions and an MA-BERT approximator's n")
    parser.add_argument("--limit", type=positive_int, default=16, metavar="N", help="measure the first N "
                        f"sentences of --data (default 16); calibration runs on the first {CALIBRATION_SENTENCES} "
                        f"of them, {CALIBRATION_BATCH} at a time whatever --batch-size (as the sweep's, capped)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass, each "
                        "batch padded to its longest (default 32, as eval's); every figure is over all N sentences, "
                        "summed batch by batch (an SQNR is a ratio of sums, not a mean of the batches'); "
                        "MA-BERT's depend on the padding, which its approximator sees, and so do the overflow "
                        "counts, which count padded positions too")
    parser.add_argument("--top", type=positive_int, help=f"sensitivity rows shown (default {DEFAULT_TOP})")
    parser.add_argument("--no-sensitivity", action="store_true", help="skip the one-op-at-a-time ranking (of "
                        "the ops the config quantizes)")
    parser.add_argument("--plot", type=plot_file, help="write a bar chart of per-tensor SQNR here (.png, .svg, .pdf "
                        "...; tensors with no error drawn as high as the best finite bar, labelled '(exact)')")
    parser.add_argument("--format", choices=FORMATS, default="table", help="table or md: a titled table per "
                        "section (per tensor, then the sensitivity ranking); csv: one table, its first column "
                        "`section` per_tensor or sensitivity (a ranking row leaves the columns it lacks empty); json: "
                        "{title: rows} per section (default table)")
    add_output(parser, "write the report to FILE instead of standard output")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.no_sensitivity and args.top is not None:
        raise UserError("--top sets the sensitivity rows shown: it has no use with --no-sensitivity")
    from tqdm import tqdm

    from ..eval.tasks import token_limit
    from ..quant.calibrate import calibrate
    from ..quant.error import batched_tensor_errors, ranked_ops, sensitivity, with_baseline

    config = qconfig.load(args.config) if args.config else qconfig.QuantConfig()
    baseline = None
    if args.baseline:
        baseline = qconfig.QuantConfig() if args.baseline == "default" else qconfig.load(args.baseline)
    ck = checkpoint.load(args.ckpt)
    weights = ck.require_weights("quant-error")
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer")
    check_configs_for_model([config], args.config or "the default config", ck.spec)
    if baseline is not None:
        check_configs_for_model([baseline], args.baseline, ck.spec)
    texts = data_texts(args.data)[: args.limit]
    limit = token_limit(ck.spec, ck.spec.max_positions)  # the positions, and an MA approximator's n inputs
    runs = _runs(ck, weights, texts, args.batch_size, limit)  # padding: left out of every comparison
    calibrating = _runs(ck, weights, texts[:CALIBRATION_SENTENCES], CALIBRATION_BATCH, limit)

    def run_calibration(backend) -> None:
        for forward_batch, _ in tqdm(calibrating, desc="calibration", leave=False):
            forward_batch(backend)

    calibration = calibrate(run_calibration)

    def errors(cfg):
        return batched_tensor_errors(runs, cfg, calibration, progress=lambda it: tqdm(it, desc="per tensor",
                                                                                     leave=False))

    rows = errors(config)
    table = rows if baseline is None else with_baseline(rows, errors(baseline))
    sections = [("per_tensor", "per tensor" if baseline is None else f"per tensor (baseline: {args.baseline})", table)]
    if not args.no_sensitivity:
        ops = ranked_ops(rows, config)
        ranked = sensitivity(runs, config, calibration, ops,
                             progress=lambda it: tqdm(it, total=len(runs) * len(ops), desc="sensitivity", leave=False))
        top = args.top or DEFAULT_TOP
        sections.append(("sensitivity", f"sensitivity (final hidden state SQNR, op quantized alone; worst {top})",
                         ranked[:top]))
    emit(_report(sections, args.format), args.output)
    if args.plot:  # after the report, which a failed plot must not cost
        from ..report.quant_plots import plot_tensor_errors

        plot_tensor_errors(_chart_rows(rows), args.plot)
    return 0


def _runs(ck, weights, texts: list[str], batch_size: int, limit: int) -> list[tuple]:
    """(the forward of a batch, its attention mask) for `texts`, batch_size at a time."""
    batches = [tokenize_within(ck.tokenizer_dir, texts[i:i + batch_size], limit)
               for i in range(0, len(texts), batch_size)]
    return [(_forward(ck.spec, weights, batch), batch.attention_mask) for batch in batches]


def _forward(spec, weights, batch):
    """The run of one batch on a backend, returning its final hidden state."""
    def run(backend):
        out = forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
        return out.last_hidden_state

    return run


def _report(sections: list[tuple[str, str, list[dict]]], fmt: str) -> str:
    """sections: (name, title, rows). table and md: each section's table under its title; csv: one table, the
    section's name its first column (a spreadsheet or pandas reads one header); json: {title: rows}."""
    if fmt == "json":
        import json

        return json.dumps({title: _json_numbers(rows) for _, title, rows in sections}, indent=2, allow_nan=False)
    if fmt == "csv":
        return csv_table([{"section": name, **row} for name, _, rows in sections for row in rows])
    render = {"table": text_table, "md": markdown_table}[fmt]
    return "\n\n".join(f"{title}\n{render(rows)}" for _, title, rows in sections)


def _json_numbers(rows: list[dict]) -> list[dict]:
    """rows with non-finite numbers (an exact tensor's infinite SQNR, its change) as None: JSON has no
    Infinity or NaN, and json.dumps would write them as invalid tokens."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]


def _chart_rows(rows: list[dict]) -> list[dict]:
    """rows for the SQNR bar chart: a bar of infinite height is not drawn, so an exact tensor would look
    the worst; it is drawn as high as the best finite one, its label marked '(exact)'."""
    top = max((r["sqnr_db"] for r in rows if math.isfinite(r["sqnr_db"])), default=0.0)
    return [{**r, "tensor": f"{r['tensor']} (exact)", "sqnr_db": top} if r["sqnr_db"] == math.inf else r
            for r in rows]

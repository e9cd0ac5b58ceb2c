"""MiniLM-L6 on STS-B dev under int8 / fixed point -> reports/int8/ (README.md, CSV, PNG).

    OPENBLAS_NUM_THREADS=1 python analysis/int8_minilm.py [--data DIR (default ../shared/data)] [--subset 300]
        [--out DIR (default reports/int8)] [--report-only]

(one BLAS thread: on the shared 2-core machine multi-threaded OpenBLAS ran small GEMMs ~50x slower.)

Headline configurations run on the full dev set (1500 pairs); the scheme comparisons (granularity,
calibrators, non-linearities, residual bits, accumulator widths, bits 4..16) on the first --subset
pairs to fit the shared 2-core machine. Calibration: 128 sentences of STS-B train. Results are
appended as each configuration finishes, so a rerun resumes; each CSV's .run.json records what its rows
depend on (checkpoint, data file and its sha256, subset, calibration), and a rerun that differs is refused
before any work. residual_sqnr.csv: the per-tensor SQNR of the residual stream (adds, LayerNorms) with
per-tensor vs per-channel 8-bit scales (quant/error.py, real tokens of the first SQNR_SENTENCES dev
sentences), as `mabert-hw quant-error --baseline` reports it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from int8_report import fp32_reference, write_report
from tqdm import tqdm

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends import make_backend
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.cli.common import interruptible, positive_int, run_script, script_description, script_output_dir
from mabert_hw.errors import UserError
from mabert_hw.eval.sweep import (Job, config_key, done_keys, prepare_calibration, recorded_run, run_differences,
                                  run_record, run_sweep, write_run_record)
from mabert_hw.eval.tasks import TASK_FILES, load_stsb, resolve, stsb_spearman
from mabert_hw.inputs import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "int8"  # --out's default
CKPT = "minilm"  # the packaged all-MiniLM-L6-v2
RES16 = {"residual_bits": 16}
CHANNEL = {"residual_granularity": "channel"}  # 8-bit residual stream, one scale per hidden unit
RESIDUAL_GEMMS = "encoder.layer.*.output.dense"  # the GEMMs feeding the residual adders: attention.output.dense too
# ...and those GEMMs write per-channel codes: their per-column requantization multipliers take per-channel scales
CHANNEL_GEMM_OUT = {**CHANNEL, "rule": [{"name": RESIDUAL_GEMMS, "act_granularity": "channel"}]}
SQNR_SENTENCES = 32  # one batch of dev sentences for the per-tensor SQNR table
FINAL_SQNR_CONFIGS = {  # where the error left by per-channel residual scales sits (final hidden state SQNR)
    "all 8 bits, per tensor": {},
    "residual per channel": CHANNEL,
    "+ residual GEMMs' outputs per channel": CHANNEL_GEMM_OUT,
    "+ residual GEMMs' inputs at 16 bits": {**CHANNEL, "rule": [{"name": RESIDUAL_GEMMS, "act_bits": 16, "out_bits": 8}]},
    "+ every GEMM input at 16 bits": {**CHANNEL, "rule": [{"kind": "linear", "act_bits": 16, "out_bits": 8}]},
    "residual 16 bits, per tensor": RES16,
}


def residual_rules(**fields) -> list[dict]:
    """Rules giving the residual adds and LayerNorms `fields` (e.g. their own calibrator)."""
    return [{"kind": kind, **fields} for kind in ("add", "layernorm")]


BEST = {"calibrator": "percentile"}  # the scheme rows' calibrator, picked as the best 8-bit one on the subset's
# calibrator rows before the fixed-engine fix (349925a); mse now scores higher there (study.csv), and the rows
# keep percentile to compare with the headline's
HEADLINE = [
    {"weight_granularity": "channel"},
    BEST,
    {**BEST, "nonlinear": "integer"},
    RES16,
    {**BEST, **RES16},
    {"calibrator": "mse", **RES16},
    {**BEST, "nonlinear": "integer", **RES16},
    # the best on the full set with a 16-bit residual is mse: its integer-only row, and how few residual bits do
    {"calibrator": "mse", "nonlinear": "integer", **RES16},
    {"calibrator": "mse", "residual_bits": 12},
    {"calibrator": "mse", "residual_bits": 10},
    # all 8 bits with per-channel residual scales (config.py act_granularity); which tensor needs them
    CHANNEL,
    {"rule": [{"kind": "add", "act_granularity": "channel"}]},
    {"rule": [{"kind": "layernorm", "act_granularity": "channel"}]},
    # per-channel calibrators for the residual tensors only, mse everywhere, power-of-two (shift) scales
    {**CHANNEL, "rule": residual_rules(calibrator="percentile")},
    {**CHANNEL, "rule": residual_rules(calibrator="mse")},
    {"calibrator": "mse", **CHANNEL},
    {**CHANNEL, "rule": residual_rules(pow2=True)},
    # the GEMMs that feed the residual adders write per-channel codes too; integer-only non-linearities
    CHANNEL_GEMM_OUT,
    {**CHANNEL, "nonlinear": "integer"},
    {"nonlinear": "integer", "rule": [{"kind": "add", "act_granularity": "channel"}]},
    {**CHANNEL_GEMM_OUT, "nonlinear": "integer"},
]
# Cut to fit ~40 min of the shared 2-core CPU: BITS without 10 and 14; accumulator widths
# with one scheme; integer non-linearities with two calibrators.
BITS = (4, 6, 8, 12, 16)
STUDY = (
    [{"calibrator": c} for c in ("minmax", "percentile", "mse", "entropy")]
    + [{"calibrator": c, **RES16} for c in ("minmax", "percentile", "mse")]
    + [{**BEST, "residual_bits": r} for r in (10, 12)]
    + [{"weight_granularity": "tensor"}, {"weight_granularity": "tensor", **BEST}]
    + [{"calibrator": c, "nonlinear": "integer", **r} for c in ("minmax", "percentile") for r in ({}, RES16)]
    + [{**BEST, **RES16, "acc_bits": a} for a in (16, 20, 24)]
    + [{**BEST, "weight_bits": b, "act_bits": 16, **RES16} for b in BITS]
    + [{**BEST, "weight_bits": 8, "act_bits": b, **RES16} for b in BITS]
)


RESULTS = ("fp32.csv", "headline.csv", "study.csv", "residual_sqnr.csv", "final_sqnr.csv")  # what a run writes
# and --report-only renders (int8_report.py; with sweep24.csv, the notes *.md and the speed records when present)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=script_description(__doc__))
    parser.add_argument("--data", type=Path, default=DATA_DIR, metavar="DIR",
                        help=f"data root holding {TASK_FILES['stsb']} (evaluated) and train.tsv beside it "
                        "(calibration sentences) (default: ../shared/data beside the clone, or $MABERT_HW_DATA)")
    parser.add_argument("--subset", type=positive_int, default=300, metavar="N",
                        help="the scheme study's rows run on the first N dev pairs (default 300); the headline "
                        "rows always on all of them")
    parser.add_argument("--out", type=Path, default=OUT, metavar="DIR",
                        help=f"report folder, read and written (default {OUT.relative_to(ROOT)}); made if missing")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite README.md and the plot from the results already in --out (no model is run)")
    return run_script(parser, lambda args: run(args, parser), argv)


def run(args, parser: argparse.ArgumentParser) -> int:
    if args.report_only:
        if args.out.exists():
            script_output_dir(parser, args.out)  # refuses a file; a missing folder is said below, not made
        require_results(args.out, args.subset)
        write_report(args.out, args.subset, BITS, SQNR_SENTENCES)
        return 0
    dev = str(resolve(args.data / TASK_FILES["stsb"], "stsb"))  # a missing data root: one line, before any work
    out = script_output_dir(parser, args.out)
    return interruptible(parser.prog, lambda: study(out, dev, args.subset),
                         f"{out}'s CSVs keep every row finished (if any): run the same command to continue")


def study(out: Path, dev: str, subset: int) -> None:
    """The fp32 reference, the two sweeps, the SQNR tables and the report, each CSV continued where it
    stopped (appended row by row)."""
    ck = checkpoint.load(CKPT)

    def record(limit: int | None) -> dict:
        return run_record(CKPT, ck.spec.name, "stsb", dev, limit)

    same_runs({out / "fp32.csv": reference_record(record(None)), out / "study.csv": record(subset),
               out / "headline.csv": record(None), out / "residual_sqnr.csv": record(SQNR_SENTENCES),
               out / "final_sqnr.csv": record(SQNR_SENTENCES)})
    calibration = str(prepare_calibration(ck, "stsb", dev, CACHE_ROOT))

    reference = set(fp32_reference(out))
    for limit in (None, subset):  # the fp32 Spearman of each subset the tables compare against
        task = load_stsb(dev, limit)
        if len(task.scores) in reference:  # keyed by the pairs read: a --subset beyond the file is the whole file
            continue
        start = time.perf_counter()
        metric = stsb_spearman(ck, task, make_backend("reference"))
        append_reference(out / "fp32.csv", len(task.scores), metric, time.perf_counter() - start)
        reference.add(len(task.scores))
    for name, configs, limit in (("study.csv", STUDY, subset), ("headline.csv", HEADLINE, None)):
        done = done_keys(out / name)
        jobs = [Job(CKPT, "stsb", dev, limit, c, calibration) for c in configs if config_key(c) not in done]
        n_jobs = len(jobs)
        run_sweep(jobs, out / name, progress=lambda it, n=n_jobs, d=name: tqdm(it, total=n, desc=d))
    if not ((out / "final_sqnr.csv").exists() and (out / "residual_sqnr.csv").exists()):
        residual_sqnr(ck, dev, calibration, out)
    write_report(out, subset, BITS, SQNR_SENTENCES)


def reference_record(record: dict) -> dict:
    """What fp32.csv's rows depend on, of the full set's run_record: the checkpoint and the data file (its path
    and sha256); each row is keyed by its pair count. No calibration: the float reference backend runs."""
    return {k: record[k] for k in ("checkpoint", "model", "task", "data", "data_sha256")} | {"engine": "reference"}


def append_reference(path: Path, pairs: int, metric: float, seconds: float) -> None:
    """One fp32.csv row (the header first into an empty file)."""
    try:
        with open(path, "a", newline="") as f:
            if f.tell() == 0:
                f.write("pairs,metric,seconds\n")
            f.write(f"{pairs},{metric:.4f},{seconds:.1f}\n")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def same_runs(records: dict[Path, dict]) -> None:
    """Rows already in each file must come from this run (the same subset, data and calibration): a rerun with
    another --subset would otherwise keep them under the new subset's title, and one on other data would
    compare against the old data's fp32 reference. All are checked before any record is written."""
    for out, record in records.items():
        recorded = recorded_run(out) if out.is_file() and out.stat().st_size else None  # a record without rows
        if recorded is not None and run_differences(recorded, record):  # (an early Ctrl-C) binds nothing
            raise UserError(f"{out} holds another run's rows ({'; '.join(run_differences(recorded, record))}): "
                            "move it away or rerun with the same flags")
    for out, record in records.items():
        write_run_record(out, record)


def require_results(out: Path, subset: int) -> None:
    """--report-only renders a finished run: each of RESULTS in `out`, the study's rows of `subset` pairs."""
    for name in RESULTS:
        if not (out / name).is_file():
            raise UserError(f"{out / name} not found: --report-only renders a finished run's results "
                            "(run without it first, or give its --out)")
    recorded = recorded_run(out / "study.csv")
    if recorded is not None and recorded.get("limit") != subset:
        raise UserError(f"{out / 'study.csv'} holds the first {recorded.get('limit')} pairs' rows, not "
                        f"--subset {subset}'s: pass --subset {recorded.get('limit')}")


def residual_sqnr(ck, dev: str, calibration_path: str, out: Path) -> None:
    """Per-tensor SQNR of the residual stream's tensors, all 8 bits, per-tensor vs per-channel scales
    (residual_sqnr.csv), and the final hidden state's under FINAL_SQNR_CONFIGS (final_sqnr.csv)."""
    from mabert_hw.inputs import tokenize
    from mabert_hw.model import forward
    from mabert_hw.quant import config as qconfig
    from mabert_hw.quant.calibrate import Calibration
    from mabert_hw.quant.error import tensor_errors, with_baseline
    from mabert_hw.report.tables import csv_table

    batch = tokenize(ck.tokenizer_dir, load_stsb(dev, SQNR_SENTENCES).first)
    weights = ck.require_weights("int8 study")

    def run(backend):
        return forward(ck.spec, weights, batch.input_ids, backend, batch.attention_mask,
                       batch.token_type_ids).last_hidden_state

    calibration = Calibration.load(calibration_path)

    def errors(config: dict) -> list[dict]:
        return tensor_errors(run, qconfig.from_dict(config), calibration, batch.attention_mask)

    rows = with_baseline(errors(CHANNEL), errors({}))
    gemm_out = {r["tensor"]: r["sqnr_db"] for r in errors(CHANNEL_GEMM_OUT)}
    keep = [{"tensor": r["tensor"], "kind": r["kind"], "per_tensor_db": r["baseline_sqnr_db"],
             "per_channel_db": r["sqnr_db"], "delta_db": r["delta_db"],
             "per_channel_gemm_out_db": gemm_out[r["tensor"]]} for r in rows if r["kind"] in ("add", "layernorm")]
    write_text_whole(out / "residual_sqnr.csv", csv_table(keep))
    final = []
    for label, config in FINAL_SQNR_CONFIGS.items():
        last = [r for r in errors(config) if r["kind"] == "layernorm"][-1]  # the last hidden state (the pooler follows)
        final.append({"config": label, **{k: last[k] for k in ("tensor", "sqnr_db", "cosine")}})
    write_text_whole(out / "final_sqnr.csv", csv_table(final))


if __name__ == "__main__":
    sys.exit(main())

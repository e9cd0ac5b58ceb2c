"""`mabert-hw sweep`: task accuracy over the cartesian product of QuantConfig fields."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import checkpoint
from ..cache import CACHE_ROOT
from ..interrupts import stopped_status
from ..quant import config as qconfig
from ..report.tables import counted
from .common import (add_checkpoint, check_configs_for_model, output_file, plot_file, positive_int,
                     task_data_help)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="accuracy of the fixed backend over a grid of quantization configs (local pool or dask)",
        description="GRID is a TOML file mapping QuantConfig fields to lists of values (e.g. act_bits = "
        "[4, 6, 8]); every combination is evaluated and appended to OUT as soon as it finishes.",
    )
    add_checkpoint(parser)
    parser.add_argument("--task", choices=("stsb", "sst2"), required=True,
                        help="stsb: STS-B dev Spearman x 100; sst2: SST-2 dev accuracy")
    parser.add_argument("--data", required=True, help=task_data_help("stsb", "sst2"))
    parser.add_argument("--grid", required=True, help=f"TOML grid of QuantConfig fields ({qconfig.fields_help()}); "
                        "a field given a list of values is an axis of the grid (e.g. act_bits = [4, 8]), and every "
                        "configuration of the grid takes the same rules")
    parser.add_argument("--out", required=True, type=output_file,
                        help="results CSV (appended, one row per config); OUT.run.json beside it records the run")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT, skipping the configurations already in it; only the same run may be "
                        "continued: same checkpoint, task, data file (path and contents), --limit and calibration "
                        "(as recorded in OUT.run.json); the grid may differ")
    parser.add_argument("--workers", type=positive_int, default=1, help="local processes (default 1)")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address (runs there instead)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N examples")
    parser.add_argument("--plot", type=plot_file,
                        help="write the metric-vs-bits chart here when done (.png, .svg, .pdf ...)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..errors import UserError
    from ..eval.sweep import Job, config_key, done_keys, load_grid, prepare_calibration, run_record, run_sweep
    from ..eval.tasks import resolve

    points = load_grid(args.grid)
    out = Path(args.out)
    if out.exists() and out.stat().st_size and not args.resume:
        raise UserError(f"{out} exists: pass --resume to continue it, or choose another --out")
    done = done_keys(out) if args.resume else set()
    data = str(resolve(args.data, args.task))
    ck = checkpoint.load(args.ckpt)
    require_task(ck, args.task)
    check_configs_for_model([qconfig.from_dict(p) for p in points], args.grid, ck.spec)
    start_record(out, run_record(args.ckpt, ck.spec.name, args.task, data, args.limit), bool(done))
    todo = [p for p in points if config_key(p) not in done]
    print(f"{len(points)} configurations, {len(points) - len(todo)} already done", flush=True)
    if todo:
        try:  # from the calibration on: a resumed run's hint is worth giving there too
            calibration = str(prepare_calibration(ck, args.task, data, CACHE_ROOT))
            jobs = [Job(args.ckpt, args.task, data, args.limit, p, calibration) for p in todo]
            run_sweep(jobs, out, args.workers, args.scheduler,
                      progress=lambda it: tqdm(it, total=len(jobs), desc="sweep"))
        except KeyboardInterrupt as stop:
            return said_interrupted(out, done, stop)
    if args.plot:
        from ..report.quant_plots import plot_metric_vs_bits

        if not plot_metric_vs_bits(out, args.plot, "Spearman x 100" if args.task == "stsb" else "accuracy %"):
            print(f"no plot written to {args.plot}: no weight_bits / act_bits series with two or more points "
                  "among otherwise equal configurations", file=sys.stderr)
    return 0


def require_task(ck, task: str) -> None:
    """Refuse, before any work, a checkpoint that every configuration would fail on, as `eval` does."""
    from ..eval.tasks import require_sst2_classifier

    ck.require_weights("sweep")
    if task == "sst2":
        require_sst2_classifier(ck, "sweep")


def said_interrupted(out: Path, done: set[str], stop: KeyboardInterrupt) -> int:
    """Say what a Ctrl-C (or SIGTERM) kept: the rows finished before it, in this run and in the
    runs it continues (`done`), which --resume skips. Counted as --resume reads OUT (a row the interruption cut
    short is dropped)."""
    from ..eval.sweep import done_keys

    held = done_keys(out)
    kept = (f"{counted(len(held - done), 'configuration')} finished in this run, {len(held)} in all in {out}" if held
            else f"no configuration finished; {out} holds none")
    print(f"mabert-hw: interrupted: {kept}: run the same command with --resume to continue", file=sys.stderr)
    return stopped_status(stop)


def start_record(out: Path, record: dict, resuming: bool) -> None:
    """Write OUT's run record, after checking that the rows already in OUT (`resuming`) come from this run."""
    from ..errors import UserError
    from ..eval.sweep import record_path, recorded_run, run_differences, write_run_record

    recorded = recorded_run(out) if resuming else None
    if resuming and recorded is None:
        print(f"mabert-hw: warning: {out} has no {record_path(out).name} (an older sweep): cannot check that its "
              "rows come from the same run", file=sys.stderr)
    differences = run_differences(recorded, record) if recorded is not None else []
    if differences:
        raise UserError(f"{out} holds the results of another run; choose another --out. Differences: "
                        + "; ".join(differences))
    write_run_record(out, record)

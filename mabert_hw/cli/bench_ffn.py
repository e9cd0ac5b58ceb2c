"""`mabert-hw bench-ffn`: one FFN layer, FFF Numba walk vs dense FF vs NumPy and torch forms."""

from __future__ import annotations

import json
import os

from ..errors import UserError
from ..report.tables import FORMATS, figure, render
from .common import add_output, emit, int_between, positive_float, positive_int

MAX_DEPTH = 20  # 2^21 - 1 nodes of C floats each: beyond this the weights alone outgrow memory
PAPER_CPU_SPEEDUP = 78  # UltraFastBERT's CPU claim over an optimised dense FF: --target's default


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench-ffn",
        help="time one FFN layer: FFF conditional matmul vs dense FF (medians, interleaved rounds)",
        description="Times the FFF hard-path walk (Numba), a dense FF (BLAS GEMM + GELU + GEMM), a "
        "batched-gather NumPy FFF, torch dense / FFF-BMM and an io-floor (x read and y written with the "
        "walk's non-temporal stores, nothing computed; only when --hidden is a multiple of 16) on the same "
        "random tokens, interleaved "
        "round by round, and prints medians beside the theoretical MAC ratio. Load on a shared CPU "
        "moves every figure: the load average is printed with the result, and CPU time beside wall "
        "time (with --threads 1 the CPU-time ratio is the figure load moves least). Every format "
        "carries the threads, the agreement max-diffs and the load averages (csv as columns of each "
        "row; the machine and BLAS kernels only in table, md and json).",
    )
    parser.add_argument("--hidden", type=positive_int, default=768, help="C (default 768)")
    parser.add_argument("--depth", type=int_between(0, MAX_DEPTH), default=11,
                        help=f"FFF tree depth d, 0..{MAX_DEPTH} (default 11: 4095 nodes)")
    parser.add_argument("--trees", type=positive_int, default=1, help="parallel trees K (default 1)")
    parser.add_argument("--tokens", type=positive_int, default=16384, help="tokens M (default 16384)")
    parser.add_argument("--dense-width", type=positive_int, default=3072, help="dense FF width F (default 3072)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--threads", type=positive_int,
                        help="Numba and BLAS threads (default: one per core Numba sees; more are refused)")
    parser.add_argument("--target", type=positive_float, default=PAPER_CPU_SPEEDUP, metavar="RATIO",
                        help=f"the speed-up of the walk over the best dense FF to check (default {PAPER_CPU_SPEEDUP}, "
                        "UltraFastBERT's CPU claim): its time budget and whether it is met are reported")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch implementations")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    add_output(parser)
    parser.set_defaults(run=run)


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def run(args) -> int:
    from ..bench.ffn import Problem, check_agreement, implementations, summarize, target
    from ..bench.timing import THREADS_IDLE_S, blas_kernels, check_threads, time_calls
    from ..kernels.threads import set_threads
    from ..machine import describe

    if args.threads is not None:
        check_threads(args.threads)  # set_threads would quietly hold fewer: the record names the count held
    threads = set_threads(args.threads)
    if args.threads is not None and threads["numba_threads"] != args.threads:
        raise UserError(f"Numba can run {threads['numba_threads']} threads here (NUMBA_NUM_THREADS), "
                        f"not {args.threads}")
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            raise UserError("torch is not installed: pass --no-torch") from None
        torch.set_num_threads(threads["numba_threads"])
    problem = Problem(args.hidden, args.depth, args.trees, args.tokens, args.dense_width)
    impls = implementations(problem, with_torch=not args.no_torch)
    load_before = _load()
    maxdiff = check_agreement(impls)
    dense_maxdiff = check_agreement(impls, "dense-fast", "dense-numpy")
    samples = time_calls(impls, args.rounds, pause=THREADS_IDLE_S, rotate=False, progress=True, desc="rounds")
    seconds, cpu_seconds = samples.wall, samples.cpu
    rows = summarize(problem, seconds, cpu_seconds)
    facts = {"problem": problem.__dict__, "machine": describe(), "threads": threads, "blas": blas_kernels(),
             "rounds": args.rounds, "load_avg_before": load_before, "load_avg_after": _load(),
             "mac_ratio": problem.mac_ratio(), "walk": problem.walk(),
             "fff_numba_vs_numpy_maxdiff": maxdiff, "dense_fast_vs_numpy_maxdiff": dense_maxdiff,
             "target": target(rows, args.target)}
    if args.format == "json":
        text = json.dumps({**facts, "rows": rows, "seconds": seconds, "cpu_seconds": cpu_seconds}, indent=2)
    elif args.format == "csv":  # a plain table: the run's context repeated as columns of every row
        text = render([{**row, **run_columns(facts)} for row in rows], "csv")
    else:
        text = framed(render(rows, args.format), facts, "\n\n" if args.format == "md" else "\n", rows)
    emit(text, args.output)
    return 0


def run_columns(facts: dict) -> dict:
    """What csv rows need to be read alone: the threads, the agreement checks and the load averages
    (1, 5, 15 min, space-separated); the machine and BLAS kernels are in the table, md and json forms."""
    load = {f"load_avg_{when}": " ".join(map(str, facts[f"load_avg_{when}"])) for when in ("before", "after")}
    return {**facts["threads"], "fff_numba_vs_numpy_maxdiff": facts["fff_numba_vs_numpy_maxdiff"],
            "dense_fast_vs_numpy_maxdiff": facts["dense_fast_vs_numpy_maxdiff"], **load,
            "target_ratio": facts["target"]["ratio"], "target_met": facts["target"]["met"]}


def said_target(goal: dict) -> str:
    verdict = "met" if goal["met"] else "not met"
    return (f"target {goal['ratio']:g}x over the best dense FF ({goal['dense']}): the walk must take at most "
            f"{goal['budget_ms']:.3g} ms; fff-numba took {goal['fff_numba_ms']:.3g} ms, {goal['speedup']:.3g}x: "
            f"{verdict}")


def ceiling(rows: list[dict]) -> list[str]:
    """The io-floor row read as a bound: a kernel that reads x and writes y as the walk does (non-temporal
    stores) takes at least this long, so it gains at most the dense FF's time over it."""
    from ..bench.ffn import IO_FLOOR

    floor = next((row for row in rows if row["impl"] == IO_FLOOR), None)
    if floor is None:
        return []
    return [f"{IO_FLOOR}: x read and y written once with the walk's non-temporal stores, nothing computed, "
            f"{floor['median_ms']:.3g} ms: a kernel that reads and writes them so gains at most "
            f"{floor['speedup_vs_dense']:.3g}x over the dense FF here"]


def key_values(record: dict) -> str:
    """A record of the run's context as text: `key value` pairs, comma-separated (None read as unknown)."""
    return ", ".join(f"{key} {'unknown' if value is None else value}" for key, value in record.items())


def header(facts: dict) -> list[str]:
    """The lines above the table: sizes and rounds, then the machine, the threads and each BLAS library
    loaded, as `key value` text (the json format keeps them as objects)."""
    p = facts["problem"]
    return [f"FFN layer: C={p['hidden']} d={p['depth']} K={p['trees']} M={p['tokens']} tokens vs dense "
            f"F={p['dense_width']}; {facts['rounds']} interleaved rounds",
            f"machine: {key_values(facts['machine'])}",
            f"threads: {key_values(facts['threads'])}",
            f"BLAS: {'; '.join(key_values(library) for library in facts['blas']) or 'unknown'}"]


def framed(table: str, facts: dict, separator: str, rows: list[dict]) -> str:
    """The table (text or Markdown) between the run's context: sizes, machine, threads and BLAS above (header);
    the MAC ratio, agreement checks and load averages below (Markdown needs blank lines between paragraphs)."""
    return separator.join([
        *header(facts),
        table,
        f"theoretical MAC ratio dense/FFF: {figure(facts['mac_ratio'])}x; fff-numba vs fff-numpy-gather maxdiff "
        f"{facts['fff_numba_vs_numpy_maxdiff']:.2g}, "
        f"dense-fast vs dense-numpy {facts['dense_fast_vs_numpy_maxdiff']:.2g}",
        said_target(facts["target"]),
        *ceiling(rows),
        f"load average (1, 5, 15 min) before {facts['load_avg_before']}, after {facts['load_avg_after']}"])

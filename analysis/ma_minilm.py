"""MA-MiniLM-L6 study -> reports/ma_bert/ (README.md written by hand from results.json, CSV, PNG).

    mabert-hw convert minilm --out ~/.cache/mabert-hw/ma-minilm --data WIKI STSB_TRAIN ...  (see README)
    python analysis/ma_minilm.py [--ckpt ~/.cache/mabert-hw/ma-minilm] [--extra NAME=DIR ...] [--out DIR]

Measures on the converted checkpoint(s): STS-B dev Spearman (mean pooling, cosine) vs the baseline,
the softmax-approximation error on STS-B dev sentences, the op-count difference, the fast-engine
latency of MA vs baseline at MiniLM shapes B=8, T=128 (interleaved, medians), the training curve.

results.json keeps each Spearman with what it depends on (the model's digest: weights, spec and tokenizer;
the dev file's sha256 and the number of pairs; the engine): a later run reuses a score only where all of
them match, and recomputes it otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends import BACKENDS, make_backend
from mabert_hw.bench.timing import time_calls
from mabert_hw.cache import CACHE_ROOT as CACHE
from mabert_hw.cli import build_parser as cli_parser
from mabert_hw.cli.common import name_list, positive_int, run_script, script_description, script_output_dir
from mabert_hw.cli.softmax_error import check_teacher_shape
from mabert_hw.cost.counts import count_ops, model_ops
from mabert_hw.errors import UserError
from mabert_hw.eval.tasks import load_stsb, resolve, stsb_spearman
from mabert_hw.inputs import DATA_DIR, tokenize
from mabert_hw.interrupts import stopped_status
from mabert_hw.model import forward
from mabert_hw.report.ma_plots import plot_history
from mabert_hw.report.tables import csv_table

PROG = "ma_minilm.py"
OUT = Path(__file__).resolve().parents[1] / "reports" / "ma_bert"
BATCH_SIZE, MAX_LEN = 32, 128  # STS-B scoring as `mabert-hw eval --task stsb` does it by default
LATENCY_BATCH, LATENCY_TOKENS = 8, 128  # MiniLM shapes of the latency comparison
# engines that score a model: trace computes no values, fixed needs a calibration (`mabert-hw eval --engine fixed`)
ENGINES = [name for name in BACKENDS if name not in ("trace", "fixed")]
STUDY = ("baseline", "ma", "ma_with_exact_softmax")  # the names results.json scores the study's models under


def named_checkpoint(text: str) -> tuple[str, str]:
    name, _, source = text.partition("=")
    if not name or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, source


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=script_description(__doc__))
    parser.add_argument("--ckpt", default=str(CACHE / "ma-minilm"),
                        help="the MA checkpoint `mabert-hw convert` wrote (default ~/.cache/mabert-hw/ma-minilm, "
                        "as reports/ma_bert/README.md makes it)")
    parser.add_argument("--baseline", default="minilm", metavar="CKPT",
                        help="the baseline BERT the MA checkpoint was converted from: scored, the teacher of the "
                        "softmax error, timed and counted against it (default minilm)")
    parser.add_argument("--extra", nargs="*", type=named_checkpoint, default=[], metavar="NAME=DIR",
                        help="more converted checkpoints to score on STS-B dev, each under its NAME in results.json "
                        "(names other than baseline, ma, ma_with_exact_softmax)")
    parser.add_argument("--data", default=str(DATA_DIR),
                        help="the STS-B dev file, or a data root holding glue/STS-B/dev.tsv "
                        "(default ../shared/data, or $MABERT_HW_DATA)")
    parser.add_argument("--limit", type=positive_int, help="score only the first N STS-B dev pairs (default all 1500)")
    parser.add_argument("--softmax-rows", type=positive_int, default=4000,
                        help="query rows of the softmax-error comparison (`softmax-error --max-rows`; default 4000)")
    parser.add_argument("--reps", type=positive_int, default=5,
                        help="timed rounds per model and engine after one warm-up round (default 5)")
    parser.add_argument("--backend", choices=ENGINES, default="fast", help="engine of the STS-B scores (default fast)")
    parser.add_argument("--latency-backends", type=name_list(ENGINES, "engine"), default="fast,reference",
                        help="engines to time MA vs baseline in (comma-separated; default fast,reference)")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure only the latency (results.json's latency_ms)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="report folder: results.json, op_counts.csv, softmax_error*, training_loss.png "
                        "(default reports/ma_bert)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    return run_script(parser, lambda args: run(checked(parser, args)), argv)


def checked(parser: argparse.ArgumentParser, args):
    """The checks argparse cannot make one flag at a time, then --out made: all before any work."""
    names = [name for name, _ in args.extra]
    taken = [name for name in names if name in STUDY or names.count(name) > 1]
    if taken:
        parser.error(f"argument --extra: the name {taken[0]!r} is taken (by the study: {', '.join(STUDY)}; "
                     "or given twice)")
    script_output_dir(parser, args.out)
    return args


def run(args) -> int:
    try:
        study(args)
    except KeyboardInterrupt as stop:
        print(f"{PROG}: interrupted; {args.out / 'results.json'} keeps the scores finished", file=sys.stderr)
        return stopped_status(stop)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def study(args) -> None:
    ma, base = checkpoint.load(args.ckpt), checkpoint.load(args.baseline)
    check_models(base, ma)
    for name in {args.backend, *args.latency_backends}:
        make_backend(name)  # an engine whose package is missing, refused before any work
    data = resolve(args.data, "stsb")
    task = load_stsb(data, args.limit)
    timed = load_stsb(data, LATENCY_BATCH).first  # the same batch whatever --limit says
    if len(timed) < LATENCY_BATCH:
        raise UserError(f"{data}: the latency batch takes the first {LATENCY_BATCH} dev sentences; it has {len(timed)}")
    results = read_results(args.out / "results.json")
    if not args.latency_only:
        extras = [(name, checkpoint.load(source)) for name, source in args.extra]
        score_all(args, results, base, ma, extras, task, data)
        softmax_error(args, task)
        write_text_whole(args.out / "op_counts.csv", csv_table(op_counts(base.spec, ma.spec)))
    results["latency_ms"] = latencies(base, ma, timed, args.reps, args.latency_backends)
    if not args.latency_only:
        results |= training(Path(args.ckpt), args.out)
    write_text_whole(args.out / "results.json", json.dumps(results, indent=2))


def check_models(base, ma) -> None:
    """What the study needs of its two models, checked before the minutes of scoring: weights, an MA checkpoint
    with approximators, the baseline it was converted from (softmax-error's teacher), room for B=8, T=128."""
    for ck in (base, ma):
        ck.require_weights(PROG)
    if ma.spec.variant.softmax != "mlp":
        raise UserError(f"{ma.source} has no softmax approximator (variant {ma.spec.variant.describe()}): "
                        "give a checkpoint `mabert-hw convert` wrote")
    if not base.spec.variant.is_baseline:
        raise UserError(f"baseline {base.source} is not a baseline BERT (variant {base.spec.variant.describe()})")
    check_teacher_shape(ma.spec, base)
    for ck in (base, ma):
        widest = ck.spec.max_positions
        if ck.spec.variant.softmax == "mlp":
            widest = min(widest, ck.spec.variant.softmax_input)
        if widest < LATENCY_TOKENS:
            raise UserError(f"{ck.source} takes at most {widest} tokens; the latency is timed at T={LATENCY_TOKENS}")


def read_results(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}; fix or delete it") from None
    if not isinstance(results, dict) or not isinstance(results.get("stsb_spearman", {}), dict):
        raise UserError(f"{path}: not a results.json of this script (expected an object with an stsb_spearman object)")
    return results


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_all(args, results: dict, base, ma, extras: list, task, data: Path) -> None:
    """STS-B dev Spearman of each model, written to results.json after each (a Ctrl-C keeps those finished)."""
    # the same MA weights with the exact softmax (and HF's additive mask) in place of the approximator
    exact = replace(ma, spec=ma.spec.with_variant(softmax="exact", mask="additive"))
    models = [("baseline", args.baseline, base), ("ma", args.ckpt, ma),
              ("ma_with_exact_softmax", f"{args.ckpt} ({exact.spec.variant.describe()})", exact)]
    models += [(name, source, ck) for (name, source), (_, ck) in zip(args.extra, extras)]
    scores = results.setdefault("stsb_spearman", {})
    data_sha256 = sha256(data)
    for name, label, ck in models:
        key = {"model": ck.hasher().hexdigest(), "pairs": len(task.scores), "data_sha256": data_sha256,
               "backend": args.backend, "batch_size": BATCH_SIZE, "max_len": MAX_LEN}
        cached = scores.get(name)
        if isinstance(cached, dict):
            changed = stale(cached, key)
            if not changed:
                print(f"STS-B dev Spearman {name}: {cached['spearman']:.2f} (from results.json)")
                continue
            print(f"{PROG}: stsb_spearman {name} in results.json is stale ({'; '.join(changed)}): recomputing",
                  file=sys.stderr)
        value, seconds = spearman(ck, task, args.backend)
        scores[name] = {"spearman": value, "pairs": len(task.scores), "seconds": seconds, "source": label,
                        "data": str(data.resolve()), **key}
        print(f"STS-B dev Spearman {name}: {value:.2f}")
        write_text_whole(args.out / "results.json", json.dumps(results, indent=2))


def stale(cached: dict, key: dict) -> list[str]:
    """How a cached score's record differs from what it would be computed with now (nothing: reusable)."""
    changed = []
    for field, value in key.items():
        if field not in cached:
            changed.append(f"no {field} recorded")
        elif cached[field] != value:
            changed.append(f"{field} differs" if field in ("model", "data_sha256") else
                           f"{field} {cached[field]} -> {value}")
    return changed


def spearman(ck, task, backend_name: str) -> tuple[float, float]:
    started = time.perf_counter()
    value = stsb_spearman(ck, task, make_backend(backend_name), batch_size=BATCH_SIZE, max_len=MAX_LEN)
    return value, time.perf_counter() - started


def softmax_error(args, task) -> None:
    """`mabert-hw softmax-error` on the dev sentences (its tables and plots into --out, its text into
    softmax_error.txt); the sentences go through a file of this run's own, which no other run replaces."""
    with tempfile.TemporaryDirectory(prefix="ma_minilm-") as folder:
        sentences = Path(folder) / "stsb_dev_sentences.txt"
        sentences.write_text("\n".join(task.first) + "\n")
        command = cli_parser().parse_args(
            ["softmax-error", args.ckpt, "--data", str(sentences), "--teacher", args.baseline, "--max-rows",
             str(args.softmax_rows), "--pad-to", "64", "128", "--output-dir", str(args.out)])
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            command.run(command)  # its UserError is this script's one-line error
    write_text_whole(args.out / "softmax_error.txt", captured.getvalue())
    print(captured.getvalue())


def latency(ck_base, ck_ma, texts: list[str], reps: int, backend_name: str) -> dict:
    """Interleaved runs at B=8, T=128 on real sentences padded to 128 tokens; medians in ms.

    Real text, not random ids: random ids drive MA-MiniLM's hidden states to inf/NaN from layer 4, and
    non-finite (or denormal) floats run at a different speed, which would time the wrong thing.
    """
    batch = tokenize(ck_base.tokenizer_dir, texts[:LATENCY_BATCH], LATENCY_TOKENS)
    backend = make_backend(backend_name)  # one backend for every timed call, as bench's engines have

    def call(ck):
        return lambda: np.asarray(forward(ck.spec, ck.weights, batch.input_ids, backend, batch.attention_mask,
                                          batch.token_type_ids).last_hidden_state).sum()

    # one warm-up call each (numba compilation, caches), then `reps` interleaved rounds
    runs = time_calls({"baseline": call(ck_base), "ma": call(ck_ma)}, reps, warmup=1).wall
    return {name: 1e3 * statistics.median(times) for name, times in runs.items()} | {"reps": reps}


def latencies(ck_base, ck_ma, texts: list[str], reps: int, backends: list[str]) -> dict:
    """{backend: {baseline, ma, ma_over_baseline, reps, load_average}} for each backend."""
    out = {}
    for backend_name in backends:
        load = os.getloadavg()[0]
        times = latency(ck_base, ck_ma, texts, reps, backend_name)
        out[backend_name] = times | {"ma_over_baseline": times["ma"] / times["baseline"], "load_average": load}
        print(f"latency, {backend_name} engine: {out[backend_name]}")
    return out


def op_counts(spec_base, spec_ma) -> list[dict]:
    rows = []
    for name, spec in (("baseline", spec_base), ("ma", spec_ma)):
        profile = count_ops(model_ops(spec, LATENCY_BATCH, LATENCY_TOKENS))
        rows.append({"model": name, "macs": profile.total("macs"), **dict(profile.elementwise())})
    return rows


def training(ckpt: Path, out: Path) -> dict:
    """The knowledge-transfer curve (training_loss.png) and its record, where `convert` left a history.json."""
    history_path = ckpt / "history.json"
    if not history_path.exists():
        return {}
    history = json.loads(history_path.read_text())
    if not history:
        return {}
    plot_history(history, out / "training_loss.png")
    conversion = json.loads((ckpt / "config.json").read_text()).get("conversion")
    return {"training": {"steps_done": len(history), "last": history[-1], "conversion": conversion}}


if __name__ == "__main__":
    sys.exit(main())

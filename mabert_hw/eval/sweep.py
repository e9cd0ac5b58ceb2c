"""Accuracy sweeps over QuantConfig grids: runner and an append-only CSV result store.

A grid (TOML) maps QuantConfig fields to lists of values (a scalar is a one-value list); the sweep is
their cartesian product. Each finished configuration is appended to the CSV and flushed at once, so a
killed sweep loses at most the configurations in flight; `done_keys` lets --resume skip the rest. A row's
key is its QuantConfig only, so the JSON record beside the CSV (`run_record`) holds what else the metric
depends on (checkpoint, task, data, limit, calibration), and a resumed sweep must match it.
Configurations run in a local process pool, or on a dask.distributed cluster given its address
(or a dask Client). Calibration runs once, before the pool, and travels with each job.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..atomic import atomic_write, write_text_whole
from ..cache import file_safe
from ..errors import UserError
from ..inputs import read_toml
from ..interrupts import default_sigterm, sigterm_interrupts
from ..quant import config as qconfig
from ..quant.config import CALIBRATION_SENTENCES, SWEEP_CALIBRATION_BATCH
from ..quant.calibrate import Calibration, calibrate
from ..report.tables import read_csv_rows
from .tasks import load_sst2, load_stsb, run_batches, sst2_accuracy, stsb_spearman

# 2: per-channel statistics (calibrate.py); in the cache file name so older files are not reused
CALIBRATION_VERSION = 2
COLUMNS = ("key", "metric", "seconds", "overflows")


@dataclass(frozen=True)
class Job:
    ckpt: str
    task: str
    data: str
    limit: int | None
    config: dict
    calibration_path: str
    batch_size: int = 32


def load_grid(path: str | Path) -> list[dict]:
    grid = read_toml(path, "grid")
    if not grid:  # else the product of no axes is one point, the defaults: most likely a mistaken file
        raise UserError(f"{path}: no QuantConfig field and no rule; give at least one (e.g. act_bits = [4, 8])")
    base_rules = grid.pop("rule", [])
    axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    empty = [k for k, values in axes.items() if not values]
    if empty:
        raise UserError(f"{path}: {', '.join(f'{k} = []' for k in empty)}: give each field at least one value")
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    for point in points:
        qconfig.from_dict({**point, "rule": base_rules}, str(path))  # validate every point up front
        if base_rules:
            point["rule"] = base_rules
    _refuse_repeats(axes, path)
    return points


def _refuse_repeats(axes: dict[str, list], path) -> None:
    """A value given twice on an axis (act_bits = [8, 8], or percentile = [99, 99.0]: one config) would
    evaluate the same configurations twice and write their rows twice."""
    repeated = [k for k, values in axes.items() if any(v in values[:i] for i, v in enumerate(values))]
    if repeated:
        raise UserError(f"{path}: {', '.join(f'{k} = {axes[k]}' for k in repeated)}: a value is repeated; "
                        "give each value once")


def config_key(config: dict) -> str:
    """A row's key. Number fields are written as floats, so that percentile = 99 and 99.0 (one config)
    get one key, and a resumed sweep whose grid spells it the other way skips it."""
    numbers = {k: float(v) for k, v in config.items() if qconfig.SETTING_TYPES.get(k) is float}
    return json.dumps({**config, **numbers}, sort_keys=True, separators=(",", ":"))


def done_keys(out: str | Path) -> set[str]:
    """Keys of the rows in `out`, for --resume; a row cut short by a killed sweep is dropped first."""
    path = Path(out)
    if not path.exists():
        return set()
    try:
        with open(path, newline="") as f:  # the header is checked before anything is cut: a foreign file stays whole
            fieldnames = csv.DictReader(f).fieldnames
        if fieldnames is not None and "key" not in fieldnames:
            raise UserError(f"{path} is not a sweep output (no 'key' column): choose another --out")
        _drop_partial_row(path)
        with open(path, newline="") as f:
            return {_current_key(row["key"]) for row in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read {path} as a sweep output: {error}") from None


def _drop_partial_row(path: Path) -> None:
    """Cut the file after its last newline. csv rows end with one, so bytes after it are a row whose
    write a kill interrupted: the next append would continue that line and merge two rows into one
    (the cut configuration is run again, as its row is not in the file)."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with open(path, "r+b") as f:
            f.truncate(whole)


def _current_key(key: str) -> str:
    """A stored key as config_key writes it now (rows from before it wrote number fields as floats hold
    percentile = 99 as 99); a key that is no config's JSON stays as it is."""
    try:
        config = json.loads(key)
    except (TypeError, ValueError):  # TypeError: a short row's missing key (None)
        return key
    return config_key(config) if isinstance(config, dict) else key


def record_path(out: str | Path) -> Path:
    """The JSON beside a results CSV recording what its numbers depend on (`run_record`)."""
    out = Path(out)
    return out.with_name(out.name + ".run.json")


def run_record(ckpt: str, model: str, task: str, data: str | Path, limit: int | None) -> dict:
    """Everything besides the QuantConfig that a row's metric depends on: a resumed sweep must match it."""
    data = Path(data).resolve()
    checkpoint = str(Path(ckpt).resolve()) if Path(ckpt).exists() else ckpt  # a preset or alias stays a name
    return {"checkpoint": checkpoint, "model": model, "task": task, "data": str(data),
            "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "limit": limit,
            "calibration": str(calibration_source(data).resolve()), "calibration_version": CALIBRATION_VERSION,
            "calibration_sentences": CALIBRATION_SENTENCES, "batch_size": Job.batch_size}


def recorded_run(out: str | Path) -> dict | None:
    """The run record beside `out`; None when there is none (a results file from before records existed)."""
    path = record_path(out)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a run record (a JSON object): delete it to resume without the check")
    return record


def run_differences(recorded: dict, record: dict) -> list[str]:
    return [f"{k}: {recorded.get(k)!r} before, {record[k]!r} now" for k in record if recorded.get(k) != record[k]]


def write_run_record(out: str | Path, record: dict) -> None:
    write_text_whole(record_path(out), json.dumps(record, indent=2) + "\n")


def append_result(out: str | Path, row: dict, fields: list[str]) -> None:
    """Append one row (flushed). The file's own header rules: a row with fields it lacks (a resumed
    sweep over a grid with other fields) rewrites the file once with the widened header. A write that
    fails (a full disk, a file made read-only meanwhile) stops the sweep in one line."""
    path = Path(out)
    try:
        _append_row(path, row, fields)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error}") from None


def _append_row(path: Path, row: dict, fields: list[str]) -> None:
    header = []
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    wanted = [k for k in fields if k in row or k in COLUMNS]
    if header and not set(wanted) <= set(header):
        old_rows = read_csv_rows(path)
        header = header + [k for k in wanted if k not in header]
        with atomic_write(path, newline="") as f:
            csv.DictWriter(f, fieldnames=header).writeheader()
            csv.DictWriter(f, fieldnames=header).writerows(old_rows)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or wanted, extrasaction="ignore")
        if not header:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def calibration_source(data: str | Path) -> Path:
    """Where calibration sentences come from: the task's train split when present (not the evaluated dev set)."""
    data = Path(data)
    train = data.parent / "train.tsv" if data.is_file() else None
    return train if train and train.exists() else data


def calibration_texts(task: str, data: str | Path, n: int = CALIBRATION_SENTENCES) -> list[str]:
    """Calibration sentences, from `calibration_source`."""
    source = calibration_source(data)
    if task == "stsb":
        pairs = load_stsb(source, limit=n // 2)
        return pairs.first + pairs.second
    return load_sst2(source, limit=n).sentences


def prepare_calibration(ck, task: str, data: str | Path, cache: Path, seed: int = 0) -> Path:
    """The calibration of `ck` on `task`'s calibration texts, computed once and cached under `cache`. The
    file name holds a digest of everything the ranges depend on (the spec, the weights, the tokenizer's
    files and the texts), so a model in another folder of the same name, another config beside the same
    weights, or other data gets its own file."""
    texts = calibration_texts(task, data)
    digest = ck.hasher()
    digest.update("\n".join(texts).encode())
    path = cache / (f"calibration-{file_safe(ck.spec.name)}-{task}-{len(texts)}-{seed}-{digest.hexdigest()}"
                    f"-v{CALIBRATION_VERSION}.npz")
    if not path.exists():
        try:  # before the work: a cache that cannot be written is said in one line before calibrating, not after
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as error:
            raise UserError(f"cannot write to the cache directory {path.parent}: {error}") from None
        calibrate(lambda b: run_batches(ck, texts, b, batch_size=SWEEP_CALIBRATION_BATCH), seed).save(path)
    return path


def evaluate(job: Job) -> dict:
    """Run one configuration; returns a result row (runs in a worker process)."""
    from .. import checkpoint
    from ..backends.fixed import FixedBackend

    ck = checkpoint.load(job.ckpt)
    backend = FixedBackend(config=qconfig.from_dict(job.config), calibration=Calibration.load(job.calibration_path))
    start = time.perf_counter()
    if job.task == "stsb":
        metric = stsb_spearman(ck, load_stsb(job.data, job.limit), backend, batch_size=job.batch_size)
    else:
        metric = sst2_accuracy(ck, load_sst2(job.data, job.limit), backend, batch_size=job.batch_size)
    row = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in job.config.items()}
    row.update(key=config_key(job.config), metric=round(metric, 4), seconds=round(time.perf_counter() - start, 2),
               overflows=sum(backend.overflows.values()))
    return row


def run_sweep(jobs: list[Job], out: str | Path, workers: int = 1, scheduler=None,
              progress: Callable[[Iterable], Iterable] | None = None, connect_timeout: float = 30) -> list[dict]:
    """Evaluate jobs (those already in `out` should be filtered by the caller), appending each row.
    `scheduler`: a dask Client or a scheduler address, given `connect_timeout` seconds to answer.
    A job that fails does not stop the others (they are independent, and may be hours of work): every
    row that finishes is appended, and the failures are then reported together in one line."""
    fields = list(COLUMNS) + sorted({k for j in jobs for k in j.config})
    rows, failures = [], []
    with ExitStack() as stack:  # the local pool is shut down however the loop ends
        # SIGTERM ends the loop as Ctrl-C does, and the ExitStack stops a local pool's workers (killed by
        # default, the process would leave them running, idle, holding its output pipe) or closes the dask
        # client. Entered first, so left last: a second SIGTERM during that cleanup is still taken as Ctrl-C
        stack.enter_context(sigterm_interrupts())
        outcomes = _outcomes(jobs, workers, scheduler, connect_timeout, stack)
        for job, row in progress(outcomes) if progress else outcomes:
            if isinstance(row, Exception):
                failures.append(f"{config_key(job.config)}: {type(row).__name__}: {' '.join(str(row).split())}")
                continue
            append_result(out, row, fields)
            rows.append(row)
    if failures:
        raise UserError(f"{len(failures)} of {len(jobs)} configurations failed (their rows are not in the output): "
                        + "; ".join(failures))
    return rows


def _outcomes(jobs: list[Job], workers: int, scheduler, connect_timeout: float,
              stack: ExitStack) -> Iterable[tuple[Job, dict | Exception]]:
    """(job, its row or the exception it raised) for each job, as each finishes."""
    if scheduler is not None:
        from dask.distributed import Client, as_completed

        if isinstance(scheduler, Client):
            client = scheduler
        else:  # ours to close, however the loop ends: its futures are then released on the cluster
            client = _connect(scheduler, connect_timeout)
            stack.callback(client.close)
        futures = dict(zip(client.map(evaluate, jobs, pure=False), jobs))
    elif workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(workers, initializer=default_sigterm)  # forked with this process's handler
        stack.push(partial(_shut_down, pool))
        others = set(multiprocessing.active_children())
        futures = {pool.submit(evaluate, job): job for job in jobs}  # starts the workers
        stack.push(partial(_stop_workers_on_error, set(multiprocessing.active_children()) - others))
    else:
        return (_outcome(job, lambda job=job: evaluate(job)) for job in jobs)
    return (_outcome(futures[future], future.result) for future in as_completed(list(futures)))


def _shut_down(pool, exc_type, exc, traceback) -> bool:
    """A loop that finished waits for its idle workers to exit: left running at interpreter exit, they race
    the executor's exit hook ("OSError: Bad file descriptor", printed as an ignored exception). After Ctrl-C
    or an error, the queued jobs are cancelled without waiting (the running ones got the signal)."""
    pool.shutdown(wait=exc_type is None, cancel_futures=True)
    return False


def _stop_workers_on_error(workers, exc_type, exc, traceback) -> bool:
    """After an interrupted or failed loop, terminate the pool's workers, whose running jobs would otherwise
    keep the process from exiting (only Ctrl-C reaches them by itself: it signals the whole process group)."""
    if exc_type is not None:
        for worker in workers:
            worker.terminate()
    return False


def _outcome(job: Job, result: Callable[[], dict]) -> tuple[Job, dict | Exception]:
    try:
        return job, result()
    except Exception as error:  # one configuration's failure, reported by run_sweep once the others are done
        return job, error


def _connect(address: str, timeout: float):
    from dask.distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, ValueError) as error:  # ValueError: a malformed address
        raise UserError(f"cannot reach the dask scheduler at {address}: {error}") from None

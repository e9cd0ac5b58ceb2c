"""Review fixes in inputs, check, bench-ffn and emit: a tokenizer file `tokenizers` cannot load is a
one-line error, `check` picks a default length an MA-BERT checkpoint accepts, bench-ffn's table and md
name the machine as its help says, an interrupted --output write leaves no temporary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.inputs import tokenize

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


# --- 1: a malformed tokenizer file was a traceback (tokenizers' bare Exception, or TypeError)


def test_a_word_piece_vocabulary_tokenizes_to_its_line_numbers(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    batch = tokenize(tmp_path, ["hello world", "world"])
    assert batch.input_ids.tolist() == [[2, 4, 5, 3], [2, 5, 3, 0]]  # [CLS] ... [SEP] [PAD]: vocab line numbers
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("name,data", [
    ("tokenizer.json", b'{"version": "1.0", "trunc'),  # cut short
    ("vocab.txt", b"\xff\xfe\x00not utf-8"),
    ("vocab.txt", "\n".join(v for v in VOCAB if v != "[SEP]").encode()),  # no [SEP]
])
def test_a_tokenizer_file_that_cannot_be_loaded_is_a_user_error(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=f"{tmp_path / name}: not a tokenizer file"):
        tokenize(tmp_path, ["hello world"])


def test_check_with_a_broken_tokenizer_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert main(["check", str(tmp_path)]) == 2
    assert error_line(capsys).startswith(f"mabert-hw: error: {tmp_path / 'tokenizer.json'}: not a tokenizer file")


# --- 2: check's default random length (64) exceeded a small MA-BERT approximator, so it failed on defaults


def test_check_default_length_fits_the_model():
    from mabert_hw.cli.check import default_random_length
    from mabert_hw.spec import VARIANTS, ModelSpec

    spec = ModelSpec("t", vocab_size=50, hidden=24, layers=1, heads=3, intermediate=40, max_positions=512)
    assert default_random_length(spec) == 64
    assert default_random_length(spec.with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": 16})) == 16
    assert default_random_length(spec.with_variant(**VARIANTS["ma"].__dict__)) == 64  # n = 128: 64 fits
    short = ModelSpec("t", vocab_size=50, hidden=24, layers=1, heads=3, intermediate=40, max_positions=40)
    assert default_random_length(short) == 40


def test_check_runs_an_ma_checkpoint_without_flags(tmp_path, capsys):
    pytest.importorskip("torch")
    from .test_ma_model import random_official_state, save_official, tiny_ma

    spec = tiny_ma(False, n=16)  # 40 positions: the old default was min(64, 40) = 40 > n
    path = save_official(tmp_path, spec, random_official_state(spec))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "random ids 4 x 16 " in out and "OK" in out


# --- 3: bench-ffn's help says table and md carry the machine; only json did


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_bench_ffn_table_and_md_name_the_machine(capsys, monkeypatch, fmt):
    pytest.importorskip("numba")
    from mabert_hw import machine

    monkeypatch.setattr(machine, "describe", lambda: {"cpu": "Review CPU 9000", "cores": 3})
    assert main(["bench-ffn", "--hidden", "16", "--depth", "1", "--tokens", "8", "--dense-width", "16",
                 "--rounds", "1", "--threads", "1", "--no-torch", "--format", fmt]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "'cpu': 'Review CPU 9000', 'cores': 3" in first


# --- 4: Ctrl-C while --output was written left FILE.tmp (only OSError removed it)


def test_an_interrupted_output_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from mabert_hw.cli.common import emit

    out = tmp_path / "report.csv"
    out.write_text("old\n")

    def interrupted(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        emit("new", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]
    assert out.read_text() == "old\n"


# metric-vs-bits plot: a grid with no bit series writes no empty chart

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


# a default --seq-len beyond the model's positions: the error says which length to pass

def test_default_seq_len_beyond_the_positions_names_the_length_to_pass(tmp_path, capsys):
    config = {"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 40}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["profile", str(tmp_path / "config.json")]) == 2  # profile's default T is 128 > 40
    assert error_line(capsys).endswith("exceeds the model's 40 positions: use --seq-len 40 or less")

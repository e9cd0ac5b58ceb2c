"""Bad user input to `convert` and `softmax-error`: one-line errors (exit 2), checked before the work."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mabert_hw.cli import main
from mabert_hw.spec import ModelSpec

from .helpers import error_line, refused, save_bert, write_tiny

SMALL = ["--softmax-input", "32", "--softmax-hidden", "8", "--max-len", "24", "--batch", "2", "--prefit-steps", "2"]


@pytest.fixture(scope="module")
def ma16(tmp_path_factory, teacher_dir, corpus):
    """An MA checkpoint from our own convert whose approximators take n = 16 inputs (no training)."""
    out = tmp_path_factory.mktemp("ma16")
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input", "16",
                 "--softmax-hidden", "8", "--max-len", "16", "--steps", "0", "--prefit-steps", "0"]) == 0
    return out


def convert(teacher_dir, out, data, *extra) -> int:
    return main(["convert", str(teacher_dir), "--out", str(out), "--data", str(data), *SMALL, *extra])


@pytest.mark.parametrize("name, content, message", [
    ("empty.tsv", b"", "is empty: expected a header line"),
    ("short.tsv", b"label\tsentence\n1\tfine\n0\n", "line 3: 1 of the header's 2 tab-separated fields"),
    ("latin1.txt", b"fine\ncaf\xe9 au lait\n", "line 2: not UTF-8 text"),
    ("blank.txt", b"\n  \n = Heading = \n", "holds no text"),
    ("header-only.tsv", b"sentence\tlabel\n", "holds no text under its header"),  # was "no texts to tokenise"
])
def test_bad_data_file_is_named_in_one_line(tmp_path, capsys, teacher_dir, name, content, message):
    data = tmp_path / name
    data.write_bytes(content)
    assert convert(teacher_dir, tmp_path / "out", data) == 2
    err = capsys.readouterr().err
    assert err.startswith("mabert-hw: error: ") and str(data) in err and message in err


def test_data_directory_is_named_a_directory(tmp_path, capsys, teacher_dir):
    assert convert(teacher_dir, tmp_path / "out", tmp_path) == 2  # was "no such data file"
    err = capsys.readouterr().err
    assert err == f"mabert-hw: error: --data {tmp_path} is a directory: give its text or TSV files\n"


def test_out_that_cannot_be_a_directory_is_refused_before_the_work(tmp_path, capsys, teacher_dir):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    missing_data = tmp_path / "no-such.txt"  # read after --out is checked: its error would mean --out passed
    assert convert(teacher_dir, plain, missing_data) == 2
    assert f"{plain} exists and is not a directory" in capsys.readouterr().err
    assert convert(teacher_dir, plain / "sub", missing_data) == 2
    assert f"cannot create directory {plain / 'sub'}" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "nan", "expected a finite number"),
    ("--lr", "0", "expected a positive number"),
    ("--steps", "-5", "expected a non-negative integer"),
    ("--prefit-steps", "-3", "expected a non-negative integer"),
    ("--max-minutes", "-1", "expected a non-negative number"),
    # was a one-line error without the usage, after the flags were parsed
    ("--max-len", "1", "expected an integer of at least 2 (room for [CLS] and [SEP]), got 1"),
])
def test_bad_numbers_are_argparse_errors(tmp_path, capsys, teacher_dir, corpus, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        convert(teacher_dir, tmp_path / "out", corpus, flag, value)
    assert exit_.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_diverging_loss_is_a_user_error_and_keeps_the_saved_state(tmp_path, capsys, teacher_dir, corpus):
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--lr", "1e30", "--steps", "3", "--checkpoint-every", "1") == 2
    err = capsys.readouterr().err
    assert "training diverged at step 2 (loss nan)" in err and "lower --lr than 1e+30" in err
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not (out / "config.json").exists()  # no nan model written over the output


@pytest.mark.parametrize("changed, message", [
    (["--softmax-input", "24"], "--softmax-input 32 (this run: 24)"),
    (["--only", "approximator"], "--only not given (this run: approximator)"),
])
def test_resume_with_other_model_shaping_flags_lists_them(tmp_path, capsys, teacher_dir, corpus, changed, message):
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume", *changed) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mabert-hw: error: {out / 'train_state.pt'} was written with other model-shaping flags")
    assert message in err


def test_resume_with_fewer_steps_than_were_run_is_refused(tmp_path, capsys, teacher_dir, corpus):
    # was: the model written again without a word, its config.json saying "steps": 1 beside "steps_run": 2
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "2") == 0
    written = {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors")}
    capsys.readouterr()
    line = refused(capsys, ["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), *SMALL,
                            "--steps", "1", "--resume"])
    assert line == (f"mabert-hw: error: {out / 'train_state.pt'} has made 2 knowledge-transfer steps, more than "
                    "--steps 1 (with --resume, the total): give --steps 2 or more, or choose another --out to start "
                    "over")
    assert {name: (out / name).read_bytes() for name in written} == written
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume") == 0  # as many: the model written again


def test_prefit_mse_survives_an_interrupted_run(tmp_path, capsys, teacher_dir, corpus):
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    first = json.loads((out / "config.json").read_text())["conversion"]["prefit_mse"]
    (out / "config.json").unlink()  # as if the run had stopped after saving its state, before the final write
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume") == 0
    assert "pre-fit MSE" not in capsys.readouterr().out  # the pre-fit ran once, in the first run
    assert json.loads((out / "config.json").read_text())["conversion"]["prefit_mse"] == first


def test_resume_of_a_state_without_a_record_warns_and_keeps_the_prefit_mse(tmp_path, capsys, teacher_dir, corpus):
    """A state written before records existed: its flags cannot be checked (a warning), and the pre-fit
    MSE comes from the config.json the earlier run wrote."""
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    first = json.loads((out / "config.json").read_text())["conversion"]["prefit_mse"]
    state = torch.load(out / "train_state.pt", weights_only=False)
    del state["record"]
    torch.save(state, out / "train_state.pt")
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume") == 0
    assert "records no flags (an older run)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["conversion"]["prefit_mse"] == first


@pytest.mark.parametrize("command, shown", [
    ("convert", ["texts per batch (default 16)", "(default 0.0001)", "(default 200)", "random seed (default 0)",
                 "pre-fit steps (default 300", "must match the first run's",
                 "pre-fit and PowerNorm calibration are skipped"]),
    ("softmax-error", ["rows (default 20000)", "texts per batch (default 16)", "default [64, 128]"]),
])
def test_help_shows_defaults(capsys, command, shown):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for part in shown:
        assert part in text


def test_softmax_error_truncates_long_texts_to_the_approximator_width(tmp_path, capsys, ma16):
    data = tmp_path / "long.txt"
    data.write_text(" ".join(["the approximator sees at most sixteen columns"] * 12) + "\nShort one.\n")
    assert main(["softmax-error", str(ma16), "--data", str(data), "--pad-to", "16", "64",
                 "--output-dir", str(tmp_path / "err")]) == 0
    err = capsys.readouterr().err
    assert "--pad-to 64 skipped: above the approximator's n = 16" in err
    assert "mabert-hw: warning: 1 of 2 texts truncated to the model's 16 tokens" in err  # as `infer` warns
    padding = json.loads((tmp_path / "err" / "softmax_error_padding.json").read_text())
    assert [row["padded_to"] for row in padding] == [16]  # --pad-to 16 is the first batch's own width: once


def test_softmax_error_measures_exactly_max_rows(ma16, corpus, capsys):
    # was: every row of the batch that reached --max-rows (all 12 texts' rows for --max-rows 7)
    assert main(["softmax-error", str(ma16), "--data", str(corpus), "--max-rows", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("7 query rows x 2 layers x 3 heads;")
    header, _, layer0 = lines[1:4]
    assert layer0.split()[header.split().index("rows")] == str(7 * 3)  # each of the 3 heads' rows


@pytest.mark.parametrize("before", [False, True])
def test_interrupted_softmax_error_removes_only_the_empty_output_dir_it_made(tmp_path, capsys, monkeypatch,
                                                                          ma16, corpus, before):
    from mabert_hw.torch_ref import softmax_error

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(softmax_error, "row_errors", interrupted)
    folder = tmp_path / "new" / "se"
    if before:
        folder.mkdir(parents=True)
    assert main(["softmax-error", str(ma16), "--data", str(corpus), "--output-dir", str(folder)]) == 130
    assert folder.is_dir() == before and (tmp_path / "new").is_dir() == before


def test_softmax_error_refuses_a_non_baseline_teacher(tmp_path, capsys, ma16, corpus):
    assert main(["softmax-error", str(ma16), "--data", str(corpus), "--teacher", str(ma16)]) == 2
    assert "is not a baseline BERT" in capsys.readouterr().err


def test_softmax_error_checks_output_dir_before_the_work(tmp_path, capsys, ma16, corpus):
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert main(["softmax-error", str(ma16), "--data", str(corpus), "--output-dir", str(plain / "sub")]) == 2
    captured = capsys.readouterr()
    assert f"cannot create directory {plain / 'sub'}" in captured.err and captured.out == ""


@pytest.mark.parametrize("record", [None, "hand-written", ["teacher"], {"teacher": 42}])
def test_softmax_error_with_a_hand_edited_conversion_record_asks_for_the_teacher(tmp_path, capsys, ma16, corpus,
                                                                                 record):
    """A config.json whose "conversion" is not `convert`'s object, or whose teacher is not a path: the command
    asks for --teacher in one line (an AttributeError traceback before)."""
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in ma16.iterdir():
        if path.is_file():
            (edited / path.name).write_bytes(path.read_bytes())
    config = json.loads((edited / "config.json").read_text())
    config["conversion"] = record
    (edited / "config.json").write_text(json.dumps(config))
    assert main(["softmax-error", str(edited), "--data", str(corpus), "--output-dir", str(tmp_path / "se")]) == 2
    assert "no --teacher given and CKPT does not name the checkpoint it was converted from" in capsys.readouterr().err


def test_resume_reads_a_hand_edited_conversion_record_as_none(tmp_path, capsys, teacher_dir, corpus):
    """A pre-record state whose config.json holds "conversion": null resumes (the pre-fit MSE is then unknown)
    instead of failing with an AttributeError."""
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    state = torch.load(out / "train_state.pt", weights_only=False)
    del state["record"]
    torch.save(state, out / "train_state.pt")
    config = json.loads((out / "config.json").read_text())
    config["conversion"] = None
    (out / "config.json").write_text(json.dumps(config))
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume") == 0
    assert "prefit_mse" not in json.loads((out / "config.json").read_text())["conversion"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_resume_of_a_damaged_or_foreign_state_is_one_line(tmp_path, capsys, teacher_dir, corpus, damage):
    # before: RuntimeError tracebacks from torch.load (PytorchStreamReader failed, mmap ...) or KeyError
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    state = out / "train_state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "garbage":
        state.write_bytes(b"not a torch file" * 64)
    else:
        torch.save({"something": 1}, state)
    capsys.readouterr()
    assert convert(teacher_dir, out, corpus, "--steps", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith("mabert-hw: error: ") and str(state) in err and err.count("\n") == 1


def test_resume_checks_the_teacher_by_its_weights(tmp_path, capsys, teacher_dir, corpus):
    # before: a teacher of the same shape was resumed silently (only the shaping flags were checked); a copy of
    # the same teacher elsewhere must still resume
    from safetensors.numpy import load_file, save_file

    copy, other = tmp_path / "copy", tmp_path / "other"
    for folder in (copy, other):
        folder.mkdir()
        for path in teacher_dir.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
    state = load_file(other / "model.safetensors")
    state["pooler.dense.bias"] = state["pooler.dense.bias"] + 1.0
    save_file(state, str(other / "model.safetensors"))
    out = tmp_path / "out"
    assert convert(teacher_dir, out, corpus, "--steps", "1") == 0
    capsys.readouterr()
    assert convert(other, out, corpus, "--steps", "2", "--resume") == 2
    assert "was trained from another teacher (weights digest" in capsys.readouterr().err
    assert convert(copy, out, corpus, "--steps", "2", "--resume") == 0


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_convert_seed_out_of_range_is_an_argparse_error(tmp_path, capsys, teacher_dir, corpus, seed):
    # before: numpy's ValueError (negative seed) / torch's overflow as tracebacks after the teacher was loaded
    with pytest.raises(SystemExit) as exit_:
        convert(teacher_dir, tmp_path / "out", corpus, "--steps", "1", "--seed", seed)
    assert exit_.value.code == 2 and "--seed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_quant_error_cuts_texts_to_an_ma_approximators_inputs(tmp_path, capsys, ma16):
    # before: "N tokens exceed the softmax approximator's input size 16", which no flag of quant-error could avoid
    texts = tmp_path / "long.txt"
    texts.write_text("a long sentence with many words that runs well past sixteen word pieces in all " * 2 + "\n")
    assert main(["quant-error", str(ma16), "--data", str(texts), "--no-sensitivity"]) == 0
    assert "softmax.linear_relu_stack" in capsys.readouterr().out


def test_convert_refuses_out_holding_another_model(tmp_path, capsys):
    # --out = the teacher's own directory: convert used to replace its weights and config, then crash
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


@pytest.mark.parametrize("max_len, message", [
    ("100", "--max-len 100 exceeds the teacher's 64 positions"),  # --max-len 1: test_bad_numbers_are_argparse_errors
])
def test_convert_max_len_outside_what_the_teacher_takes(tmp_path, capsys, teacher_dir, corpus, max_len, message):
    assert main(["convert", str(teacher_dir), "--out", str(tmp_path / "out"), "--data", str(corpus),
                 "--steps", "1", "--prefit-steps", "1", "--batch", "2", "--max-len", max_len]) == 2
    assert message in error_line(capsys)


def test_convert_without_resume_refuses_to_overwrite_a_saved_state(tmp_path, capsys, teacher_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"an earlier run")
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--steps", "1",
                 "--prefit-steps", "1", "--batch", "2", "--max-len", "16"]) == 2
    assert "pass --resume to continue it, or choose another --out" in error_line(capsys)
    assert (out / "train_state.pt").read_bytes() == b"an earlier run"


def test_softmax_error_refuses_a_teacher_of_another_shape(ma_narrow, corpus, tmp_path, capsys):
    other = ModelSpec("other", vocab_size=30522, hidden=16, layers=2, heads=2, intermediate=24, max_positions=64)
    teacher = save_bert(tmp_path / "other", other, seed=1)
    assert main(["softmax-error", str(ma_narrow), "--data", str(corpus), "--teacher", str(teacher)]) == 2
    assert "has another shape than CKPT: heads 2 (CKPT: 3), hidden 16 (CKPT: 24)" in error_line(capsys)

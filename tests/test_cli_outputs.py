"""Where the CLI writes: never over one of the command's own inputs (a config, a grid, a data file, a file a
checkpoint loader reads), /dev/stdout and `-` as standard output, bad link targets and plot formats
refused before the work, and an interrupted write leaves the old file and no temporary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mabert_hw.cli import build_parser, main
from mabert_hw.errors import UserError

from .helpers import CONFIG


# outputs that are inputs of the same command

def test_sweep_out_that_is_the_grid_is_refused_and_the_grid_kept(tmp_path, capsys, data_dir):
    # the grid (no final newline) used to be cut to 0 bytes, then the results written over it
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b"act_bits = [8]")
    assert main(["sweep", "minilm", "--task", "stsb", "--data", str(data_dir), "--grid", str(grid), "--out",
                 str(tmp_path / "." / "grid.toml"), "--resume"]) == 2
    assert f"--out {tmp_path / '.' / 'grid.toml'} is an input of this command" in capsys.readouterr().err
    assert grid.read_bytes() == b"act_bits = [8]"


@pytest.mark.parametrize("flag", ["--output", "--retention"])
def test_profile_output_over_its_config_or_retention_file_is_refused(tmp_path, capsys, config_json, flag):
    # the checkpoint's config.json used to be replaced by the profile table after the run
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


# output paths

def test_output_to_dev_stdout_appends_to_where_stdout_goes(tmp_path):
    # /dev/stdout used to be resolved to the file stdout was redirected to, and that file replaced whole (the
    # lines written before and after were lost); to a pipe, the write failed after the work
    log = tmp_path / "log.txt"
    script = (f"echo header; {sys.executable} -m mabert_hw.cli profile minilm-l6 --format csv --output /dev/stdout; "
              "echo after")
    subprocess.run(["sh", "-c", f"({script}) > {log}"], check=True, timeout=120)
    lines = log.read_text().splitlines()
    assert lines[0] == "header" and lines[-1] == "after" and len(lines) > 3


def test_output_dash_is_standard_output(capsys):
    assert main(["profile", "minilm-l6", "--format", "csv", "--output", "-"]) == 0
    assert capsys.readouterr().out.startswith("kind,")


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
    # this used to be matplotlib's ValueError (Format 'txt' is not supported) after the whole report
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--plot", str(tmp_path / "chart.txt")])
    assert exit_.value.code == 2
    assert "name the chart's format by its suffix (.png, .svg, .pdf" in capsys.readouterr().err
    for name in ("chart.png", "chart.svg", "chart.PDF"):
        assert build_parser().parse_args([*command, "--plot", str(tmp_path / name)]).plot == str(tmp_path / name)


# Ctrl-C while --output is written: the old file stays and no FILE.tmp is left (not only on OSError)

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

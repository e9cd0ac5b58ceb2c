"""The shared I/O helpers: tokenize_within (inputs.py), atomic_write / atomic_path (atomic.py), read_toml
(inputs.py) and the call sites that used to repeat them."""

from __future__ import annotations

import os
import stat

import pytest

from mabert_hw.atomic import atomic_path, atomic_write
from mabert_hw.cli import main
from mabert_hw.cost import hardware
from mabert_hw.errors import UserError
from mabert_hw.eval.sweep import COLUMNS, _append_row, load_grid
from mabert_hw.inputs import read_toml, tokenize, tokenize_within
from mabert_hw.quant import config as qconfig

LATIN1_TOML = 'name = "caf\xe9"\n'.encode("latin-1")


# --- tokenize_within -----------------------------------------------------------------------------------------

def test_tokenize_within_cuts_only_a_batch_wider_than_the_limit(minilm):
    texts = ["Short one.", "The quick brown fox jumps over the lazy dog, and then over the lazy dog again."]
    whole = tokenize(minilm.tokenizer_dir, texts)
    assert tokenize_within(minilm.tokenizer_dir, texts, whole.shape[1]).input_ids.tolist() == whole.input_ids.tolist()
    cut = tokenize_within(minilm.tokenizer_dir, texts, 8)
    assert cut.shape == (2, 8) and cut.input_ids.tolist() == tokenize(minilm.tokenizer_dir, texts, 8).input_ids.tolist()
    assert tokenize_within(minilm.tokenizer_dir, texts, 64, 32).shape == (2, 32)  # a fixed length within the limit


# --- atomic_write / atomic_path ------------------------------------------------------------------------------

def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_an_interrupted_path_write_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_finished_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path, "wb") as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_two_writes_of_one_file_have_different_temporaries(tmp_path):
    path = tmp_path / "out.csv"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"  # the outer write finished last
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_the_written_file_has_the_umask_permissions(tmp_path):
    old_umask = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "out.txt") as handle:
            handle.write("x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640  # 0o666 less the umask, not 0o600


def test_atomic_write_refuses_a_mode_that_does_not_write_a_whole_file(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_write(tmp_path / "log.txt", "a"):
            pass


def test_a_sweep_csv_widened_for_a_new_field_keeps_no_temporary(tmp_path):
    path = tmp_path / "sweep.csv"
    fields = [*COLUMNS, "act_bits"]
    _append_row(path, {"key": "a", "metric": 80.0, "seconds": 1, "overflows": 0}, fields)
    _append_row(path, {"key": "b", "metric": 81.0, "seconds": 1, "overflows": 0, "act_bits": 8}, fields)  # widens
    assert path.read_text().splitlines() == ["key,metric,seconds,overflows,act_bits", "a,80.0,1,0,", "b,81.0,1,0,8"]
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]


# --- read_toml -------------------------------------------------------------------------------------------------

def test_a_non_utf8_hardware_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(LATIN1_TOML)
    with pytest.raises(UserError, match=r"cannot read hardware file .*latin1.toml: not UTF-8 text \(line 1: "):
        hardware.load(str(path))
    assert main(["profile", "bert-base-uncased", "--hw", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("read, what", [
    (hardware.load, "hardware file"), (qconfig.load, "quantization config"), (load_grid, "grid"),
])
def test_every_toml_reader_words_its_errors_alike(tmp_path, read, what):
    latin1, bad = tmp_path / "latin1.toml", tmp_path / "bad.toml"
    latin1.write_bytes(b"act_bits = [8]\n# caf\xe9\n")
    bad.write_text("act_bits = [8]\n[memory\n")
    with pytest.raises(UserError, match=rf"^cannot read {what} .*latin1.toml: not UTF-8 text \(line 2: "):
        read(str(latin1))
    with pytest.raises(UserError, match=rf"^cannot read {what} .*bad.toml: invalid TOML \(.*line 2"):
        read(str(bad))


def test_read_toml_names_an_unreadable_file(tmp_path):
    with pytest.raises(UserError, match=r"^cannot read grid .*missing.toml: No such file or directory$"):
        read_toml(tmp_path / "missing.toml", "grid")
    ok = tmp_path / "ok.toml"
    ok.write_text("act_bits = [4, 8]\n")
    assert read_toml(ok, "grid") == {"act_bits": [4, 8]}


def test_write_text_whole_writes_through_a_symlink_and_names_a_loop(tmp_path):
    from mabert_hw.atomic import write_text_whole

    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    link.symlink_to(target)
    write_text_whole(link, "through\n")
    assert link.is_symlink() and target.read_text() == "through\n"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="cannot write .*loop"):  # was a RuntimeError traceback on Python 3.11
        write_text_whole(loop, "x")

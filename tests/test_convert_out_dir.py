"""A `convert` that fails after its arguments are accepted removes the --out directories it created while
they are still empty, and never a directory that was there before or that holds files."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mabert_hw.cli import convert, main
from mabert_hw.errors import UserError

from .helpers import error_line


def run_convert(ckpt, out, data) -> int:
    return main(["convert", str(ckpt), "--out", str(out), "--data", str(data), "--steps", "0",
                 "--prefit-steps", "0"])


def test_a_failed_conversion_removes_the_directories_it_created(tmp_path, capsys, config_json, corpus):
    # a config.json has no weights: refused after --out was made; its directories used to stay, empty
    out = tmp_path / "new" / "nested" / "out"
    assert run_convert(config_json, out, corpus) == 2
    assert "has no weights" in error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_a_failed_conversion_keeps_an_out_that_was_there_before(tmp_path, capsys, config_json, corpus):
    out = tmp_path / "out"
    out.mkdir()
    assert run_convert(config_json, out, corpus) == 2
    assert out.is_dir()
    # the same directory through a missing one: "missing/../out" is the existing out; the run makes "missing"
    assert run_convert(config_json, tmp_path / "missing" / ".." / "out", corpus) == 2
    assert out.is_dir() and not (tmp_path / "missing").exists()


def test_a_failed_conversion_removes_what_it_made_on_a_path_with_dot_dot(tmp_path, capsys, config_json, corpus):
    """mkdir(parents=True) of a/b/../c makes a, a/b and a/c."""
    assert run_convert(config_json, tmp_path / "a" / "b" / ".." / "c", corpus) == 2
    assert not (tmp_path / "a").exists()


def test_a_failed_conversion_keeps_an_out_that_holds_files(tmp_path, capsys, monkeypatch, config_json, corpus):
    out = tmp_path / "new" / "out"

    def write_then_fail(paths):
        (out / "written.txt").write_text("x")
        raise UserError("failed after writing")

    monkeypatch.setattr(convert, "read_corpus", write_then_fail)
    assert run_convert(config_json, out, corpus) == 2
    assert error_line(capsys) == "mabert-hw: error: failed after writing"
    assert (out / "written.txt").is_file()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_or_crashed_conversion_removes_its_empty_out(tmp_path, capsys, monkeypatch, config_json,
                                                                     corpus, error):
    def fail(paths):
        raise error("stopped")

    monkeypatch.setattr(convert, "read_corpus", fail)
    out = tmp_path / "out"
    if error is KeyboardInterrupt:
        assert run_convert(config_json, out, corpus) == 130
    else:
        with pytest.raises(RuntimeError):
            run_convert(config_json, out, corpus)
    assert not out.exists()


def test_sigterm_before_the_knowledge_transfer_removes_the_empty_out_and_exits_143(tmp_path, capsys, monkeypatch,
                                                                                   config_json, corpus):
    # SIGTERM was taken as Ctrl-C only inside the knowledge transfer: earlier (reading, loading, pre-fit) it
    # killed the process without a word and left the new, empty --out behind
    def terminated(paths):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it

    monkeypatch.setattr(convert, "read_corpus", terminated)
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    try:
        assert run_convert(config_json, out, corpus) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert error_line(capsys) == "mabert-hw: interrupted"
    assert not out.exists()

"""SIGTERM is taken as Ctrl-C by every mabert-hw command (cli.main) and every analysis script (run_script):
the stop is said in one line and the exit status tells the two apart, 143 and 130 (128 + the signal)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mabert_hw.cli import main, profile

from .helpers import analysis_script


def _stopping(signum: int):
    def run(*_):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # what Python's own SIGINT handler raises
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it
        return 0
    return run


@pytest.fixture
def sigterm_guard():
    """Where the code under test does not take SIGTERM, it fails the test instead of killing the test run."""
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM reached the test's handler"))
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_command_without_its_own_handling_stops_in_one_line(monkeypatch, capsys, sigterm_guard, signum, status):
    # SIGTERM took only convert, sweep and power-search as Ctrl-C: a profile or bench killed by it ended silently
    monkeypatch.setattr(profile, "run", _stopping(signum))
    assert main(["profile", "minilm-l6"]) == status
    assert capsys.readouterr().err == "mabert-hw: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the guard's handler put back


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_analysis_script_without_its_own_handling_stops_in_one_line(monkeypatch, capsys, sigterm_guard, tmp_path,
                                                                       signum, status):
    # a script without a Ctrl-C handler ended in a KeyboardInterrupt traceback, and SIGTERM killed it silently
    script = analysis_script("accelerator_cost")
    monkeypatch.setattr(script, "run", _stopping(signum))
    assert script.main(["--out", str(tmp_path / "out")]) == status
    err = capsys.readouterr().err  # PROG: interrupted (PROG is argv[0]'s name: pytest's here)
    assert err.endswith(": interrupted\n") and err.count("\n") == 1

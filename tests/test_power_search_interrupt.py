"""`power-search` stopped by Ctrl-C or SIGTERM writes the schedules scored so far to --out, marked
interrupted and with no schedule chosen, as sweep keeps its finished rows."""

from __future__ import annotations

import json
import os
import signal

import pytest

from mabert_hw import power_search
from mabert_hw.cli import main

from .helpers import refused, sst2_file

STOP_AT = 4  # the signal arrives as the 4th schedule starts: 3 are scored


@pytest.fixture
def data(tmp_path):
    return sst2_file(tmp_path / "dev.tsv", ["a gripping film\t1", "dull and lifeless\t0", "lovely\t1", "flat\t0"])


@pytest.fixture
def search(classifier, data):
    def command(out):
        return ["power-search", str(classifier), "--task", "sst2", "--data", str(data), "--seq-len", "16",
                "--method", "geometric", "--out", str(out), "--format", "json"]
    return command


@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler for the test's time: where the search does not handle SIGTERM, the signal fails the
    test instead of killing the test run."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the handler the search started with")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


def signal_at(monkeypatch, call: int, signum: int) -> None:
    """Send `signum` to this process as the `call`-th schedule starts to be scored."""
    real_predict, calls = power_search.predict, []

    def predict(*args):
        calls.append(args)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real_predict(*args)

    monkeypatch.setattr(power_search, "predict", predict)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_search_writes_the_schedules_scored_marked_interrupted(tmp_path, capsys, monkeypatch, search,
                                                                              classifier, data, sigterm_guard,
                                                                              signum):
    # the search used to exit 130 and write nothing: every schedule scored was lost
    assert main(search(tmp_path / "whole.json")) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    capsys.readouterr()

    signal_at(monkeypatch, STOP_AT, signum)
    out = tmp_path / "cut.json"
    assert main(search(out)) == 130
    assert f"interrupted after {STOP_AT - 1} schedules scored; {out} holds them" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # the handler put back
    cut = json.loads(out.read_text())
    assert cut["interrupted"] is True and "retention" not in cut  # nothing chosen from part of a search
    assert cut["scored"] == whole["scored"][:STOP_AT - 1]
    assert cut["baseline_accuracy"] == whole["baseline_accuracy"]
    refusal = refused(capsys, ["eval", str(classifier), "--task", "sst2", "--data", str(data), "--retention", str(out)])
    assert "an interrupted power-search, with no schedule chosen: run the search again for one" in refusal


def test_a_search_interrupted_before_any_schedule_writes_nothing(tmp_path, capsys, monkeypatch, search):
    signal_at(monkeypatch, 1, signal.SIGINT)
    out = tmp_path / "cut.json"
    assert main(search(out)) == 130
    assert f"interrupted after 0 schedules scored; nothing written to {out}" in capsys.readouterr().err
    assert not out.exists()

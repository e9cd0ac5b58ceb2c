"""`power-search` saves the schedules scored to --out as it goes (marked interrupted, with no schedule
chosen, until it ends), says so when Ctrl-C or SIGTERM stops it, and --resume continues the search to the
document an uninterrupted search writes."""

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
    test instead of killing the test run. SIGINT raises KeyboardInterrupt, as in an interactive shell (a
    shell's background job starts with SIGINT ignored)."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the handler the search started with")

    previous = signal.signal(signal.SIGTERM, unhandled), signal.signal(signal.SIGINT, signal.default_int_handler)
    yield unhandled
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


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
    assert "an interrupted power-search, with no schedule chosen: finish it with power-search --resume" in refusal


def test_a_search_interrupted_before_any_schedule_writes_nothing(tmp_path, capsys, monkeypatch, search, sigterm_guard):
    signal_at(monkeypatch, 1, signal.SIGINT)
    out = tmp_path / "cut.json"
    assert main(search(out)) == 130
    assert f"interrupted after 0 schedules scored; nothing written to {out}" in capsys.readouterr().err
    assert not out.exists()


def counting_predict(monkeypatch, fail_at: int | None = None) -> list:
    """Count the schedules scored (one predict call each); with fail_at, the fail_at-th call raises, as a
    crash or a kill would stop the search without Ctrl-C's handling."""
    real_predict, calls = power_search.predict, []

    def predict(*args):
        calls.append(args)
        if len(calls) == fail_at:
            raise RuntimeError("the machine went down")
        return real_predict(*args)

    monkeypatch.setattr(power_search, "predict", predict)
    return calls


@pytest.mark.parametrize("method", ["geometric", "both"])
def test_a_crashed_search_resumes_to_the_uninterrupted_document_scoring_only_what_it_lacks(
        tmp_path, capsys, monkeypatch, search, method):
    def command(out):
        return [*search(out), "--method", method, "--budget-loss", "30"]

    calls = counting_predict(monkeypatch)
    assert main(command(tmp_path / "whole.json")) == 0
    whole, scored_in_whole = json.loads((tmp_path / "whole.json").read_text()), len(calls)
    assert scored_in_whole == len(whole["scored"]) > STOP_AT

    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):  # no handler ran: the search saved as it went
        main(command(out))
    cut = json.loads(out.read_text())
    assert cut["interrupted"] is True and cut["scored"] == whole["scored"][:STOP_AT - 1]

    calls = counting_predict(monkeypatch)
    capsys.readouterr()
    assert main([*command(out), "--resume"]) == 0
    assert f"resuming: {STOP_AT - 1} schedules scored in {out}" in capsys.readouterr().err
    assert len(calls) == scored_in_whole - (STOP_AT - 1)
    assert json.loads(out.read_text()) == whole


def test_a_finished_search_resumed_with_another_budget_scores_nothing_and_chooses_as_a_new_search(
        tmp_path, capsys, monkeypatch, search):
    out, fresh = tmp_path / "search.json", tmp_path / "fresh.json"
    assert main([*search(out), "--budget-loss", "0"]) == 0
    calls = counting_predict(monkeypatch)
    assert main([*search(out), "--budget-loss", "50", "--resume"]) == 0
    assert calls == []  # geometric schedules do not depend on the budget: all were scored
    assert main([*search(fresh), "--budget-loss", "50"]) == 0
    assert json.loads(out.read_text()) == json.loads(fresh.read_text())


def test_an_interrupted_search_is_not_overwritten_without_resume(tmp_path, capsys, monkeypatch, search):
    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):
        main(search(out))
    saved = out.read_text()
    capsys.readouterr()
    assert "pass --resume to continue it, or choose another --out" in refused(capsys, search(out))
    assert out.read_text() == saved


@pytest.mark.parametrize("change, named", [(["--seq-len", "12"], "seq_len: 16 there, 12 now"),
                                           (["--limit", "3"], "examples: 4 there, 3 now"),
                                           (["--batch-size", "2"], "batch_size: 32 there, 2 now")])
def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path, capsys, monkeypatch, search, change, named):
    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):
        main(search(out))
    capsys.readouterr()
    refusal = refused(capsys, [*search(out), *change, "--resume"])
    assert f"{out} was scored with other settings (" in refusal and named in refusal


def test_a_resume_of_other_examples_is_refused(tmp_path, capsys, monkeypatch, search, data):
    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):
        main(search(out))
    data.write_text(data.read_text().replace("lovely\t1", "lovely\t0"))  # one label changed, same count
    capsys.readouterr()
    assert "examples_sha256" in refused(capsys, [*search(out), "--resume"])


@pytest.mark.parametrize("out", [None, "-"])
def test_resume_needs_an_out_file(tmp_path, capsys, search, out):
    argv = [*search(tmp_path / "x.json"), "--resume"]
    argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:] + (["--out", out] if out else [])
    assert "--resume continues the search saved in --out FILE" in refused(capsys, argv)


@pytest.mark.parametrize("text, said", [
    ('{"scored": [{"retention": "9,4", "accuracy": 50.0, "flops": 10, "family": "greedy"}]}',
     "does not record what its scores depend on"),
    ('[1, 2]', "is not a power-search --out document"),
    ("not json", "is not a power-search --out document"),
])
def test_a_resume_from_a_file_that_is_no_search_is_refused(tmp_path, capsys, search, text, said):
    out = tmp_path / "other.json"
    out.write_text(text)
    assert said in refused(capsys, [*search(out), "--resume"])
    assert out.read_text() == text


def test_a_damaged_score_is_refused_in_one_line(tmp_path, capsys, search):
    out = tmp_path / "search.json"
    assert main(search(out)) == 0
    doc = json.loads(out.read_text())
    doc["scored"][1]["retention"] = "16,8"
    out.write_text(json.dumps(doc))
    capsys.readouterr()
    assert "a scored entry is not a power-search score: {'retention': '16,8'" in refused(capsys, [*search(out), "--resume"])


def test_a_resume_without_a_file_starts_the_search(tmp_path, capsys, search):
    out = tmp_path / "new.json"
    assert main([*search(out), "--resume"]) == 0
    assert main(search(tmp_path / "plain.json")) == 0
    assert json.loads(out.read_text()) == json.loads((tmp_path / "plain.json").read_text())


def test_a_fixed_engine_search_records_its_calibration_and_resumes_on_that_engine_only(tmp_path, capsys, monkeypatch,
                                                                                        search):
    monkeypatch.setattr("mabert_hw.cache.CACHE_ROOT", tmp_path / "cache")
    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):
        main([*search(out), "--engine", "fixed"])
    recorded = json.loads(out.read_text())["scores_depend_on"]
    assert [recorded["calibration"]] == [p.name for p in (tmp_path / "cache").glob("calibration-*.npz")]
    capsys.readouterr()
    refusal = refused(capsys, [*search(out), "--resume"])
    assert "engine: 'fixed' there, 'reference' now" in refusal and "calibration: 'calibration-" in refusal
    calls = counting_predict(monkeypatch)
    assert main([*search(out), "--engine", "fixed", "--resume"]) == 0
    assert len(calls) == len(json.loads(out.read_text())["scored"]) - (STOP_AT - 1)

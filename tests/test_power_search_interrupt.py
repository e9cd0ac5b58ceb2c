"""`power-search` saves the schedules scored to --out as it goes (marked interrupted, with no schedule
chosen, until it ends), says so when Ctrl-C or SIGTERM stops it, and --resume continues the search to the
document an uninterrupted search writes, but for the file's schedules it does not ask for, kept apart. Without
--resume, --out may replace a finished search's document only."""

from __future__ import annotations

import errno
import json
import os
import signal

import numpy as np
import pytest

from mabert_hw import power_search
from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.spec import ModelSpec

from .helpers import refused, save_bert, sst2_file

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
    assert main(search(out)) == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports the signal
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


@pytest.mark.parametrize("kind", ["weights", "a sweep's run record", "a JSON list"])
def test_an_out_that_is_no_search_document_is_refused_before_the_work(tmp_path, capsys, monkeypatch, search,
                                                                       classifier, data, kind):
    # review: such a file (another checkpoint's model.safetensors, a sweep's OUT.run.json) used to be replaced
    from mabert_hw.eval.sweep import run_record

    content = {"weights": (classifier / "model.safetensors").read_bytes(),
               "a sweep's run record": json.dumps(run_record(str(classifier), "tiny", "sst2", data, None)).encode(),
               "a JSON list": b"[1, 2]\n"}[kind]
    out = tmp_path / "other"
    out.write_bytes(content)
    calls = counting_predict(monkeypatch)
    assert refused(capsys, search(out)) == (f"mabert-hw: error: {out} is not a power-search --out document: choose "
                                            "another --out (a new search replaces only a finished search's document)")
    assert calls == [] and out.read_bytes() == content


@pytest.mark.parametrize("before", ["a finished search", "an empty file"])
def test_a_finished_search_or_an_empty_file_is_replaced_without_resume(tmp_path, capsys, search, before):
    out, fresh = tmp_path / "search.json", tmp_path / "fresh.json"
    if before == "an empty file":
        out.touch()
    else:
        assert main([*search(out), "--budget-loss", "0"]) == 0
    assert main([*search(out), "--budget-loss", "50"]) == 0
    assert main([*search(fresh), "--budget-loss", "50"]) == 0
    assert json.loads(out.read_text()) == json.loads(fresh.read_text())


def test_a_resume_with_a_smaller_budget_keeps_the_schedules_it_does_not_ask_for(tmp_path, capsys, monkeypatch,
                                                                                search):
    """Review: a finished search resumed with a smaller budget dropped the rest of its greedy path from --out,
    and resuming it with the first budget again scored those schedules again. They are kept apart, under
    scored_not_asked: the decision is the fresh search's, and nothing paid for is lost."""
    def command(out, budget):
        return [*search(out), "--method", "both", "--budget-loss", budget]

    # the random classifier gives every example one class: each schedule would score as the baseline does, and
    # every budget walk one greedy path. Here each layer keeping fewer than 12 of the 16 slots costs one example
    def predict(ck, retention, batches, backend):
        labels = np.array([1, 0, 1, 0])  # data's
        wrong = sum(n < 12 for n in retention or ())
        return np.where(np.arange(len(labels)) < wrong, 1 - labels, labels)

    monkeypatch.setattr(power_search, "predict", predict)
    out, fresh = tmp_path / "search.json", tmp_path / "fresh.json"
    assert main(command(out, "30")) == 0  # one example (25 points) may be lost
    whole = json.loads(out.read_text())
    assert main(command(fresh, "0")) == 0
    calls = counting_predict(monkeypatch)
    assert main([*command(out, "0"), "--resume"]) == 0
    small = json.loads(out.read_text())
    assert small["scored_not_asked"]  # the case: the smaller budget's greedy path is shorter
    assert {**small, "scored_not_asked": []} == json.loads(fresh.read_text())
    assert sorted(s["retention"] or [] for s in small["scored"] + small["scored_not_asked"]) == sorted(
        s["retention"] or [] for s in whole["scored"])
    assert main([*command(out, "30"), "--resume"]) == 0
    assert calls == []  # neither resume scored anything
    assert json.loads(out.read_text()) == whole


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
    ('{"scored": [], "scored_not_asked": 3}', "is not a power-search --out document"),
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
    refusal = refused(capsys, [*search(out), "--resume"])
    assert "a scored entry is not a power-search score: {'retention': '16,8'" in refusal


@pytest.mark.parametrize("empty", [False, True])
def test_a_resume_without_a_file_starts_the_search_and_says_so(tmp_path, capsys, search, empty):
    out = tmp_path / "new.json"
    if empty:  # made by mktemp, say: nothing in it to resume either
        out.touch()
    assert main([*search(out), "--resume"]) == 0
    assert f"mabert-hw: nothing to resume in {out}: starting a new search\n" in capsys.readouterr().err
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


def test_a_resume_chooses_among_the_schedules_this_search_asks_for_as_a_fresh_search(tmp_path, capsys, search):
    """A document resumed with another budget or method holds schedules this search would never score. The
    choice is made among those it asks for, so the resumed document is the fresh search's, but for the
    schedules kept apart: here a schedule the geometric search never asks for, cheaper than any and as
    accurate as the baseline, stays unchosen (choosing among everything in the file took it)."""
    fresh_out, resumed = tmp_path / "fresh.json", tmp_path / "resumed.json"
    assert main(search(fresh_out)) == 0
    fresh = json.loads(fresh_out.read_text())
    planted = {"retention": [16, 3], "accuracy": fresh["baseline_accuracy"], "flops": 1, "family": "greedy"}
    assert planted["retention"] not in [s["retention"] for s in fresh["scored"]]
    resumed.write_text(json.dumps({**fresh, "scored": [*fresh["scored"], planted]}))
    assert main([*search(resumed), "--resume"]) == 0
    assert json.loads(resumed.read_text()) == {**fresh, "scored_not_asked": [planted]}


def test_a_resumed_finished_search_interrupted_before_a_new_score_is_left_as_it_was(tmp_path, capsys, monkeypatch,
                                                                                    search, sigterm_guard):
    out = tmp_path / "search.json"
    assert main(search(out)) == 0  # geometric: no schedule of the greedy path's first step, (12, 12)
    finished = out.read_text()
    signal_at(monkeypatch, 1, signal.SIGINT)  # as the first schedule the file lacks starts
    capsys.readouterr()
    assert main([*search(out), "--method", "both", "--resume"]) == 130
    scored = len(json.loads(finished)["scored"])
    assert (f"interrupted after 0 schedules scored ({scored} more taken from {out}); {out} is as it was"
            in capsys.readouterr().err)
    assert out.read_text() == finished  # its chosen schedule kept: it was not replaced by an unfinished search


def test_a_resume_with_another_checkpoint_is_refused(tmp_path, capsys, monkeypatch, search, classifier):
    counting_predict(monkeypatch, fail_at=STOP_AT)
    out = tmp_path / "cut.json"
    with pytest.raises(RuntimeError):
        main(search(out))
    other = save_bert(tmp_path / "other", ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3,
                                                    intermediate=32, max_positions=64, num_labels=2), seed=4)
    argv = search(out)
    argv[argv.index(str(classifier))] = str(other)
    capsys.readouterr()
    assert "model: " in refused(capsys, [*argv, "--resume"])


def test_a_ctrl_c_during_a_save_still_leaves_every_schedule_scored(tmp_path, capsys, monkeypatch, search):
    from mabert_hw.cli import power_search as command

    real_save, saves = command.save, []

    def save(path, doc):
        saves.append(doc)
        if len(saves) == STOP_AT:
            raise KeyboardInterrupt  # before this save wrote anything
        real_save(path, doc)

    monkeypatch.setattr(command, "save", save)
    out = tmp_path / "cut.json"
    assert main(search(out)) == 130
    assert len(json.loads(out.read_text())["scored"]) == STOP_AT  # the save after the Ctrl-C wrote them all


def test_a_full_disk_is_one_line_and_keeps_the_previous_document(tmp_path, capsys, monkeypatch, search):
    from mabert_hw import atomic

    out = tmp_path / "cut.json"
    real_write, writes = atomic.atomic_write, []

    def full_disk(path):
        writes.append(path)
        if len(writes) == STOP_AT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path)

    monkeypatch.setattr(atomic, "atomic_write", full_disk)
    assert main(search(out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith(f"mabert-hw: error: cannot write {out}: No space left on device\n")
    assert len(json.loads(out.read_text())["scored"]) == STOP_AT - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "dev.tsv"]  # no temporary left


def test_a_symlinked_out_is_written_through(tmp_path, capsys, search):
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "search.json", tmp_path / "link.json"
    link.symlink_to(target)
    assert main(search(link)) == 0
    assert link.is_symlink() and json.loads(target.read_text())["retention"] is not None


def test_a_fifo_out_gets_no_saves_and_no_resume(tmp_path):
    from argparse import Namespace

    from mabert_hw.cli.power_search import saved_file

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert saved_file(Namespace(out=str(fifo), resume=False)) is None
    with pytest.raises(UserError, match="--resume continues the search saved in --out FILE"):
        saved_file(Namespace(out=str(fifo), resume=True))


@pytest.mark.parametrize("damage, said", [
    (lambda doc: doc["scored"][1].update(accuracy=float("nan")), "a scored entry is not a power-search score"),
    (lambda doc: doc["scored"][1].update(flops=2.5), "a scored entry is not a power-search score"),
    (lambda doc: doc["scored"][1].update(retention=[16]), "a scored entry is not a power-search score"),
    (lambda doc: doc.update(scored=doc["scored"][1:]), "holds no baseline score"),
])
def test_a_document_with_a_damaged_or_missing_score_is_refused(tmp_path, capsys, search, damage, said):
    out = tmp_path / "search.json"
    assert main(search(out)) == 0
    doc = json.loads(out.read_text())
    damage(doc)
    out.write_text(json.dumps(doc))
    capsys.readouterr()
    assert said in refused(capsys, [*search(out), "--resume"])


def test_a_crashed_search_resumed_with_another_method_writes_the_fresh_document(tmp_path, capsys, monkeypatch,
                                                                                 search):
    """Schedules the crashed greedy run scored are asked for by the geometric search first: they take its
    family, as a fresh search of both methods labels them."""
    fresh, cut = tmp_path / "fresh.json", tmp_path / "cut.json"
    assert main([*search(fresh), "--method", "both"]) == 0
    counting_predict(monkeypatch, fail_at=6)
    with pytest.raises(RuntimeError):
        main([*search(cut), "--method", "greedy"])
    greedy_first = {tuple(s["retention"] or ()): s["family"] for s in json.loads(cut.read_text())["scored"]}
    counting_predict(monkeypatch)
    assert main([*search(cut), "--method", "both", "--resume"]) == 0
    resumed = json.loads(cut.read_text())
    relabelled = [s for s in resumed["scored"]
                  if greedy_first.get(tuple(s["retention"] or ())) not in (None, s["family"])]
    assert relabelled  # the case this test is about: a greedy score asked for again as geometric
    assert resumed == json.loads(fresh.read_text())


def test_an_interrupted_resume_keeps_the_scores_it_did_not_ask_for(tmp_path, capsys, monkeypatch, search,
                                                                     sigterm_guard):
    out = tmp_path / "search.json"
    assert main([*search(out), "--method", "greedy"]) == 0
    greedy = [s["retention"] for s in json.loads(out.read_text())["scored"]]
    signal_at(monkeypatch, 2, signal.SIGINT)  # as the second schedule the file lacks starts
    assert main([*search(out), "--resume"]) == 130  # geometric: asks for few of the greedy path's schedules
    kept = json.loads(out.read_text())
    assert kept["interrupted"] is True
    asked, not_asked = ([s["retention"] for s in kept[key]] for key in ("scored", "scored_not_asked"))
    new = [r for r in asked if r not in greedy]
    assert len(new) == 1 and not_asked  # the geometric search asked for some of the greedy path only
    assert sorted(asked + not_asked, key=str) == sorted(greedy + new, key=str)  # none lost

"""convert stopped by SIGINT / SIGTERM keeps the step it was in, and --resume continues it to the same
result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from mabert_hw.cli import main
from mabert_hw.interrupts import Terminated, stopped_status
from mabert_hw.torch_ref import train

STEPS, STOP_DURING = 5, 2  # the signal arrives during step index 2 (the third step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_conversion_saves_its_step_and_resumes_to_the_same_history(
        tmp_path, teacher_dir, corpus, monkeypatch, capsys, signum):
    def command(out):
        return ["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input", "32",
                "--softmax-hidden", "16", "--max-len", "24", "--batch", "4", "--prefit-steps", "2",
                "--checkpoint-every", "100", "--steps", str(STEPS)]

    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a shell's background job, not default_int_handler
    assert main(command(tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())

    real_step = train._step

    def step_with_a_signal(*args):
        if args[5] == STOP_DURING:  # (student, teacher, batch, optimizer, scheduler, step, history)
            os.kill(os.getpid(), signum)  # handled between steps: this step still completes
        real_step(*args)

    monkeypatch.setattr(train, "_step", step_with_a_signal)
    out = tmp_path / "cut"
    assert main(command(out)) == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports the signal
    err = capsys.readouterr().err
    assert f"interrupted after step {STOP_DURING + 1} of {STEPS}" in err
    # the bar counts the step the message names (it showed one fewer: the loop left it by raising)
    assert re.findall(rf"knowledge transfer: .*?(\d+)/{STEPS} \[", err)[-1] == str(STOP_DURING + 1)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers put back
    monkeypatch.setattr(train, "_step", real_step)
    assert main([*command(out), "--resume"]) == 0
    resumed = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in resumed] == list(range(1, STEPS + 1))
    assert resumed == whole  # the same losses, bit for bit: nothing lost, nothing repeated


def test_a_second_sigterm_mid_step_says_what_is_kept_and_resumes_to_the_same_history(tmp_path, teacher_dir, corpus,
                                                                                      monkeypatch, capsys):
    # the second signal's stop was said as a bare "mabert-hw: interrupted", without the state that --resume reads
    def command(out):
        return ["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input", "32",
                "--softmax-hidden", "16", "--max-len", "24", "--batch", "4", "--prefit-steps", "2",
                "--checkpoint-every", "1", "--steps", str(STEPS)]

    assert main(command(tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())
    real_step = train._step

    def step_with_two_signals(*args):
        if args[5] == STOP_DURING:  # the first asks for a stop after this step, the second stops it at once
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it
        real_step(*args)

    monkeypatch.setattr(train, "_step", step_with_two_signals)
    out = tmp_path / "cut"
    assert main(command(out)) == 143
    state = out / "train_state.pt"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mabert-hw: interrupted in the middle of a step; {state} holds the last step saved before it: run the same "
        "command with --resume to continue")
    assert train.read_state(state)["step"] == STOP_DURING  # steps 1..STOP_DURING, saved after each
    monkeypatch.setattr(train, "_step", real_step)
    assert main([*command(out), "--resume"]) == 0
    assert json.loads((out / "history.json").read_text()) == whole


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_second_signal_stops_at_once_as_the_signal_it_is(signum, stop):
    # a second SIGTERM raised a plain KeyboardInterrupt: the command then exited 130, as for Ctrl-C
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as raised, train.stop_requests() as requested:
            os.kill(os.getpid(), signum)
            assert requested == [signum]  # the first is only noted, for the loop to stop after its step
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs at the next bytecode; the sleep is cut short by it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert type(raised.value) is stop and stopped_status(raised.value) == 128 + signum

"""convert stopped by SIGINT / SIGTERM keeps the step it was in, and --resume continues it to the same
result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from mabert_hw.cli import main
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
    assert main(command(out)) == 130
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

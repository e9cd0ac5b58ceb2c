"""Review of the MA-BERT loader, the PoWER-BERT search and the --retention config: a malformed config.json
beside an official .pt and an MA directory missing a key are one-line errors (they were tracebacks); a loss
of exactly the accuracy budget is within it (floating point put some such losses a few ulp above); a
retention config whose values are not counts ("42", 9.7, true) or whose seq_len is not a length is refused
(they were read as other schedules, or crashed `profile`)."""

from __future__ import annotations

import json
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from mabert_hw.cli import main
from mabert_hw.power_search import Scored, choose, greedy_search

from .test_cli_inputs_eval import error_line


# 1. MA-BERT checkpoints: bad input is a one-line error

@pytest.mark.parametrize("text,message", [("{not json", "not a readable JSON config"),
                                          ("[1, 2]", "config must be a JSON object")])
def test_official_file_with_a_malformed_config_beside_it_is_a_one_line_error(tmp_path, capsys, text, message):
    pytest.importorskip("torch")
    from .test_ma_model import random_official_state, save_official, tiny_ma

    spec = tiny_ma(share=False)
    path = save_official(tmp_path, spec, random_official_state(spec))
    (tmp_path / "config.json").write_text(text)
    assert main(["profile", str(path), "--seq-len", "8"]) == 2
    line = error_line(capsys)
    assert str(tmp_path / "config.json") in line and message in line


@pytest.mark.parametrize("missing", ["embeddings.word_embeddings.weight", "encoder.layer.0.intermediate.dense.weight",
                                     "embeddings.position_embeddings.weight"])
def test_ma_directory_missing_a_key_is_a_one_line_error(tmp_path, capsys, missing):
    pytest.importorskip("torch")
    from safetensors.numpy import save_file

    from .test_ma_model import random_official_state, tiny_ma

    spec = tiny_ma(share=False)
    state = {k.removeprefix("bert."): v.numpy() for k, v in random_official_state(spec).items()
             if not k.startswith("cls.") and k.removeprefix("bert.") != missing}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "num_attention_heads": spec.heads, "softmax_input_size": spec.variant.softmax_input,
        "softmax_hidden_layer_size": spec.variant.softmax_hidden, "share_softmax_nn": False}))
    assert main(["profile", str(tmp_path), "--seq-len", "8"]) == 2
    assert error_line(capsys) == f"mabert-hw: error: missing key {missing}"


# 2. PoWER-BERT search: a loss of exactly the budget is within it

N = 100  # examples; one example is exactly 100 / N = 1 accuracy point
BASELINE_CORRECT = (7, 14, 28, 30, 55, 59)  # correct counts where 100 * mean(a) - 100 * mean(a - 1) > 1.0 in floats


def scored(retention, correct: int, flops: int, family: str) -> Scored:
    """A schedule scored as Scorer scores it: 100 x the mean of N right/wrong predictions."""
    right = np.arange(N) < correct
    return Scored(retention, 100.0 * float(right.mean()), flops, family)


@pytest.mark.parametrize("correct", BASELINE_CORRECT)
def test_choose_takes_a_schedule_that_loses_exactly_the_budget(correct):
    assert Fraction(100 * (correct - (correct - 1)), N) == 1  # the loss, exactly: one example, 1 point
    baseline = scored(None, correct, 1000, "baseline")
    cheaper = scored((3,), correct - 1, 600, "geometric")
    assert choose([baseline, cheaper], baseline, budget_loss=1.0) is cheaper


@pytest.mark.parametrize("correct", BASELINE_CORRECT)
def test_greedy_cuts_while_the_loss_is_exactly_the_budget(correct):
    """One layer of N = 4 slots, cut by 3/4 down to 1: every cut loses one example (1.0 point) against the
    baseline, within a budget of 1.0, so the greedy path is every cut, 4 -> 3 -> 2 -> 1."""
    def scorer(retention, family):
        if retention is None:
            return scored(None, correct, 4000, family)
        return scored(retention, correct - 1, 1000 * retention[0], family)

    scorer.ck = SimpleNamespace(spec=SimpleNamespace(layers=1))
    path = greedy_search(scorer, seq_len=4, budget_loss=1.0)
    assert [s.retention for s in path] == [(3,), (2,), (1,)]


# 3. --retention CONFIG.json: values that are not counts are refused, not reinterpreted

@pytest.mark.parametrize("config", [
    {"retention": "42"},  # was read character by character: 4,2
    {"retention": [9.7, 4.2, 3, 2, 1, 1]},  # was cut to 9,4,...
    {"retention": [True] * 6},  # was 1,1,...
])
def test_retention_that_is_not_a_list_of_counts_is_refused(tmp_path, capsys, config):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(config))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 2
    assert "retention must be a list of integers" in error_line(capsys)


@pytest.mark.parametrize("seq_len", [True, "64", 0])
def test_searched_seq_len_that_is_not_a_length_is_refused(tmp_path, capsys, seq_len):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"retention": [8, 6, 4, 2, 1, 1], "seq_len": seq_len}))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 2
    assert "seq_len must be a positive integer" in error_line(capsys)


def test_searched_seq_len_sets_the_profiled_length(tmp_path, capsys):
    """A valid config still sets the length: T_l = min(l_j, T_(l-1)) from T_0 = 16."""
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"retention": [8, 6, 4, 2, 1, 1], "seq_len": 16}))
    assert main(["profile", "minilm-l6", "--retention", str(path)]) == 0
    assert "16 -> 8 -> 6 -> 4 -> 2 -> 1 -> 1" in capsys.readouterr().out

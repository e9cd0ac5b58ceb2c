"""The PoWER-BERT search's accuracy budget: a schedule losing exactly the budget is within it, for choose()
and for the greedy path, although in floats 100 * mean(a) - 100 * mean(a - 1) can come out a few ulp
above 1.0."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from mabert_hw.power_search import Scored, choose, greedy_search


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

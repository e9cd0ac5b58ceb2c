"""Follow-ups from using `sweep` and `quant-error` as a user: repeated grid values, and the cosine of
quant-error against an all-zero tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mabert_hw.errors import UserError
from mabert_hw.eval.sweep import COLUMNS, append_result, config_key, done_keys, load_grid
from mabert_hw.quant.error import compare


@pytest.mark.parametrize("text", ["act_bits = [8, 8]\n", "percentile = [99, 99.0]\nact_bits = [4, 8]\n"])
def test_grid_with_a_repeated_value_is_refused(tmp_path, text):
    # before: both points were kept, so the sweep evaluated one configuration twice and wrote two rows
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_grid(path)
    assert str(path) in str(error.value) and "repeated" in str(error.value)


def test_grid_with_distinct_values_keeps_every_point(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text("act_bits = [4, 8]\nweight_bits = [4, 8]\n")
    assert len(load_grid(path)) == 4


@pytest.mark.parametrize("ref, got", [
    (np.array([1.0, -2.0, 3.0]), np.zeros(3)),  # every code rounded to zero: nothing of ref survives
    (np.zeros(3), np.array([0.5, 0.0, -1.0])),
    (np.array([1.0, -2.0, 3.0]), np.array([2.0, -4.0, 6.5])),
])
def test_cosine_matches_torch(ref, got):
    # before: 1.0 (a perfect score) whenever either side was all zero
    expected = torch.nn.functional.cosine_similarity(torch.tensor(ref), torch.tensor(got), dim=0).item()
    assert compare(ref, got)["cosine"] == pytest.approx(expected, abs=1e-6)


def test_cosine_of_two_zero_tensors_is_one():
    # equal tensors (noise 0, SQNR inf): full agreement, where torch's eps-guarded form says 0
    assert compare(np.zeros(4), np.zeros(4)) == {"sqnr_db": np.inf, "cosine": 1.0, "max_abs_err": 0.0}


def test_resume_skips_a_config_whose_grid_spells_a_number_field_as_an_integer(tmp_path):
    # before: a row written with percentile = 99.0 did not match the grid point percentile = 99 (the same
    # config), so --resume evaluated it again and wrote a second row
    out = tmp_path / "results.csv"
    row = {"key": '{"act_bits":8,"percentile":99.0}', "metric": 80.0, "seconds": 1.0, "overflows": 0}
    append_result(out, row, list(COLUMNS))
    grid = tmp_path / "grid.toml"
    grid.write_text("act_bits = [8]\npercentile = [99]\n")
    assert [config_key(p) in done_keys(out) for p in load_grid(grid)] == [True]


def test_keys_written_with_integer_numbers_still_match(tmp_path):
    out = tmp_path / "results.csv"
    append_result(out, {"key": '{"percentile":99}', "metric": 80.0, "seconds": 1.0, "overflows": 0}, list(COLUMNS))
    assert done_keys(out) == {config_key({"percentile": 99.0})}

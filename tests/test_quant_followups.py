"""Follow-ups from using `sweep` and `quant-error` as a user: repeated grid values, and the cosine of
quant-error against an all-zero tensor."""

from __future__ import annotations

import csv
import re
import time
from contextlib import ExitStack

import numpy as np
import pytest
import torch

from mabert_hw.errors import UserError
from mabert_hw.eval import sweep
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


def _evaluate_or_fail(job):
    """A stand-in for sweep.evaluate (inherited by the forked workers): act_bits = 4 fails at once, the
    others finish after it."""
    if job.config["act_bits"] == 4:
        raise ValueError("out of range")
    time.sleep(0.5)
    return {**job.config, "key": config_key(job.config), "metric": 10.0 * job.config["act_bits"], "seconds": 0.5,
            "overflows": 0}


@pytest.mark.parametrize("workers", [1, 2, "dask"])
def test_a_failing_job_loses_no_other_row(tmp_path, monkeypatch, workers):
    # before: the first failure ended the sweep, so the rows of the jobs still running or not started never
    # reached the CSV, and (workers > 1) the pool was left to the interpreter's exit
    monkeypatch.setattr(sweep, "evaluate", _evaluate_or_fail)
    jobs = [sweep.Job("minilm", "stsb", "d", None, {"act_bits": bits}, "c") for bits in (4, 6, 8, 12)]
    out = tmp_path / "results.csv"
    with ExitStack() as stack, pytest.raises(UserError) as error:
        if workers == "dask":  # a failing future on a cluster, as on the pool
            distributed = pytest.importorskip("dask.distributed")
            cluster = stack.enter_context(distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False))
            sweep.run_sweep(jobs, out, scheduler=stack.enter_context(distributed.Client(cluster)))
        else:
            sweep.run_sweep(jobs, out, workers=workers)
    assert str(error.value) == '1 of 4 configurations failed (their rows are not in the output): ' \
                               '{"act_bits":4}: ValueError: out of range'
    with open(out, newline="") as f:
        metrics = {row["act_bits"]: float(row["metric"]) for row in csv.DictReader(f)}
    assert metrics == {"6": 60.0, "8": 80.0, "12": 120.0}


@pytest.mark.parametrize("text", ["", "# act_bits = [4, 8]\n"])
def test_empty_grid_is_refused(tmp_path, text):
    # before: a grid with no field and no rule was run as one configuration, the defaults
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: no QuantConfig field and no rule; "):
        load_grid(path)


def test_grid_of_rules_alone_is_one_configuration(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[[rule]]\nkind = "softmax"\nact_bits = 16\n')
    assert load_grid(path) == [{"rule": [{"kind": "softmax", "act_bits": 16}]}]


def test_ort_requant_of_an_accumulator_wider_than_32_bits_is_kept_exact():
    # acc_bits > 32 with requant = "ort" stays allowed: a wider accumulator requantized in float32 (a design
    # point, not onnxruntime itself) is well defined, unlike tflite's int64 products that wrap past 2^32
    from mabert_hw.quant import config as qconfig
    from mabert_hw.quant.formats import IntFormat
    from mabert_hw.quant.requant import requantize

    assert qconfig.from_dict({"acc_bits": 40}).settings("l", "linear").acc_bits == 40
    acc = np.array([[2 ** 32 + 12345, -(2 ** 32) - 7, 1000]], np.int64)
    y_scale = 2 ** 32 * 1e-5 / 100  # acc * x_s * w_s / y_s = 100 * acc / 2^32
    got = requantize(acc, "ort", 0.01, np.full(3, 1e-3), y_scale, 0, IntFormat(16, True))
    assert got.tolist() == [[100, -100, 0]]


def test_a_sweep_given_a_scheduler_address_closes_its_client(tmp_path, monkeypatch):
    # before: the Client that run_sweep opened for an address stayed connected after the sweep returned
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.setattr(sweep, "evaluate", _evaluate_or_fail)
    jobs = [sweep.Job("minilm", "stsb", "d", None, {"act_bits": bits}, "c") for bits in (6, 8)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster:
        rows = sweep.run_sweep(jobs, tmp_path / "results.csv", scheduler=cluster.scheduler_address)
        assert sorted(row["metric"] for row in rows) == [60.0, 80.0]
        with pytest.raises(ValueError, match="No clients found"):
            distributed.default_client()

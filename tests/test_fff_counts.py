"""FFF counting rule vs closed forms and vs torch's FlopCounterMode; the bench-ffn command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mabert_hw.cli import main
from mabert_hw.cost.counts import count_ops, trace
from mabert_hw.bench.ffn import Problem, implementations, random_fff
from mabert_hw.spec import PRESETS
from tests.tolerances import FFF_LAYER_VS_TORCH_ATOL


def test_fff_trace_counts_dots_axpys_and_rows_in_closed_form():
    B, T, depth, K = 2, 16, 11, 2
    spec = PRESETS["bert-base-uncased"].with_variant(ffn="fff", fff_depth=depth, fff_trees=K)
    fff = [c for c in count_ops(trace(spec, B, T)).counts if c.op.kind == "fff"]
    assert len(fff) == spec.layers
    C = spec.hidden
    visits = B * T * K * (depth + 1)
    c = fff[0]
    assert c.macs == visits * (C + C)  # one dot of C and one axpy of C per visited node
    assert c.elementwise == {"add": 2 * visits, "mul": 3 * visits, "erf": visits, "cmp": B * T * K * depth}
    distinct = K * sum(min(2 ** level, B * T) for level in range(depth + 1))  # levels 0..4 whole, then 32 a level
    assert distinct == K * (31 + 7 * 32)
    assert c.weight_bytes == 4 * distinct * (C + 1 + C)  # each touched row once: well under the tree
    assert c.weight_bytes < 4 * c.params
    assert c.params == K * (2 ** (depth + 1) - 1) * (2 * C + 1)


def test_fff_dot_macs_match_flop_counter_of_the_torch_gather_form():
    """FlopCounterMode sees the bmm dot products of FFF.forward_gather (not the axpy, an elementwise
    multiply-add in torch): its GEMM FLOPs must be 2 * dot_macs."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from mabert_hw.torch_ref.fff import FFF

    M, C, depth, K = 10, 24, 5, 3
    module = FFF(C, depth, K).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.forward_gather(torch.zeros(M, C))
    problem = Problem(hidden=C, depth=depth, trees=K, tokens=M, dense_width=4 * C)
    assert counter.get_total_flops() == 2 * problem.walk()["dot_macs"]


def test_mac_ratio_of_ultrafastbert_1x11_against_bert_base_ff():
    problem = Problem(hidden=768, depth=11, trees=1, tokens=1, dense_width=3072)
    walk = problem.walk()
    assert walk["node_dots"] == 12 and walk["comparisons"] == 11
    assert problem.mac_ratio() == (2 * 768 * 3072) / (12 * 2 * 768)  # = 3072 / 12 = 256
    # the paper's 341x is neurons: 4095 of a dense layer as wide as the tree vs 12 visited
    assert Problem(768, 11, 1, 1, 4095).mac_ratio() == pytest.approx(4095 / 12)


def test_bench_ffn_runs_small_and_reports_json(capsys):
    pytest.importorskip("numba")
    assert main(["bench-ffn", "--hidden", "16", "--depth", "3", "--tokens", "64", "--dense-width", "32",
                 "--rounds", "1", "--no-torch", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = {row["impl"] for row in report["rows"]}
    assert names == {"dense-numpy", "dense-fast", "dense-numpy-gemms", "fff-numba", "fff-numba-one-pass",
                     "fff-numba-one-path", "fff-numpy-gather", "io-floor"}
    assert set(report["cpu_seconds"]) == names and all(len(s) == 1 for s in report["cpu_seconds"].values())
    assert report["fff_numba_vs_numpy_maxdiff"] < FFF_LAYER_VS_TORCH_ATOL
    assert report["dense_fast_vs_numpy_maxdiff"] < FFF_LAYER_VS_TORCH_ATOL
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]  # which CPU the record is from
    with pytest.raises(SystemExit) as exit_:  # a usage error
        main(["bench-ffn", "--depth", "40"])
    assert exit_.value.code == 2 and "argument --depth: expected an integer in 0..20, got 40" in capsys.readouterr().err


def test_bench_ffn_table_prints_the_mac_ratio_unrounded(capsys):
    """2 * 16 * 1 dense MACs per token against 4 levels * 2 * 16: 0.25, which one decimal made 0.2."""
    pytest.importorskip("numba")
    assert main(["bench-ffn", "--hidden", "16", "--depth", "3", "--tokens", "16", "--dense-width", "1",
                 "--rounds", "1", "--no-torch"]) == 0
    assert "theoretical MAC ratio dense/FFF: 0.25x;" in capsys.readouterr().out


def test_the_io_floor_copies_x_and_the_table_states_its_bound(capsys):
    """io-floor reads x and writes it to y (nothing computed), the least DRAM traffic of any FFN kernel;
    the table states the dense FF over it as the bound. A width off the cache line gets no such row."""
    pytest.importorskip("numba")
    problem = Problem(32, 3, 1, 48, 64)
    x = random_fff(problem, np.random.default_rng(0))[0]  # implementations' x, from the same seed
    assert np.array_equal(implementations(problem, with_torch=False)["io-floor"](), x)
    assert "io-floor" not in implementations(Problem(24, 3, 1, 48, 64), with_torch=False)
    assert main(["bench-ffn", "--hidden", "32", "--depth", "3", "--tokens", "48", "--dense-width", "64",
                 "--rounds", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("io-floor ") for line in out.splitlines())  # its row in the table
    assert "io-floor: x read and y written once with the walk's non-temporal stores, nothing computed" in out


def test_one_path_form_walks_every_token_as_token_0():
    """fff-numba-one-path (the official CPU benchmark's setting) gives every token token 0's output,
    the one the NumPy gather walk computes for token 0."""
    pytest.importorskip("numba")
    impls = implementations(Problem(16, 4, 2, 40, 32), with_torch=False)
    gathered = np.array(impls["fff-numpy-gather"]())
    one_path = np.array(impls["fff-numba-one-path"]())
    assert np.all(one_path == one_path[0])
    np.testing.assert_allclose(one_path[0], gathered[0], atol=FFF_LAYER_VS_TORCH_ATOL)


def test_the_ceiling_is_the_dense_ff_over_the_io_floor():
    from mabert_hw.cli.bench_ffn import ceiling

    rows = [{"impl": "fff-numba", "median_ms": 20.0, "speedup_vs_dense": 30.0, "speedup_vs_gemms": 28.0},
            {"impl": "io-floor", "median_ms": 4.6, "speedup_vs_dense": 126.04, "speedup_vs_gemms": 113.3}]
    (line,) = ceiling(rows)
    assert line.endswith("4.6 ms: a kernel that reads and writes them so gains at most 126x over the dense FF here")
    assert ceiling(rows[:1]) == []  # no io-floor row (a width off the cache line): no bound stated


def test_the_target_is_the_best_dense_ff_over_the_ratio(capsys):
    from mabert_hw.bench.ffn import target

    rows = [{"impl": "dense-numpy", "median_ms": 600.0, "speedup_vs_dense": 0.9, "dense": "dense-fast"},
            {"impl": "dense-fast", "median_ms": 546.0, "speedup_vs_dense": 1.0, "dense": "dense-fast"},
            {"impl": "fff-numba", "median_ms": 15.6, "speedup_vs_dense": 35.0, "dense": "dense-fast"}]
    assert target(rows, 78) == {"ratio": 78, "dense": "dense-fast", "budget_ms": 7.0, "fff_numba_ms": 15.6,
                                "speedup": 35.0, "met": False}
    assert target(rows, 35)["met"] and not target(rows, 35.5)["met"]

    pytest.importorskip("numba")
    argv = ["bench-ffn", "--hidden", "16", "--depth", "2", "--tokens", "32", "--dense-width", "32", "--rounds", "1",
            "--no-torch", "--format", "json", "--target", "0.001"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    walk = next(row for row in report["rows"] if row["impl"] == "fff-numba")
    dense = next(row for row in report["rows"] if row["impl"] == walk["dense"])
    assert report["target"]["budget_ms"] == pytest.approx(dense["median_ms"] / 0.001)
    assert report["target"]["met"] is True  # any walk is 0.001x as fast as the dense FF
    with pytest.raises(SystemExit) as exit_:
        main(argv[:-2] + ["--target", "0"])
    assert exit_.value.code == 2 and "argument --target: expected a positive number, got 0" in capsys.readouterr().err

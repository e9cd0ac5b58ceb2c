"""Cycle model: GEMM cycles equal SCALE-Sim 3.0.0 exactly; vector, memory and energy rules equal
their closed forms; every op of a trace is priced or reported."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from math import ceil
from pathlib import Path

import pytest
from .conftest import TINY_SPECS

from mabert_hw.backends.base import Op
from mabert_hw.cost import counts, hardware
from mabert_hw.cost.counts import count_op, trace
from mabert_hw.cost.cycles import estimate, gemm_cycles, gemm_dims, op_cost
from mabert_hw.errors import UserError
from mabert_hw.spec import PRESETS

from .helpers import EDGE_TOML

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CSV = GOLDEN / "scalesim_gemm_cycles.csv"


def golden_cases() -> list[dict]:
    lines = [line for line in GOLDEN_CSV.read_text().splitlines() if not line.startswith("#")]
    return [{k: (v if k == "dataflow" else int(v)) for k, v in row.items()} for row in csv.DictReader(lines)]


def test_golden_data_covers_the_brief():
    cases = golden_cases()
    assert len(cases) >= 12
    assert {c["dataflow"] for c in cases} == {"os", "ws", "is"}
    assert any(c["m"] % c["rows"] or c["n"] % c["cols"] or c["k"] % c["rows"] for c in cases)
    assert any(c["rows"] != c["cols"] for c in cases)
    assert GOLDEN_CSV.read_text().startswith("# scalesim 3.0.0")


@pytest.mark.parametrize("case", golden_cases(), ids=lambda c: "{m}x{k}x{n}-{rows}x{cols}-{dataflow}".format(**c))
def test_gemm_cycles_equal_scalesim(case):
    ours = gemm_cycles(case["m"], case["k"], case["n"], case["rows"], case["cols"], case["dataflow"])
    assert ours == case["compute_cycles"]


def _scalesim_python() -> str | None:
    if importlib.util.find_spec("scalesim") is not None:
        return sys.executable
    return os.environ.get("SCALESIM_PYTHON")  # e.g. /tmp/scalesim-venv/bin/python


@pytest.mark.skipif(_scalesim_python() is None, reason="scalesim not importable and SCALESIM_PYTHON not set")
@pytest.mark.parametrize("m, k, n, rows, cols, dataflow", [(37, 129, 65, 16, 8, "ws"), (100, 50, 7, 8, 8, "is"),
                                                            (5, 300, 33, 32, 32, "os")])
def test_scalesim_rerun(m, k, n, rows, cols, dataflow):
    out = subprocess.run([_scalesim_python(), str(GOLDEN / "scalesim_gemm.py"), *map(str, (m, k, n, rows, cols)),
                          dataflow], capture_output=True, text=True, check=True, timeout=300)
    assert int(out.stdout.strip().splitlines()[-1]) == gemm_cycles(m, k, n, rows, cols, dataflow)


@pytest.mark.parametrize("spec", TINY_SPECS[:2], ids=lambda s: s.name)
def test_gemm_dims_cover_the_counted_macs(spec):
    ops = [op for op in trace(spec, 2, 7) if op.kind in counts.GEMM_KINDS]
    assert {op.kind for op in ops} == {"linear", "matmul"}
    for op in ops:
        groups, m, k, n = gemm_dims(op)
        assert groups * m * k * n == count_op(op).macs, op.name
        if op.kind == "matmul":
            assert groups == 2 * spec.heads  # one GEMM per (batch, head)


def test_gemm_dims_of_bert_layer_in_closed_form():
    """(G, M, K, N) of each GEMM of a BERT-base layer at B = 2, T = 7 (a swapped M and N would keep the
    product, and the MACs, but not the cycles of a rectangular array)."""
    B, T, C, F, H, D = 2, 7, 768, 3072, 12, 64
    dims = {op.name.removeprefix("encoder.layer.0."): gemm_dims(op)
            for op in trace(PRESETS["bert-base-uncased"], B, T) if op.name.startswith("encoder.layer.0.")
            and op.kind in counts.GEMM_KINDS}
    assert dims["attention.self.query"] == (1, B * T, C, C)
    assert dims["attention.self.scores"] == (B * H, T, D, T)  # Q (T, D) x K^T (D, T)
    assert dims["attention.self.context"] == (B * H, T, T, D)  # P (T, T) x V (T, D)
    assert dims["intermediate.dense"] == (1, B * T, C, F)
    assert dims["output.dense"] == (1, B * T, F, C)


def test_matmul_is_one_gemm_per_batch_and_head():
    hw = hardware.load("edge-32x32-int8")
    op = Op("encoder.layer.0.attention.self.scores", "matmul", ((3, 4, 50, 16), (3, 4, 50, 16)), (), (3, 4, 50, 50),
            (("transpose_b", True),))
    cost = op_cost(op, hw)
    assert cost.compute_cycles == 3 * 4 * (ceil(16 / 32) * ceil(50 / 32) * (50 + 2 * 32 + 32 - 2) - 1)


def test_softmax_vector_cycles_and_energy_closed_form():
    hw = hardware.load("ma-motivation")
    rows, n = 2 * 3 * 40, 40
    op = Op("encoder.layer.0.attention.self.softmax", "softmax", ((2, 3, 40, 40),), (), (2, 3, 40, 40))
    cost = op_cost(op, hw)
    # max over n-1, sum + subtract (2n-1 adds), n exp, n div per row
    work = rows * ((n - 1) + (2 * n - 1) + n * hw.primitive_cycles("exp") + n * hw.primitive_cycles("div"))
    assert cost.unit == "vector" and cost.compute_cycles == ceil(work / hw.lanes)
    pj = rows * ((n - 1) * hw.primitive_pj("max") + (2 * n - 1) * hw.primitive_pj("add")
                 + n * hw.primitive_pj("exp") + n * hw.primitive_pj("div"))
    assert cost.energy_pj["vector"] == pytest.approx(pj)


def test_memory_bound_overlap_and_energy_of_a_linear():
    hw = hardware.load("tpu-256x256-int8")  # 34 GB/s: a batch-1 linear is weight-bandwidth bound
    op = Op("encoder.layer.0.output.dense", "linear", ((1, 8, 3072),), ((768, 3072), (768,)), (1, 8, 768))
    on, off = op_cost(op, hw), op_cost(op, hw.with_overlap(False))
    weight_bytes = (768 * 3072 + 768) * hw.array_bytes
    assert on.dram_bytes == weight_bytes  # activations (8 tokens) fit on chip
    assert on.memory_cycles == ceil(weight_bytes / (hw.dram_gb_per_s / hw.clock_ghz))
    assert on.bound == "memory" and on.cycles == on.memory_cycles
    assert off.cycles == off.compute_cycles + off.memory_cycles
    macs = 8 * 3072 * 768
    table = hardware.energy_table("horowitz45")
    assert on.energy_pj["mac"] == pytest.approx(macs * (table.mul("int8") + table.add("int32")))
    assert on.energy_pj["dram"] == pytest.approx(weight_bytes * table.dram_pj_per_64bit / 8)
    assert on.utilisation == pytest.approx(macs / (256 * 256 * on.cycles))


def test_activations_spill_to_dram_when_they_do_not_fit():
    hw = hardware.load("edge-32x32-int8")  # 384 KiB activation SRAM, fp16 vector
    small = Op("x.scale", "scale", ((1, 1, 8, 8),), (), (1, 1, 8, 8))
    big = Op("x.scale", "scale", ((1, 12, 512, 512),), (), (1, 12, 512, 512))
    assert op_cost(small, hw).dram_bytes == 0
    assert op_cost(big, hw).dram_bytes == 2 * 12 * 512 * 512 * hw.vector_bytes


def test_unpriced_ops_are_reported(tmp_path, monkeypatch):
    no_exp = tmp_path / "no-exp.toml"
    no_exp.write_text((hardware.HW_DIR / "edge-32x32-int8.toml").read_text().replace('exp = "lut"\n', ""))
    hw = hardware.load(str(no_exp))
    softmax = Op("s", "softmax", ((1, 1, 4, 4),), (), (1, 1, 4, 4))
    mystery = Op("m", "mystery", ((4,),), (), (4,))
    monkeypatch.setitem(counts.RULES, "conv", lambda op: (10, Counter()))
    conv = Op("c", "conv", ((4,),), (), (4,))
    result = estimate([softmax, mystery, conv], hw)
    assert result.costs == []
    reasons = dict((op.name, why) for op, why in result.unknown)
    assert "no implementation of 'exp'" in reasons["s"]
    assert "no counting rule" in reasons["m"]
    assert "no systolic-array mapping" in reasons["c"]


@pytest.mark.parametrize("name", hardware.preset_names())
def test_bert_base_is_fully_priced_and_totals_add_up(name):
    hw = hardware.load(name)
    ops = trace(PRESETS["bert-base-uncased"], 1, 128)
    result = estimate(ops, hw)
    assert result.unknown == [] and len(result.costs) == len(ops)
    total = result.total("cycles")
    assert sum(sum(c.cycles for c in g) for g in result.group(lambda c: c.op.kind).values()) == total
    assert sum(sum(c.cycles for c in g) for g in result.group(lambda c: c.op.layer).values()) == total
    assert all(0 <= c.utilisation <= 1 for c in result.costs)
    gemm_macs = sum(c.count.macs for c in result.costs)
    assert gemm_macs == sum(count_op(op).macs for op in ops)
    assert all(c.cycles >= max(c.compute_cycles, c.memory_cycles) for c in result.costs)


def test_fff_runs_on_the_vector_unit_and_gathers_are_memory_only():
    hw = hardware.load("edge-32x32-int8")
    spec = PRESETS["bert-base-uncased"].with_variant(ffn="fff", fff_depth=11, fff_trees=1)
    ops = {op.kind: op for op in trace(spec, 1, 16)}
    fff = op_cost(ops["fff"], hw)
    macs = count_op(ops["fff"]).macs
    primitives = count_op(ops["fff"]).elementwise + Counter(mul=macs, add=macs)  # one mul + one add per MAC
    work = sum(n * hw.primitive_cycles(p) for p, n in primitives.items())
    assert fff.unit == "vector" and fff.compute_cycles == ceil(work / hw.lanes)
    gather = Op("encoder.layer.0.power.select", "gather", ((1, 16, 768), (1, 8)), (), (1, 8, 768))
    cost = op_cost(gather, hw)
    assert cost.unit == "memory" and cost.compute_cycles == 0


def test_fff_pays_sram_reads_for_every_gathered_weight_element():
    """Each visit of each token reads its node's w_in row (C), bias (1) and w_out column (C_out) from the
    filter SRAM, as a GEMM pays its filter reads: 16 tokens x 12 visits x (768 + 1 + 768) elements."""
    hw = hardware.load("edge-32x32-int8")
    spec = PRESETS["bert-base-uncased"].with_variant(ffn="fff", fff_depth=11, fff_trees=1)
    fff = op_cost(next(op for op in trace(spec, 1, 16) if op.kind == "fff"), hw)
    gathered = 16 * 12 * (768 + 1 + 768) * hw.vector_bytes
    activations = (16 * 768 + 16 * 768) * hw.vector_bytes  # x read and y written once
    assert fff.sram_bytes == activations + gathered
    expected = (activations * hw.energy.sram_pj_per_byte(hw.ifmap_sram_kib)
                + gathered * hw.energy.sram_pj_per_byte(hw.filter_sram_kib))
    assert fff.energy_pj["sram"] == pytest.approx(expected, rel=1e-12)


def test_dram_time_past_a_cycle_counter_is_refused(tmp_path):
    """1e-300 GB/s is a normal float, but the 2*T*C = 2*8*384 word-embedding bytes it moves at 1 GHz
    take 6144 / 1e-300 cycles, past 2^63 (and past a float: ceil raised OverflowError)."""
    path = tmp_path / "slow.toml"
    path.write_text(EDGE_TOML.replace("dram_gb_per_s = 17.1", "dram_gb_per_s = 1e-300"))
    with pytest.raises(UserError, match="more than 2\\^63 cycles"):
        estimate(trace(PRESETS["minilm-l6"], 1, 8), hardware.load(path))


# pJ per byte of a 64-bit SRAM read (Horowitz 2014, ISSCC, the table energy-horowitz45.toml cites: 8 KB 10 pJ,
# 32 KB 20 pJ, 1 MB 100 pJ per 64 bits), at the smallest listed capacity at least the buffer's
SRAM_PJ_PER_BYTE = {8: 10.0 / 8, 32: 20.0 / 8, 1024: 100.0 / 8}


def sram_traffic_closed_form(dataflow, G, M, K, N, R, C):
    """(ifmap reads, filter reads, ofmap accesses) of G GEMMs (M, K) x (K, N) on an R x C array, from the
    mapping SCALE-Sim's compute cycles describe (what stays in the PEs, what streams past them):
    - OS: an R x C tile of the output (R rows of M, C columns of N) stays; each of the ceil(M/R) * ceil(N/C)
      tiles streams its R x K ifmap rows and K x C filter columns in, and writes its sums once:
      ifmap M*K*ceil(N/C), filter K*N*ceil(M/R), ofmap M*N.
    - WS: an R x C filter tile (R of K, C of N) stays, each loaded once (K*N); for each of the ceil(N/C)
      column tiles all M ifmap rows stream past (M*K*ceil(N/C)). Each of the ceil(K/R) folds leaves M x C
      partial sums: the first fold writes them, every later one reads and writes them back.
    - IS: an R x C ifmap tile (R of K, C of M) stays, each loaded once (M*K); for each of the ceil(M/C)
      tiles all N filter columns stream past (K*N*ceil(M/C)); partial sums over the K folds as in WS."""
    folds = -(-K // R)
    partial_sums = M * N * (1 + 2 * (folds - 1))
    per_gemm = {"os": (M * K * -(-N // C), K * N * -(-M // R), M * N),
                "ws": (M * K * -(-N // C), K * N, partial_sums),
                "is": (M * K, K * N * -(-M // C), partial_sums)}[dataflow]
    return tuple(G * e for e in per_gemm)


GEMM_OPS = {  # (op, (G, M, K, N)) with M, K, N not multiples of the array and M != N
    "linear": (Op("encoder.layer.0.attention.self.query", "linear", ((1, 50, 200),), ((72, 200), (72,)), (1, 50, 72)),
               (1, 50, 200, 72)),
    "matmul": (Op("encoder.layer.0.attention.self.scores", "matmul", ((2, 3, 50, 40), (2, 3, 70, 40)), (),
                  (2, 3, 50, 70), (("transpose_b", True),)), (6, 50, 40, 70)),
}


@pytest.mark.parametrize("op_name", list(GEMM_OPS))
@pytest.mark.parametrize("array", ["edge", "rectangular"])
@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_gemm_sram_bytes_and_energy_per_dataflow_closed_form(dataflow, array, op_name):
    """edge-32x32-int8 with its dataflow replaced: int8 ifmap and filter reads are 1 byte, ofmap accesses (partial
    sums, or OS's finished sums) are at the int32 accumulator's 4 bytes. "rectangular" makes the array 32 x 16 (so
    ceil(M/R) != ceil(M/C)) and gives each buffer its own price (8, 32, 1024 KiB), so a swapped R and C or a read
    priced at another buffer's energy shows; the edge preset's 256/128/128 KiB buffers all price at 1 MB's."""
    hw = replace(hardware.load("edge-32x32-int8"), dataflow=dataflow)
    if array == "rectangular":
        hw = replace(hw, cols=16, ifmap_sram_kib=8, filter_sram_kib=32, ofmap_sram_kib=1024)
        R, C, prices = 32, 16, (SRAM_PJ_PER_BYTE[8], SRAM_PJ_PER_BYTE[32], SRAM_PJ_PER_BYTE[1024])
    else:
        R, C, prices = 32, 32, (SRAM_PJ_PER_BYTE[1024],) * 3  # 256, 128, 128 KiB: above 32 KB, priced at 1 MB's
    assert hw.array_precision == "int8"
    operand_bytes, accumulator_bytes = 1, 4  # int8 operands, int32 accumulators
    op, dims = GEMM_OPS[op_name]
    ifmap, filt, ofmap = sram_traffic_closed_form(dataflow, *dims, R, C)
    cost = op_cost(op, hw)
    assert cost.unit == "array"
    assert cost.sram_bytes == operand_bytes * (ifmap + filt) + accumulator_bytes * ofmap
    expected_pj = (operand_bytes * ifmap * prices[0] + operand_bytes * filt * prices[1]
                   + accumulator_bytes * ofmap * prices[2])
    assert cost.energy_pj["sram"] == pytest.approx(expected_pj, rel=1e-12)


def test_dataflow_sram_traffic_differs_on_a_case_that_tells_them_apart():
    """The three closed forms above are not one formula in disguise: on the linear of GEMM_OPS each dataflow moves
    a different number of SRAM bytes (so a dataflow branch priced as another's fails the test above)."""
    op, _ = GEMM_OPS["linear"]
    edge = hardware.load("edge-32x32-int8")
    assert len({op_cost(op, replace(edge, dataflow=d)).sram_bytes for d in ("os", "ws", "is")}) == 3

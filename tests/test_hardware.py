"""Hardware descriptions: presets load, prices derive from the cited tables, bad files are UserErrors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.cost import hardware
from mabert_hw.cost.hardware import SPECIAL_FUNCTIONS, implementations
from mabert_hw.errors import UserError

from .helpers import EDGE_TOML

# Horowitz, ISSCC 2014, "Computing's energy problem", 45 nm operation-energy table, in pJ: the
# source the energy TOML cites, typed in again here so a wrong edit of the data file is caught.
HOROWITZ_ADD = {"int8": 0.03, "int16": 0.05, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}
HOROWITZ_MUL = {"int8": 0.2, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}
HOROWITZ_SRAM_64BIT = {8: 10.0, 32: 20.0, 1024: 100.0}
HOROWITZ_DRAM_64BIT_LOW = 1300.0

def test_every_preset_loads_and_prices_every_special_function():
    assert len(hardware.preset_names()) >= 4
    for name in hardware.preset_names():
        hw = hardware.load(name)
        assert hw.name == name
        for function in SPECIAL_FUNCTIONS:
            assert hw.primitive_cycles(function) >= 1, (name, function)
            assert hw.primitive_pj(function) > 0, (name, function)


def test_energy_table_is_horowitz_2014():
    table = hardware.energy_table("horowitz45")
    assert table.add_pj == HOROWITZ_ADD
    assert table.mul_pj == HOROWITZ_MUL
    assert table.sram_pj_per_64bit == HOROWITZ_SRAM_64BIT
    assert table.dram_pj_per_byte == HOROWITZ_DRAM_64BIT_LOW / 8


def test_derived_prices():
    edge = hardware.load("edge-32x32-int8")  # int8 array, fp16 vector
    assert edge.mac_pj == HOROWITZ_MUL["int8"] + HOROWITZ_ADD["int32"]  # int32 accumulator
    tpu2 = hardware.load("tpu-128x128-bf16")  # bf16 priced as fp16, fp32 accumulator
    assert tpu2.mac_pj == HOROWITZ_MUL["fp16"] + HOROWITZ_ADD["fp32"]
    assert edge.primitive_pj("cmp") == edge.primitive_pj("max") == HOROWITZ_ADD["fp16"]
    # exp.lut = 1 LUT read (2 fp16 entries from an 8 KiB SRAM) + 1 mul + 1 add at fp16
    lut_pj = 2 * 2 * HOROWITZ_SRAM_64BIT[8] / 8
    assert edge.primitive_pj("exp") == pytest.approx(lut_pj + HOROWITZ_MUL["fp16"] + HOROWITZ_ADD["fp16"])
    # SRAM: smallest listed capacity >= the buffer; beyond 1 MiB the 1 MiB figure
    table = edge.energy
    assert table.sram_pj_per_byte(8) == HOROWITZ_SRAM_64BIT[8] / 8
    assert table.sram_pj_per_byte(9) == HOROWITZ_SRAM_64BIT[32] / 8
    assert table.sram_pj_per_byte(24576) == HOROWITZ_SRAM_64BIT[1024] / 8
    assert edge.dram_bytes_per_cycle == edge.dram_gb_per_s / edge.clock_ghz


def test_software_recipes_are_one_instruction_per_cycle_and_compose():
    software = {f: implementations()[f, "software"] for f in SPECIAL_FUNCTIONS}
    for function, impl in software.items():
        assert impl.cycles == sum(impl.operations.values()), function
        assert "lut" not in impl.operations, function

    def ops(f):
        return {k: software[f].operations.get(k, 0) for k in ("add", "mul", "cmp")}

    exp, div, rsqrt = ops("exp"), ops("div"), ops("rsqrt")
    # sqrt = x * rsqrt(x)
    assert ops("sqrt") == {**rsqrt, "mul": rsqrt["mul"] + 1}
    # tanh = 1 - 2 / (exp(2x) + 1): 2x, exp, +1, div, 1 - .
    assert ops("tanh") == {"add": exp["add"] + 1 + div["add"] + 1, "mul": 1 + exp["mul"] + div["mul"],
                           "cmp": exp["cmp"]}
    # erf (A&S 7.1.26): |x|, p|x|, 1+, reciprocal (div - final mul), Horner deg 5, -x^2, exp, poly*exp, 1-, sign
    assert ops("erf") == {"add": 1 + div["add"] + 4 + exp["add"] + 1,
                          "mul": 1 + (div["mul"] - 1) + 5 + 1 + exp["mul"] + 1,
                          "cmp": 1 + exp["cmp"] + 1}


def test_ma_motivation_differs_from_edge_only_by_the_special_function_unit():
    edge, ma = hardware.load("edge-32x32-int8"), hardware.load("ma-motivation")
    assert all(impl.name == "software" for impl in ma.functions.values())
    assert all(impl.name != "software" for impl in edge.functions.values())
    same = ("clock_ghz", "rows", "cols", "dataflow", "array_precision", "lanes", "vector_precision",
            "ifmap_sram_kib", "filter_sram_kib", "ofmap_sram_kib", "dram_gb_per_s", "overlap")
    assert {k: getattr(edge, k) for k in same} == {k: getattr(ma, k) for k in same}


def test_a_user_file_loads(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text(EDGE_TOML.replace('dataflow = "ws"', 'dataflow = "os"').replace("rows = 32", "rows = 16"))
    hw = hardware.load(str(path))
    assert (hw.rows, hw.cols, hw.dataflow) == (16, 32, "os")
    assert tomllib.loads(path.read_text())["name"] == hw.name


@pytest.mark.parametrize("edit, message", [
    (('dataflow = "ws"', 'dataflow = "rs"'), "dataflow"),
    (('exp = "lut"', 'exp = "magic"'), "no implementation 'magic'"),
    (('exp = "lut"', 'expp = "lut"'), "unknown function 'expp' in .vector.functions. .known: exp, div"),  # was
    # "no implementation 'lut' of 'expp' (known: )"
    (("rows = 32\n", ""), "missing key 'rows'"),
    (("lanes = 32", "lanes = 0"), "lanes must be positive"),
    (('precision = "int8"', 'precision = "int4"'), "precision"),
    (("[memory]", "[memory"), "invalid TOML"),
])
def test_bad_files_are_user_errors(tmp_path: Path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(EDGE_TOML.replace(*edit))
    with pytest.raises(UserError, match=message):
        hardware.load(str(path))


def test_unknown_preset_and_missing_file():
    with pytest.raises(UserError, match="presets: edge-32x32-int8"):
        hardware.load("tpu-v9")
    with pytest.raises(UserError, match="no such hardware file"):
        hardware.load("/nonexistent/hw.toml")


@pytest.mark.parametrize("edit, message", [
    (("overlap = true", 'overlap = "false"'), "overlap must be true or false"),  # was read as on
    (("clock_ghz = 1.0", "clock_ghz = inf"), "clock_ghz must be positive"),  # was a ZeroDivisionError
    (("dram_gb_per_s = 17.1", "dram_gb_per_s = nan"), "dram_gb_per_s must be positive"),  # was a ValueError
    (("ifmap_sram_kib = 256", "ifmap_sram_kib = -256"), "ifmap_sram_kib must be positive"),  # spilled everything
    (("lanes = 32", "lanes = true"), "lanes must be positive and finite, got True"),  # was 1 lane
    (("rows = 32", "rows = 32.7"), "rows must be a whole number"),  # was 32 rows
    (("[vector.functions]\n", 'functions = "lut"\n[unused]\n'), "functions must be a table"),  # AttributeError
    # misspelt or made-up keys left the defaults in force without a word
    (("overlap = true", "overlapp = false"), r"unknown key memory.overlapp \(known: ifmap_sram_kib, "),
    (("clock_ghz = 1.0", "clock_ghz = 1.0\nclock_mhz = 500"), "unknown key clock_mhz"),
    (("rows = 32", "rows = 32\nbogus = 1"), "unknown key array.bogus"),
])
def test_hardware_values_of_the_wrong_kind_are_user_errors(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(EDGE_TOML.replace(*edit))
    assert path.read_text() != EDGE_TOML
    with pytest.raises(UserError, match=message):
        hardware.load(str(path))


def test_subnormal_dram_rate_is_refused(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(EDGE_TOML.replace("dram_gb_per_s = 17.1", "dram_gb_per_s = 1e-320"))
    with pytest.raises(UserError, match="dram_gb_per_s must be at least 2.23e-308"):
        hardware.load(path)
    assert main(["profile", "minilm-l6", "--seq-len", "8", "--hw", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1

"""Accelerators as data: a systolic array, a vector unit with priced special functions, SRAM, DRAM.

A hardware description is a TOML file (presets in mabert_hw/cost/hw/, schema in edge-32x32-int8.toml):
    clock_ghz, energy (a table name in hw/, e.g. "horowitz45")
    [array]  rows, cols, dataflow (os | ws | is), precision (int8 | int16 | fp16 | bf16 | fp32)
    [vector] lanes, precision, [vector.functions] exp/div/rsqrt/sqrt/erf/tanh -> implementation name
    [memory] ifmap_sram_kib, filter_sram_kib, ofmap_sram_kib, dram_gb_per_s, overlap
Sizes, rates and the clock are finite positive numbers (rows, cols, lanes whole ones), overlap a TOML
boolean (default true); anything else is refused with its key, never coerced.
Special-function implementations (software, lut, pwl, cordic, newton) live in hw/functions.toml as
cycles per element per lane and the basic operations (add, mul, cmp, lut read) they perform; their
energy is those operations priced at the vector precision. Energy tables cite their sources inline.

Derived prices, stated once:
- MAC energy = multiply at the array precision + add at the accumulator precision (int8 -> int32,
  16-bit floats -> fp32, fp32 -> fp32). bf16 is priced as fp16, int16 multiply as int32.
- cmp and max are priced as an add at the same precision.
- A LUT read is one (slope, intercept) pair = 2 elements at the vector precision read from an
  8 KiB SRAM, at that SRAM's energy per byte.
- SRAM energy per byte = the table's 64-bit read energy / 8 for the smallest listed capacity at least
  as large as the buffer (the 1 MiB figure above 1 MiB). DRAM energy per byte = 64-bit access / 8.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from ..inputs import read_toml
from ..spec import true_or_false

HW_DIR = Path(__file__).resolve().parent / "hw"
DATAFLOWS = ("os", "ws", "is")
PRECISION_BYTES = {"int8": 1, "int16": 2, "int32": 4, "fp16": 2, "bf16": 2, "fp32": 4}
ACCUMULATOR = {"int8": "int32", "int16": "int32", "int32": "int32", "fp16": "fp32", "bf16": "fp32", "fp32": "fp32"}
NATIVE_PRIMITIVES = ("add", "mul", "max", "cmp")  # 1 cycle on a vector lane
SPECIAL_FUNCTIONS = ("exp", "div", "rsqrt", "sqrt", "erf", "tanh")
BASIC_OPERATIONS = ("add", "mul", "cmp", "lut")
LUT_SRAM_KIB = 8  # the smallest SRAM the energy table prices (Horowitz's 8 KB cache); a function's table
# (exp's 64 slope/intercept pairs: 256 bytes at fp16) is far smaller, so this is its energy's upper bound
NOT_HARDWARE_FILES = ("functions", "energy-")


@dataclass(frozen=True)
class Implementation:
    """How one special function is computed per element on one lane."""

    name: str
    cycles: int
    operations: dict[str, int]  # basic operation -> count per element


@dataclass(frozen=True)
class EnergyTable:
    name: str
    add_pj: dict[str, float]
    mul_pj: dict[str, float]
    sram_pj_per_64bit: dict[int, float]  # capacity KiB -> pJ per 64-bit read
    dram_pj_per_64bit: float

    def _price(self, table: dict[str, float], what: str, precision: str) -> float:
        key = {"bf16": "fp16"}.get(precision, precision)
        if what == "mul" and key == "int16":
            key = "int32"
        if key not in table:
            raise UserError(f"energy table {self.name} has no {what} energy for {precision}")
        return table[key]

    def add(self, precision: str) -> float:
        return self._price(self.add_pj, "add", precision)

    def mul(self, precision: str) -> float:
        return self._price(self.mul_pj, "mul", precision)

    def sram_pj_per_byte(self, capacity_kib: float) -> float:
        fitting = [kib for kib in sorted(self.sram_pj_per_64bit) if kib >= capacity_kib]
        kib = fitting[0] if fitting else max(self.sram_pj_per_64bit)
        return self.sram_pj_per_64bit[kib] / 8

    @property
    def dram_pj_per_byte(self) -> float:
        return self.dram_pj_per_64bit / 8


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    clock_ghz: float
    rows: int
    cols: int
    dataflow: str
    array_precision: str
    lanes: int
    vector_precision: str
    functions: dict[str, Implementation]  # special function -> its implementation
    ifmap_sram_kib: float
    filter_sram_kib: float
    ofmap_sram_kib: float
    dram_gb_per_s: float
    overlap: bool
    energy: EnergyTable = field(repr=False)

    def describe(self) -> str:
        """One line: name (R x C dataflow precision, clock, overlap)."""
        return (f"{self.name} ({self.rows}x{self.cols} {self.dataflow} {self.array_precision}, {self.clock_ghz:g} GHz, "
                f"overlap {'on' if self.overlap else 'off'})")

    @property
    def array_bytes(self) -> int:
        return PRECISION_BYTES[self.array_precision]

    @property
    def accumulator_bytes(self) -> int:
        """Bytes of a partial sum in the ofmap buffer (int8 products accumulate in int32, bf16 in fp32)."""
        return PRECISION_BYTES[ACCUMULATOR[self.array_precision]]

    @property
    def vector_bytes(self) -> int:
        return PRECISION_BYTES[self.vector_precision]

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_gb_per_s / self.clock_ghz  # (1e9 B/s) / (1e9 cycles/s)

    @property
    def activation_sram_bytes(self) -> float:
        return (self.ifmap_sram_kib + self.ofmap_sram_kib) * 1024

    @property
    def mac_pj(self) -> float:
        return self.energy.mul(self.array_precision) + self.energy.add(ACCUMULATOR[self.array_precision])

    def primitive_cycles(self, primitive: str) -> int | None:
        """Issue cycles per element on one lane; None for a primitive this hardware cannot price."""
        if primitive in NATIVE_PRIMITIVES:
            return 1
        implementation = self.functions.get(primitive)
        return implementation.cycles if implementation else None

    def primitive_pj(self, primitive: str) -> float:
        if primitive in NATIVE_PRIMITIVES:
            return self.operation_pj("mul" if primitive == "mul" else "add")
        return sum(n * self.operation_pj(op) for op, n in self.functions[primitive].operations.items())

    def operation_pj(self, operation: str) -> float:
        precision = self.vector_precision
        if operation == "mul":
            return self.energy.mul(precision)
        if operation == "lut":
            return 2 * self.vector_bytes * self.energy.sram_pj_per_byte(LUT_SRAM_KIB)
        return self.energy.add(precision)  # add, cmp

    def with_overlap(self, overlap: bool) -> Hardware:
        return replace(self, overlap=overlap)


def preset_names() -> list[str]:
    return sorted(p.stem for p in HW_DIR.glob("*.toml") if not p.stem.startswith(NOT_HARDWARE_FILES))


@lru_cache(maxsize=None)
def implementations() -> dict[tuple[str, str], Implementation]:
    """(function, implementation name) -> Implementation, from hw/functions.toml."""
    table = read_toml(HW_DIR / "functions.toml", "function table")
    out = {}
    for function, variants in table.items():
        for name, entry in variants.items():
            ops = {op: int(entry.get(op, 0)) for op in BASIC_OPERATIONS if entry.get(op, 0)}
            out[function, name] = Implementation(name, int(entry["cycles"]), ops)
    return out


@lru_cache(maxsize=None)
def energy_table(name: str) -> EnergyTable:
    path = HW_DIR / f"energy-{name}.toml"
    if not path.exists():
        raise UserError(f"unknown energy table {name!r} (no {path.name} in {HW_DIR})")
    t = read_toml(path, "energy table")
    return EnergyTable(t["name"], dict(t["add"]), dict(t["mul"]),
                       {int(k): float(v) for k, v in t["sram_pj_per_64bit"].items()},
                       float(t["dram"]["pj_per_64bit"]))


def load(source: str | Path) -> Hardware:
    """A preset name (see preset_names()) or the path of a TOML file with the schema above."""
    path = Path(source)
    if not str(source).endswith(".toml"):
        if str(source) not in preset_names():
            raise UserError(f"unknown hardware {source!r}; presets: {', '.join(preset_names())}, or a FILE.toml")
        path = HW_DIR / f"{source}.toml"
    elif not path.exists():
        raise UserError(f"no such hardware file: {source}")
    try:
        return _from_table(read_toml(path, "hardware file"), path.stem)
    except KeyError as error:
        raise UserError(f"{path}: missing key {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: {error}") from None


def _table(t: dict, key: str, where: str = "") -> dict:
    """A TOML table: `functions = "lut"` where [vector.functions] belongs is refused, not iterated."""
    value = t[key]
    if not isinstance(value, dict):
        raise ValueError(f"{where}{key} must be a table, got {value!r}")
    return value


def _positive(t: dict, key: str) -> float:
    """A finite number, at least the smallest normal float (2.2e-308). TOML has inf and nan (a clock of
    inf leaves 0 DRAM bytes per cycle to divide by; nan passes every `<= 0` check), Python takes `true`
    for 1, and a subnormal such as 1e-320 GB/s makes bytes / rate overflow to inf: all are refused."""
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{key} must be positive and finite, got {value!r}")
    if value < sys.float_info.min:
        raise ValueError(f"{key} must be at least {sys.float_info.min:.3g} (the smallest normal float), got {value!r}")
    return float(value)


def _whole(t: dict, key: str) -> int:
    """A count of array rows, columns or lanes: 32.7 rows is a typo, not 32."""
    count = _positive(t, key)
    if not count.is_integer():
        raise ValueError(f"{key} must be a whole number, got {t[key]!r}")
    return int(count)


KNOWN_KEYS = {  # the schema above, table by table ("" the top level)
    "": ("name", "description", "clock_ghz", "energy", "array", "vector", "memory"),
    "array": ("rows", "cols", "dataflow", "precision"),
    "vector": ("lanes", "precision", "functions"),
    "memory": ("ifmap_sram_kib", "filter_sram_kib", "ofmap_sram_kib", "dram_gb_per_s", "overlap"),
}


def _refuse_unknown_keys(tables: dict[str, dict]) -> None:
    """A misspelt key (`overlapp = false`) would leave the default in force without a word."""
    for where, table in tables.items():
        for key in table:
            if key not in KNOWN_KEYS[where]:
                known = ", ".join(KNOWN_KEYS[where])
                raise ValueError(f"unknown key {f'{where}.' if where else ''}{key} (known: {known})")


def _from_table(t: dict, default_name: str) -> Hardware:
    array, vector, memory = _table(t, "array"), _table(t, "vector"), _table(t, "memory")
    if array["dataflow"] not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, got {array['dataflow']!r}")
    for precision in (array["precision"], vector["precision"]):
        if precision not in PRECISION_BYTES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_BYTES)}, got {precision!r}")
    functions = {}
    named = _table(vector, "functions", "vector.") if "functions" in vector else {}
    for function, implementation in named.items():
        if function not in SPECIAL_FUNCTIONS:
            raise ValueError(f"unknown function {function!r} in [vector.functions] "
                             f"(known: {', '.join(SPECIAL_FUNCTIONS)})")
        if (function, implementation) not in implementations():
            known = sorted(n for f, n in implementations() if f == function)
            raise ValueError(f"no implementation {implementation!r} of {function!r} (known: {', '.join(known)})")
        functions[function] = implementations()[function, implementation]
    _refuse_unknown_keys({"": t, "array": array, "vector": vector, "memory": memory})
    return Hardware(
        name=t.get("name", default_name),
        description=t.get("description", ""),
        clock_ghz=_positive(t, "clock_ghz"),
        rows=_whole(array, "rows"),
        cols=_whole(array, "cols"),
        dataflow=array["dataflow"],
        array_precision=array["precision"],
        lanes=_whole(vector, "lanes"),
        vector_precision=vector["precision"],
        functions=functions,
        ifmap_sram_kib=_positive(memory, "ifmap_sram_kib"),
        filter_sram_kib=_positive(memory, "filter_sram_kib"),
        ofmap_sram_kib=_positive(memory, "ofmap_sram_kib"),
        dram_gb_per_s=_positive(memory, "dram_gb_per_s"),
        overlap=true_or_false(memory.get("overlap", True), "overlap"),
        energy=energy_table(t.get("energy", "horowitz45")),
    )

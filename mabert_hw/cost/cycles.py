"""Ops of a trace -> cycles, time, utilisation and energy on a Hardware description.

Compute, by unit:
- Systolic array (kinds linear, matmul): a GEMM (M, K) x (K, N) takes the SCALE-Sim v3 compute
  cycles of `gemm_cycles` (R x C array; checked equal to scalesim 3.0.0 in tests/golden). `linear`
  is one GEMM with M = all leading axes; `matmul` (QK^T, PV) is one GEMM per leading index
  (batch, head), run back to back. A linear's bias adds run on the vector unit, overlapped with the
  array: compute = max(array, vector).
- Vector unit (every op whose count is elementwise primitives only): ceil(sum_p n_p * c_p / lanes)
  with c_p the issue cycles of primitive p (1 for add/mul/max/cmp; the special function's
  implementation otherwise). Row reductions are counted by cost.counts as n - 1 primitives.
- FFF (UltraFastBERT conditional matmul): every token walks its own tree, so each visited node's
  weight row is used once and a systolic array gets no reuse from it. It runs on the vector unit:
  each MAC is one mul + one add on a lane (no fused multiply-add assumed), plus the count's
  elementwise primitives. Tokens x trees walks are independent, so the lanes are assumed kept busy.
- Memory only (embedding and PoWER-BERT token gathers, the pooler's CLS slice): no compute cycles.
An op with no rule (unknown kind, MACs outside a GEMM kind, a special function the hardware does not
implement) is returned in `unknown` with the reason, never priced as 0.

Memory (layer-by-layer, no fusion across ops, batch 1 weights not reused across ops):
- Each op's operands are stored at the precision of the unit that runs it (array or vector).
- Weights are read from DRAM once per op. Activations (inputs + output) stay on chip when they fit
  in the activation SRAM (ifmap + ofmap buffers), otherwise each activation element crosses DRAM once.
- memory cycles = ceil(DRAM bytes / DRAM bytes per cycle); cycles = max(compute, memory) with
  overlap (double buffering), compute + memory without; bound = the larger of the two.
Energy (pJ) = MACs * MAC energy + primitives * their energy + SRAM bytes * SRAM energy per byte +
DRAM bytes * DRAM energy per byte. GEMM SRAM traffic per dataflow (padding ignored), R x C array:
    OS: ifmap M*K*ceil(N/C), filter K*N*ceil(M/R), ofmap M*N (written once)
    WS: ifmap M*K*ceil(N/C), filter K*N,             ofmap M*N*(2*ceil(K/R) - 1) (partial sums)
    IS: ifmap M*K,           filter K*N*ceil(M/C),   ofmap M*N*(2*ceil(K/R) - 1)
ifmap and filter elements are at the array's precision; ofmap accesses are partial sums (or, for OS, the
finished sums) at its accumulator's (int8 -> int32, bf16 -> fp32: hardware.ACCUMULATOR), requantized on the
way out.
A vector op reads its inputs and writes its output once in the activation (ifmap) SRAM. An FFF also
reads every gathered weight element (w_in row, bias, w_out column of each visit: cost.counts'
gathered_elements) from the filter SRAM: its rows serve one token each, so, unlike a GEMM's
weights, each read feeds one MAC. The token's x and running y are taken to stay in the lanes
during its walk (a lower bound on its activation traffic).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import ceil, prod

from ..backends.base import Op
from ..errors import UserError
from .counts import GEMM_KINDS, RULES, OpCount, count_op, fff_walk_counts
from .hardware import Hardware

MEMORY_ONLY_KINDS = ("embedding", "slice", "gather")
# A 64-bit cycle counter's range, 292 years at 1 GHz: an op needing more DRAM cycles is refused, not
# priced (a tiny DRAM rate's bytes / rate overflows to inf, and ceil(inf) raises).
MAX_CYCLES = 2 ** 63
VECTOR_MAC_KINDS = ("fff",)
ENERGY_PARTS = ("mac", "vector", "sram", "dram")


def gemm_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """SCALE-Sim v3 compute cycles of an (M, K) x (K, N) GEMM on a rows x cols array."""
    if dataflow == "os":
        return ceil(m / rows) * ceil(n / cols) * (k + rows + cols - 2) - 1
    if dataflow == "ws":
        return ceil(k / rows) * ceil(n / cols) * (m + 2 * rows + cols - 2) - 1
    if dataflow == "is":
        return ceil(k / rows) * ceil(m / cols) * (n + 2 * rows + cols - 2) - 1
    raise ValueError(f"unknown dataflow {dataflow!r}")


def gemm_sram_elements(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> tuple[int, int, int]:
    """(ifmap reads, filter reads, ofmap accesses) in elements, by the table in the module doc."""
    partial_sums = m * n * (2 * ceil(k / rows) - 1)
    if dataflow == "os":
        return m * k * ceil(n / cols), k * n * ceil(m / rows), m * n
    if dataflow == "ws":
        return m * k * ceil(n / cols), k * n, partial_sums
    return m * k, k * n * ceil(m / cols), partial_sums


def gemm_dims(op: Op) -> tuple[int, int, int, int]:
    """(G, M, K, N): G independent GEMMs of (M, K) x (K, N)."""
    if op.kind == "linear":
        x, w = op.inputs[0], op.weights[0]  # (..., K), (N, K)
        return 1, prod(x[:-1]), x[-1], w[0]
    a = op.inputs[0]
    return prod(op.output[:-2]), op.output[-2], a[-1], op.output[-1]


@dataclass(frozen=True)
class OpCost:
    count: OpCount
    unit: str  # "array" | "vector" | "memory"
    compute_cycles: int
    memory_cycles: int
    cycles: int
    dram_bytes: int
    sram_bytes: int
    utilisation: float  # useful work / (peak of its unit * cycles)
    energy_pj: dict[str, float]  # ENERGY_PARTS -> pJ

    @property
    def op(self) -> Op:
        return self.count.op

    @property
    def bound(self) -> str:
        return "memory" if self.memory_cycles > self.compute_cycles else "compute"

    @property
    def energy(self) -> float:
        return sum(self.energy_pj.values())


@dataclass
class Estimate:
    hardware: Hardware
    costs: list[OpCost]
    unknown: list[tuple[Op, str]]  # (op, why it has no cycle rule)

    def total(self, attribute: str) -> float:
        return sum(getattr(c, attribute) for c in self.costs)

    @property
    def seconds(self) -> float:
        return self.total("cycles") / (self.hardware.clock_ghz * 1e9)

    def energy_parts(self) -> dict[str, float]:
        return {part: sum(c.energy_pj[part] for c in self.costs) for part in ENERGY_PARTS}

    def group(self, key: Callable[[OpCost], object]) -> dict[object, list[OpCost]]:
        groups: dict[object, list[OpCost]] = {}
        for c in self.costs:
            groups.setdefault(key(c), []).append(c)
        return groups


def _vector_cycles(primitives: Counter, hw: Hardware) -> tuple[int, int] | str:
    """(cycles, lane-cycles of work), or why a primitive cannot be priced on this hardware."""
    work = 0
    for primitive, n in primitives.items():
        cycles = hw.primitive_cycles(primitive)
        if cycles is None:
            return f"{hw.name} has no implementation of {primitive!r}"
        work += n * cycles
    return ceil(work / hw.lanes), work


@dataclass(frozen=True)
class _UnitCost:
    """What one unit's rule decides about an op: the shared DRAM tail of op_cost prices the rest."""

    unit: str  # "array" | "vector" | "memory"
    element_bytes: int  # an operand's bytes on that unit
    compute_cycles: int
    useful: int  # work done, in the unit's peak units (MACs, lane-cycles)
    peak: int  # that work per cycle at full use
    sram_bytes: int
    sram_pj: float


def _array_cost(op: Op, hw: Hardware, elements: OpCount, vector_cycles: int) -> _UnitCost:
    """A GEMM kind on the systolic array; its bias adds run on the vector unit alongside."""
    element_bytes = hw.array_bytes
    groups, m, k, n = gemm_dims(op)
    array_cycles = groups * gemm_cycles(m, k, n, hw.rows, hw.cols, hw.dataflow)
    ifmap, filt, ofmap = (groups * e for e in gemm_sram_elements(m, k, n, hw.rows, hw.cols, hw.dataflow))
    ofmap_bytes = ofmap * hw.accumulator_bytes  # partial sums, at the accumulator's width
    sram_pj = (element_bytes * (ifmap * hw.energy.sram_pj_per_byte(hw.ifmap_sram_kib)
                                + filt * hw.energy.sram_pj_per_byte(hw.filter_sram_kib))
               + ofmap_bytes * hw.energy.sram_pj_per_byte(hw.ofmap_sram_kib))
    return _UnitCost("array", element_bytes, max(array_cycles, vector_cycles), elements.macs, hw.rows * hw.cols,
                     (ifmap + filt) * element_bytes + ofmap_bytes, sram_pj)


def _vector_cost(op: Op, hw: Hardware, elements: OpCount, vector: tuple[int, int]) -> _UnitCost:
    """Elementwise primitives (and an FFF's MACs) on the vector lanes."""
    element_bytes = hw.vector_bytes
    vector_cycles, vector_work = vector
    sram_bytes = elements.activation_bytes * element_bytes
    sram_pj = sram_bytes * hw.energy.sram_pj_per_byte(hw.ifmap_sram_kib)
    if op.kind == "fff":
        gathered = fff_walk_counts(op)["gathered_elements"] * element_bytes
        sram_bytes += gathered
        sram_pj += gathered * hw.energy.sram_pj_per_byte(hw.filter_sram_kib)
    return _UnitCost("vector", element_bytes, vector_cycles, vector_work, hw.lanes, sram_bytes, sram_pj)


def _memory_cost(op: Op, hw: Hardware) -> _UnitCost:
    """A gather or slice: no compute, the gathered rows land in SRAM."""
    element_bytes = hw.vector_bytes
    sram_bytes = prod(op.output) * element_bytes
    return _UnitCost("memory", element_bytes, 0, 0, 1, sram_bytes,
                     sram_bytes * hw.energy.sram_pj_per_byte(hw.ifmap_sram_kib))


def _dram_bytes(hw: Hardware, elements: OpCount, element_bytes: int) -> float:
    """Weights once per op; activations too when they do not fit in the activation SRAM."""
    activation_bytes = elements.activation_bytes * element_bytes
    dram_bytes = elements.weight_bytes * element_bytes
    if activation_bytes > hw.activation_sram_bytes:
        dram_bytes += activation_bytes
    return dram_bytes


def _memory_cycles(op: Op, hw: Hardware, dram_bytes: float) -> int:
    memory = dram_bytes / hw.dram_bytes_per_cycle
    if not memory < MAX_CYCLES:
        raise UserError(f"{op.name} moves {dram_bytes:.4g} DRAM bytes, more than 2^63 cycles at {hw.name}'s "
                        f"{hw.dram_gb_per_s:g} GB/s and {hw.clock_ghz:g} GHz: is the DRAM rate a typo?")
    return ceil(memory)


def op_cost(op: Op, hw: Hardware) -> OpCost | str:
    """The cost of one op, or the reason it has no cycle rule."""
    if op.kind not in RULES:
        return f"no counting rule for kind {op.kind!r}"
    elements = count_op(op, bytes_per_element=1)  # byte fields = element counts
    primitives = elements.elementwise
    if op.kind in VECTOR_MAC_KINDS:
        primitives = primitives + Counter(mul=elements.macs, add=elements.macs)
    vector = _vector_cycles(primitives, hw)
    if isinstance(vector, str):
        return vector
    if op.kind in GEMM_KINDS:
        cost = _array_cost(op, hw, elements, vector[0])
    elif elements.macs and op.kind not in VECTOR_MAC_KINDS:
        return f"kind {op.kind!r} has MACs but no systolic-array mapping"
    elif primitives:
        cost = _vector_cost(op, hw, elements, vector)
    elif op.kind in MEMORY_ONLY_KINDS:
        cost = _memory_cost(op, hw)
    else:
        return f"no cycle rule for kind {op.kind!r} (no MACs, no elementwise primitives)"
    dram_bytes = _dram_bytes(hw, elements, cost.element_bytes)
    memory = _memory_cycles(op, hw, dram_bytes)
    compute = cost.compute_cycles
    cycles = max(compute, memory) if hw.overlap else compute + memory
    utilisation = cost.useful / (cost.peak * cycles) if cycles else 0.0
    parts = {"mac": elements.macs * hw.mac_pj if cost.unit == "array" else 0.0,
             "vector": sum(n * hw.primitive_pj(p) for p, n in primitives.items()),
             "sram": cost.sram_pj,
             "dram": dram_bytes * hw.energy.dram_pj_per_byte}
    energy = {part: parts[part] for part in ENERGY_PARTS}  # a part without a rule here fails at once
    return OpCost(elements, cost.unit, compute, memory, cycles, int(dram_bytes), int(cost.sram_bytes), utilisation,
                  energy)


def estimate(ops: Iterable[Op], hw: Hardware) -> Estimate:
    costs, unknown = [], []
    for op in ops:
        cost = op_cost(op, hw)
        if isinstance(cost, str):
            unknown.append((op, cost))
        else:
            costs.append(cost)
    return Estimate(hw, costs, unknown)

"""Hardware estimates as table columns and JSON (what `profile --hw` and `compare` print)."""

from __future__ import annotations

from .counts import APPROXIMATOR_MARK, OpCount, Profile
from .cycles import ENERGY_PARTS, Estimate, OpCost
from .hardware import Hardware
from .summary import layer_label

HW_COLUMNS = ("cycles", "time_us", "energy_uj", "bound", "util_%")
HW_RULE = ("util_%: useful work over the peak of the unit an op runs on (MACs / (rows * cols * cycles) on the "
           "array, lane work / (lanes * cycles) on the vector unit, 0 for a memory-only gather); a row of several "
           "ops weights each by its cycles, so array and vector ops mix in it. Memory: each op reads its weights "
           "from DRAM once, whatever filter_sram_kib (which prices SRAM energy only); activations cross DRAM "
           "only when an op's inputs and output exceed ifmap_sram_kib + ofmap_sram_kib. Hardware TOML: presets "
           "and their schema in mabert_hw/cost/hw/ (edge-32x32-int8.toml is annotated).")


def hw_columns(costs: list[OpCost], hw: Hardware) -> dict:
    """Cycle, time, energy, bound and utilisation of a group of op costs."""
    cycles = sum(c.cycles for c in costs)
    compute = sum(c.compute_cycles for c in costs)
    memory = sum(c.memory_cycles for c in costs)
    busy = sum(c.utilisation * c.cycles for c in costs)  # peak-weighted useful cycles
    return {
        "cycles": cycles,
        "time_us": cycles / (hw.clock_ghz * 1e3),
        "energy_uj": sum(c.energy for c in costs) / 1e6,
        "bound": "memory" if memory > compute else "compute",
        "util_%": 100.0 * busy / cycles if cycles else 0.0,
    }


def _key(by: str):
    if by == "layer":
        return layer_label
    if by == "kind":
        return lambda count: count.op.kind
    return lambda count: id(count.op)


def add_hw_columns(rows: list[dict], profile: Profile, estimate: Estimate, by: str) -> list[dict]:
    """rows = cost.summary.rows(profile, by), each extended with HW_COLUMNS: None where no op of the row
    is priced, bound "no cycle rule" where any op is not (the other columns then sum the priced ones)."""
    key = _key(by)
    groups: dict[object, list[OpCost]] = {}
    for cost in estimate.costs:
        groups.setdefault(key(cost.count), []).append(cost)
    unpriced = {key(OpCount(op)) for op, _ in estimate.unknown}
    labels = [key(c) for c in profile.counts] if by == "op" else [row[by] for row in rows]
    out = []
    for row, label in zip(rows, labels):
        priced = groups.get(label)  # none: every op of the row is unpriced, which is no cycles, not 0
        extra = hw_columns(priced, estimate.hardware) if priced else dict.fromkeys(HW_COLUMNS)
        if label in unpriced:
            extra["bound"] = "no cycle rule"
        out.append({**row, **extra})
    return out


def hardware_record(hw: Hardware) -> dict:
    return {
        "name": hw.name,
        "description": hw.description,
        "clock_ghz": hw.clock_ghz,
        "array": {"rows": hw.rows, "cols": hw.cols, "dataflow": hw.dataflow, "precision": hw.array_precision},
        "vector": {"lanes": hw.lanes, "precision": hw.vector_precision,
                   "functions": {f: i.name for f, i in hw.functions.items()}},
        "memory": {"ifmap_sram_kib": hw.ifmap_sram_kib, "filter_sram_kib": hw.filter_sram_kib,
                   "ofmap_sram_kib": hw.ofmap_sram_kib, "dram_gb_per_s": hw.dram_gb_per_s, "overlap": hw.overlap},
        "energy_table": hw.energy.name,
    }


def cost_record(cost: OpCost) -> dict:
    return {
        "unit": cost.unit,
        "compute_cycles": cost.compute_cycles,
        "memory_cycles": cost.memory_cycles,
        "cycles": cost.cycles,
        "bound": cost.bound,
        "utilisation": cost.utilisation,
        "dram_bytes": cost.dram_bytes,
        "sram_bytes": cost.sram_bytes,
        "energy_pj": dict(cost.energy_pj),
    }


def _totals(costs: list[OpCost], hw: Hardware) -> dict:
    columns = hw_columns(costs, hw)
    return {"cycles": columns["cycles"], "time_us": columns["time_us"], "energy_uj": columns["energy_uj"],
            "bound": columns["bound"]}


def hw_document(estimate: Estimate) -> dict:
    """The `hardware` and `hw_totals` parts of the profile JSON; per-op records via `cost_record`."""
    hw = estimate.hardware
    parts = estimate.energy_parts()
    by_kind = {k: _totals(v, hw) for k, v in estimate.group(lambda c: c.op.kind).items()}
    by_layer = {str(k): _totals(v, hw) for k, v in estimate.group(lambda c: layer_label(c.count)).items()}
    return {
        "hardware": hardware_record(hw),
        "hw_totals": {
            "cycles": estimate.total("cycles"),
            "seconds": estimate.seconds,
            "energy_pj": {**parts, "total": sum(parts[p] for p in ENERGY_PARTS)},
            "by_kind": by_kind,
            "by_layer": by_layer,
            "unpriced_ops": [{"name": op.name, "kind": op.kind, "reason": why} for op, why in estimate.unknown],
        },
    }


# The non-linear functions a vector unit evaluates: MA-BERT removes softmax, layernorm and gelu (its
# softmax approximator's ops are counts.APPROXIMATOR_MARK's); the pooler's tanh stays in every variant.
NONLINEAR_KINDS = ("softmax", "layernorm", "gelu", "tanh")


def category(cost: OpCost) -> str:
    """The op kind, with MA-BERT's approximator ops (Linear -> ReLU -> Linear) grouped as softmax_mlp."""
    return "softmax_mlp" if APPROXIMATOR_MARK in cost.op.name else cost.op.kind


def category_totals(estimate: Estimate, field: str) -> dict[str, float]:
    """Sum of an OpCost field ("cycles", "energy") per category, in first-seen order."""
    totals: dict[str, float] = {}
    for cost in estimate.costs:
        totals[category(cost)] = totals.get(category(cost), 0) + getattr(cost, field)
    return totals


SHARES_RULE = ("memory_bound_%: cycles of the ops whose DRAM time exceeds their compute; "
               "nonlinear_*: softmax, layernorm, gelu and the pooler's tanh, the functions MA-BERT "
               "removes; approximator_*: MA-BERT's softmax MLP; vector_cycles_%: every op of the vector "
               "unit, ReLU and the additions included (a memory-bound ReLU costs what the GELU it "
               "replaces did), and an FFF tree walk, which runs there. Per cent of the variant's cycles and "
               "energy; the groups overlap (a vector op may also be non-linear or the approximator's ReLU), so "
               "they do not add up.")


def shares(estimate: Estimate) -> dict[str, float]:
    """Per cent of cycles and energy in the groups of SHARES_RULE."""
    cycles, energy = estimate.total("cycles"), estimate.total("energy")
    nonlinear = [c for c in estimate.costs if c.op.kind in NONLINEAR_KINDS]
    approximator = [c for c in estimate.costs if category(c) == "softmax_mlp"]
    vector = [c for c in estimate.costs if c.unit == "vector"]

    def per_cent(group: list[OpCost], field: str, total: float) -> float:
        return 100.0 * sum(getattr(c, field) for c in group) / total if total else 0.0

    return {
        "nonlinear_cycles_%": per_cent(nonlinear, "cycles", cycles),
        "nonlinear_energy_%": per_cent(nonlinear, "energy", energy),
        "approximator_cycles_%": per_cent(approximator, "cycles", cycles),
        "approximator_energy_%": per_cent(approximator, "energy", energy),
        "vector_cycles_%": per_cent(vector, "cycles", cycles),
    }

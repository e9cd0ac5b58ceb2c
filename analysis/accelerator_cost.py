"""Accelerator cost of BERT, MA-BERT, PoWER-BERT and UltraFastBERT on each hardware preset -> reports/accelerator/.

bert-base-uncased, batch 1, T in {128, 512}, every preset of mabert_hw/cost/hw, each op priced by
mabert_hw.cost.cycles (shapes from the trace backend: every variant is counted as the engines run
it). Two memory models: the presets as written (layer by layer: activations spill to DRAM when an
op's inputs + output exceed the activation SRAM), and "on-chip" (activation SRAM unbounded: only
weights cross DRAM, an upper bound on what fusion/tiling buys). Also MA-BERT's speedup as T grows.

    python analysis/accelerator_cost.py            # -> reports/accelerator/ (~10 s)
    python analysis/accelerator_cost.py --out DIR  # -> DIR
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from mabert_hw.atomic import write_text_whole
from mabert_hw.cli.compare import POWER_LAST_LAYER_FRACTION, comparison_rows, evaluate
from mabert_hw.cost import hardware
from mabert_hw.cost.hw_summary import NONLINEAR_KINDS, SHARES_RULE, category_totals, shares
from mabert_hw.report import plots
from mabert_hw.report.tables import csv_table, markdown_table
from mabert_hw.spec import PRESETS
from mabert_hw.cli.common import run_script, script_description, script_output_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "accelerator"  # --out's default
MODEL = "bert-base-uncased"
SEQ_LENS = (128, 512)
SWEEP_SEQ_LENS = (32, 64, 128, 192, 256, 384, 512)
VARIANT_NAMES = ["bert", "ma", "power", "fff"]
MEMORY_MODELS = ("layer-by-layer", "on-chip")
MA_REPLACEMENTS = ("relu", "affine")  # what MA-BERT computes instead of GELU / LayerNorm


def hardware_for(name: str, memory_model: str):
    hw = hardware.load(name)
    return hw if memory_model == "layer-by-layer" else replace(hw, ifmap_sram_kib=float("inf"))


def main_rows(spec) -> tuple[list[dict], list[dict], dict]:
    rows, breakdown, outcomes_by_case = [], [], {}
    for name in hardware.preset_names():
        for memory_model in MEMORY_MODELS:
            hw = hardware_for(name, memory_model)
            for seq_len in SEQ_LENS:
                case = evaluate(spec, VARIANT_NAMES, 1, seq_len, hw)
                outcomes = {o.name: o for o in case}
                outcomes_by_case[name, memory_model, seq_len] = outcomes
                base = outcomes["bert"].estimate
                rows += [{"hardware": name, "memory": memory_model, "T": seq_len, **row}
                         for row in comparison_rows(case)]
                if outcomes["ma"].estimate is not None:
                    breakdown.append(ma_breakdown(name, memory_model, seq_len, base, outcomes["ma"].estimate))
    return rows, breakdown, outcomes_by_case


def ma_breakdown(name, memory_model, seq_len, bert, ma) -> dict:
    """Cycles and energy MA-BERT removes (softmax, LayerNorm, GELU) and adds (approximator, ReLU, affine)."""
    out = {"hardware": name, "memory": memory_model, "T": seq_len}
    for field, unit, scale in (("cycles", "cycles", 1), ("energy", "energy_uj", 1e-6)):
        b, m = category_totals(bert, field), category_totals(ma, field)
        removed = sum(b.get(k, 0) for k in NONLINEAR_KINDS if k != "tanh") * scale
        approximator = m.get("softmax_mlp", 0) * scale
        replacements = sum(m.get(k, 0) for k in MA_REPLACEMENTS) * scale
        net = (sum(b.values()) - sum(m.values())) * scale
        out |= {f"removed_{unit}": removed, f"approximator_{unit}": approximator,
                f"relu_affine_{unit}": replacements, f"other_{unit}": net - removed + approximator + replacements,
                f"net_saved_{unit}": net,
                f"approximator_over_removed_{unit}": approximator / removed if removed else None}
    return out


def sweep_rows(spec) -> list[dict]:
    rows = []
    for name in hardware.preset_names():
        hw = hardware_for(name, "layer-by-layer")
        for seq_len in SWEEP_SEQ_LENS:
            outcomes = {o.name: o for o in evaluate(spec, ["bert", "ma"], 1, seq_len, hw)}
            bert, ma = outcomes["bert"].estimate, outcomes["ma"].estimate
            if ma is None:
                rows.append({"hardware": name, "T": seq_len, "status": f"skipped: {outcomes['ma'].skipped}"})
                continue
            rows.append({"hardware": name, "T": seq_len, "status": "ok",
                         "ma_speedup": bert.total("cycles") / ma.total("cycles"),
                         "ma_energy_ratio": ma.total("energy") / bert.total("energy"),
                         "approximator_cycles_%": shares(ma)["approximator_cycles_%"]})
    return rows


def write_plots(outcomes_by_case: dict, sweep: list[dict], out: Path) -> list[str]:
    names = []
    for name in hardware.preset_names():
        bars = {}
        for seq_len in SEQ_LENS:
            for variant, o in outcomes_by_case[name, "layer-by-layer", seq_len].items():
                if o.estimate is not None:
                    bars[f"{variant}\nT={seq_len}"] = category_totals(o.estimate, "cycles")
        path = out / f"cycles_by_kind_{name}.png"
        plots.stacked_cycles(bars, path, f"{MODEL} B=1 on {name} (layer-by-layer memory)")
        names.append(path.name)
        done = {v: o.estimate for v, o in outcomes_by_case[name, "layer-by-layer", 128].items() if o.estimate}
        path = out / f"roofline_{name}_T128.png"
        plots.roofline(done, hardware.load(name), path, f"{MODEL} B=1 T=128 on {name}")
        names.append(path.name)
    series = {name: [(r["T"], r["ma_speedup"]) for r in sweep if r["hardware"] == name and r["status"] == "ok"]
              for name in hardware.preset_names()}
    path = out / "ma_speedup_vs_T.png"
    plots.lines(series, path, f"MA-BERT speedup over BERT ({MODEL}, B=1)", "tokens T", "BERT cycles / MA-BERT cycles",
                reference=1.0)
    names.append(path.name)
    return names


def pick(rows: list[dict], **where) -> dict:
    return next(r for r in rows if all(r.get(k) == v for k, v in where.items()))


def hardware_table() -> list[dict]:
    out = []
    for name in hardware.preset_names():
        hw = hardware.load(name)
        out.append({"preset": name, "array": f"{hw.rows}x{hw.cols} {hw.dataflow} {hw.array_precision}",
                    "clock_GHz": hw.clock_ghz, "vector": f"{hw.lanes} x {hw.vector_precision}",
                    "exp/div/rsqrt/erf": "/".join(hw.functions[f].name for f in ("exp", "div", "rsqrt", "erf")),
                    "activation_SRAM_KiB": hw.ifmap_sram_kib + hw.ofmap_sram_kib, "DRAM_GB/s": hw.dram_gb_per_s})
    return out


def answers(rows: list[dict], breakdown: list[dict], sweep: list[dict]) -> list[str]:
    lines = []
    for name in hardware.preset_names():
        parts = []
        for memory in MEMORY_MODELS:
            for seq_len in SEQ_LENS:
                r = pick(rows, hardware=name, memory=memory, T=seq_len, variant="ma")
                b = pick(breakdown, hardware=name, memory=memory, T=seq_len)
                parts.append(f"T={seq_len} {memory}: {r['speedup']:.3f}x cycles, energy "
                             f"{-r['energy_saved_%']:+.1f}%, approximator = {b['approximator_over_removed_cycles']:.2f} "
                             "of the removed non-linear cycles")
        lines.append(f"- **{name}**: " + "; ".join(parts) + ".")
    losing = [f"{r['hardware']} T={r['T']} {r['memory']} ({r['speedup']:.3f}x)" for r in rows
              if r["variant"] == "ma" and r.get("speedup", 1) < 1]
    losing += [f"{r['hardware']} T={r['T']} layer-by-layer sweep ({r['ma_speedup']:.3f}x)" for r in sweep
               if r["status"] == "ok" and r["ma_speedup"] < 1 and r["T"] not in SEQ_LENS]
    lines.append("- **MA-BERT loses cycles (speedup < 1)**: " + ("; ".join(losing) if losing else "nowhere") + ".")
    more_energy = [f"{r['hardware']} T={r['T']} {r['memory']} ({-r['energy_saved_%']:+.1f}%)" for r in rows
                   if r["variant"] == "ma" and r.get("energy_saved_%", 0) < 0]
    more_energy += [f"{r['hardware']} T={r['T']} layer-by-layer sweep ({100 * (r['ma_energy_ratio'] - 1):+.1f}%)"
                    for r in sweep if r["status"] == "ok" and r["ma_energy_ratio"] > 1 and r["T"] not in SEQ_LENS]
    lines.append("- **MA-BERT costs more energy**: " + ("; ".join(more_energy) if more_energy else "nowhere") + ".")
    for variant in ("power", "fff"):
        parts = []
        for name in hardware.preset_names():
            mine = [r for r in rows if r["hardware"] == name and r["variant"] == variant and "speedup" in r]
            if mine:
                parts.append(f"{name} {min(r['speedup'] for r in mine):.2f}-{max(r['speedup'] for r in mine):.2f}x "
                             f"cycles, energy saved {min(r['energy_saved_%'] for r in mine):.0f} to "
                             f"{max(r['energy_saved_%'] for r in mine):.0f}%")
        lines.append(f"- **{variant}** (range over T and memory model): " + "; ".join(parts) + ".")
    return lines


ASSUMPTIONS = f"""\
- Model: {MODEL}, batch 1, one forward pass (no task head), every op from the trace backend, i.e. the
  op list the engines execute; counts by mabert_hw.cost.counts (a softmax prices one exp and one div per
  element, a LayerNorm one rsqrt per row, GELU one erf per element: the counting conventions).
- Cycles and energy by mabert_hw.cost.cycles (its module docstring is the model): GEMMs by the SCALE-Sim
  v3 closed forms (equal to scalesim 3.0.0 on 63 golden cases), attention as one GEMM per (batch, head),
  elementwise and special functions on the vector lanes at the implementation's cycles per element
  (mabert_hw/cost/hw/functions.toml, each derived in a comment), ops run one after another, DRAM
  transfers overlap compute (max of the two per op).
- Memory "layer-by-layer" (the presets as written): weights cross DRAM once per op; an op's activations
  (inputs + output) cross DRAM only when they exceed the activation SRAM (ifmap + ofmap). "on-chip":
  unbounded activation SRAM, only weights cross DRAM (what perfect fusion/tiling could reach).
- Energy: Horowitz ISSCC 2014 45 nm (mabert_hw/cost/hw/energy-horowitz45.toml, each number cited); DRAM
  at the low end (1.3 nJ / 64 bit); bf16 priced as fp16; SRAM by the smallest listed capacity >= buffer.
- Presets are illustrative, not products: edge-32x32-int8 and ma-motivation are identical except that
  ma-motivation has no special-function unit (exp 14, div 11, rsqrt 15, erf 40, tanh 28 vector
  instructions per element); the TPU-like presets follow the TPUv1 / TPUv2 papers approximately.
- MA-BERT: the `ma` variant of mabert_hw.spec.VARIANTS as traced (approximator Linear(n->h) -> ReLU ->
  Linear(h->n) per layer, h = 128, ReLU FFN, PowerNorm folded to an affine read-out, 0/1 mask). The
  published approximator has n = 128; for T > 128 n is raised to T (a hypothetical MA-BERT trained on
  T-token rows, h kept at 128). The approximator's GEMMs run on the array at its precision.
- PoWER-BERT: retention l_j = round(T * (1 - {1 - POWER_LAST_LAYER_FRACTION:g} * j / L)) (linear decay to
  {POWER_LAST_LAYER_FRACTION:g} T at the last layer; an illustrative schedule, not a trained one).
- UltraFastBERT: `fff` variant (one tree of depth 11 per layer). Every token walks its own path, so its
  gathered weight rows get no systolic reuse: it runs on the vector lanes, one mul + one add per MAC.
  Its DRAM bytes are the rows the tokens touch, each fetched once (at most min(2^l, B*T) nodes at
  level l), as the other variants fetch each weight once; every visit then reads its rows from the
  filter SRAM (one SRAM read per MAC, where a GEMM reuses each read across the array).
- MA-BERT's attention is priced as the trace runs it (the (T, T) scores, then the approximator on
  each row: 2*T^2*(D + h) MACs per head); the reassociated form the fast engine uses, 4*T*D*h, costs
  less whenever T > 2*D*h / (D + h), 85 tokens at D = 64, h = 128.
- Not modelled: fusion of elementwise ops into GEMM epilogues (beyond the on-chip bound), DRAM
  latency/row effects, multi-core parallelism, batch > 1, training."""


def render_readme(rows, breakdown, sweep, pngs) -> str:
    bert = [{k: r[k] for k in ("hardware", "memory", "T", "cycles", "time_ms", "energy_uj", "nonlinear_cycles_%",
                               "nonlinear_energy_%")} for r in rows if r["variant"] == "bert"]
    side = [{k: r.get(k) for k in ("hardware", "memory", "T", "variant", "status", "gmacs", "time_ms", "speedup",
                                   "energy_saved_%", "approximator_cycles_%")} for r in rows]
    ma = [{k: v for k, v in b.items() if "cycles" in k or k in ("hardware", "memory", "T")} for b in breakdown]
    images = "\n".join(f"![{png}]({png})" for png in pngs)
    return f"""# Accelerator cost: BERT vs MA-BERT vs PoWER-BERT vs UltraFastBERT

Made by `python analysis/accelerator_cost.py` (~10 s on 2 cores); data in results.csv (every
preset x memory model x T x variant), ma_breakdown.csv (what MA-BERT removes and adds, cycles and
energy), ma_vs_seq_len.csv (MA-BERT vs T). All four variants on one preset, with charts: `mabert-hw compare {MODEL}
--hw edge-32x32-int8 --seq-len 128 --plots DIR`.

## Hardware presets

{markdown_table(hardware_table())}

## Assumptions

{ASSUMPTIONS}

## Answers

Where MA-BERT wins and by how much (MA-BERT cycles vs BERT cycles; energy change; the approximator's
cycles as a fraction of the softmax + LayerNorm + GELU cycles MA-BERT removes: above 1 it cancels the gain):

{chr(10).join(answers(rows, breakdown, sweep))}

## BERT: share of cycles and energy in non-linear functions (softmax, LayerNorm, GELU, pooler tanh)

{markdown_table(bert)}

## Side by side (speedup = BERT cycles / variant cycles; energy saved vs BERT)

results.csv has every column `mabert-hw compare` prints, memory_bound_% and vector_cycles_% included
({SHARES_RULE})

{markdown_table(side)}

## MA-BERT: cycles removed (softmax, LayerNorm, GELU) and added (approximator; ReLU + PowerNorm affine)

"other" is the rest of the difference (no separate score-scaling op in MA-BERT's trace, the 0/1 mask
multiply, the folded norms), signed as a saving: every row has net_saved = removed - approximator -
relu_affine + other, so a positive "other" is cycles (or energy) MA-BERT saves beyond the named ops, a
negative one cycles it adds. Energy columns in ma_breakdown.csv.

{markdown_table(ma)}

## MA-BERT speedup as T grows (layer-by-layer memory)

{markdown_table(sweep)}

{images}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=script_description(__doc__))
    parser.add_argument("--out", type=Path, default=OUT, metavar="DIR",
                        help=f"report folder (default {OUT.relative_to(ROOT)}); made if missing")
    return run_script(parser, lambda args: run(script_output_dir(parser, args.out)), argv)


def run(out: Path) -> int:
    spec = PRESETS[MODEL]
    rows, breakdown, outcomes = main_rows(spec)
    sweep = sweep_rows(spec)
    write_text_whole(out / "results.csv", csv_table(rows))
    write_text_whole(out / "ma_breakdown.csv", csv_table(breakdown))
    write_text_whole(out / "ma_vs_seq_len.csv", csv_table(sweep))
    pngs = write_plots(outcomes, sweep, out)
    write_text_whole(out / "README.md", render_readme(rows, breakdown, sweep, pngs))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MiniLM-L6 on STS-B dev under int8 / fixed point -> reports/int8/ (README.md, CSV, PNG).

    OPENBLAS_NUM_THREADS=1 python analysis/int8_minilm.py [--data /work/shared/data] [--subset 300]

(one BLAS thread: on the shared 2-core machine multi-threaded OpenBLAS ran small GEMMs ~50x slower.)

Headline configurations run on the full dev set (1500 pairs); the scheme comparisons (granularity,
calibrators, non-linearities, residual bits, accumulator widths, bits 4..16) on the first --subset
pairs to fit the shared 2-core machine. Calibration: 128 sentences of STS-B train. Results are
appended as each configuration finishes, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.eval.sweep import Job, config_key, done_keys, prepare_calibration, run_sweep
from mabert_hw.eval.tasks import load_stsb, stsb_spearman

OUT = Path(__file__).resolve().parents[1] / "reports" / "int8"
CACHE = Path.home() / ".cache" / "mabert-hw"
RES16 = {"residual_bits": 16}
HEADLINE = [
    {"weight_granularity": "channel"},
    {"weight_granularity": "channel", "calibrator": "percentile"},
    {"weight_granularity": "channel", **RES16},
    {"weight_granularity": "channel", "nonlinear": "integer"},
    {"weight_granularity": "channel", "nonlinear": "integer", **RES16},
]
STUDY = (
    [{"weight_granularity": g} for g in ("tensor", "channel")]
    + [{"calibrator": c} for c in ("minmax", "percentile", "mse", "entropy")]
    + [{"nonlinear": n, **r} for n in ("float", "integer") for r in ({}, RES16)]
    + [{"acc_bits": a, "overflow": "saturate"} for a in (16, 20, 24, 32)]
    + [{"weight_bits": b, "act_bits": 16, **RES16} for b in (4, 6, 8, 10, 12, 16)]
    + [{"weight_bits": 8, "act_bits": b, **RES16} for b in (4, 6, 8, 10, 12, 16)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data")
    parser.add_argument("--subset", type=int, default=300)
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and the plot only")
    args = parser.parse_args()
    if args.report_only:
        return write_report(args.subset)
    OUT.mkdir(parents=True, exist_ok=True)
    ck = checkpoint.load("minilm")
    dev = str(Path(args.data) / "glue/STS-B/dev.tsv")
    calibration = str(prepare_calibration(ck, "stsb", dev, CACHE))

    reference_csv = OUT / "fp32.csv"
    if not reference_csv.exists():
        for limit in (None, args.subset):
            start = time.perf_counter()
            metric = stsb_spearman(ck, load_stsb(dev, limit), make_backend("reference"))
            with open(reference_csv, "a") as f:
                if f.tell() == 0:
                    f.write("pairs,metric,seconds\n")
                f.write(f"{limit or 1500},{metric:.4f},{time.perf_counter() - start:.1f}\n")
    for name, configs, limit in (("headline.csv", HEADLINE, None), ("study.csv", STUDY, args.subset)):
        out = OUT / name
        done = done_keys(out)
        jobs = [Job("minilm", "stsb", dev, limit, c, calibration) for c in configs if config_key(c) not in done]
        run_sweep(jobs, out, progress=lambda it, n=len(jobs), d=name: tqdm(it, total=n, desc=d))
    write_report(args.subset)


def write_report(subset: int) -> None:
    import csv

    from mabert_hw.report.quant_plots import plot_metric_vs_bits
    from mabert_hw.report.tables import markdown_table

    plot_metric_vs_bits(OUT / "study.csv", OUT / "bits.png", "STS-B dev Spearman x 100")
    parts = ["# int8 / fixed point: MiniLM-L6 on STS-B dev\n",
             "Made by `OPENBLAS_NUM_THREADS=1 python analysis/int8_minilm.py` (then `--report-only`).",
             "Defaults: W8A8, per-channel symmetric int8 weights, asymmetric uint8 activations, min-max "
             "calibration on 128 STS-B train sentences, onnxruntime (`ort`) requantization, 32-bit accumulators, "
             "float non-linearities; each row changes the listed fields. metric = Spearman x 100.\n"]
    for name, title in (("fp32.csv", "float32 reference"), ("headline.csv", "full dev set (1500 pairs)"),
                        ("study.csv", f"scheme study (first {subset} pairs)")):
        if (OUT / name).exists():
            with open(OUT / name, newline="") as f:
                rows = [{k: v for k, v in row.items() if k != "key"} for row in csv.DictReader(f)]
            parts += [f"## {title}\n", markdown_table(rows), ""]
    parts.append("![metric vs bits](bits.png)")
    (OUT / "README.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()

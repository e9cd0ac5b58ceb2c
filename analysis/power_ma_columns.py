"""PoWER-BERT on MA-MiniLM: does compacting the kept tokens for the approximator cost accuracy?
-> reports/power_bert/power_ma_columns.csv

    export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
    python analysis/power_ma_columns.py --ckpt ~/.cache/mabert-hw/ma-minilm   # ~3 min per checkpoint

A run replaces its checkpoint's rows in the CSV and keeps the others. A checkpoint is named by its path, which
a later conversion can overwrite: each row also records the knowledge-transfer steps of the model it scored
(kd_steps, from the conversion record `mabert-hw convert` writes into config.json; empty where there is none).

The softmax approximator is position-wise: column t of W_1 (and row t of W_2, entry t of b_2) belongs
to key position t. After elimination model.py compacts the T_l kept tokens to positions 0..T_l-1 and
uses the approximator's first T_l columns (mabert_hw/power.py says why). The alternative keeps every
token at its ORIGINAL column: W_1[:, p], W_2[p], b_2[p] gathered per sentence at its kept positions p,
so each batch row meets its own weights (a batched einsum here, not one GEMM). Both run in the
reference backend on STS-B dev (as `mabert-hw eval --task stsb`) with the same schedules.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from power_ma_stsb import BATCH_SIZE, MAX_LEN

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends.reference import ReferenceBackend
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.cli.common import positive_int, run_script
from mabert_hw.cli.convert import conversion_record
from mabert_hw.eval.tasks import load_stsb, stsb_spearman
from mabert_hw.inputs import DATA_DIR
from mabert_hw.power import parse_retention
from mabert_hw.report.tables import csv_table, read_csv_rows

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("16,16,16,16,16,16", "22,16,11,8,5,4")  # "cap 16" and "geometric N=32 r=0.7" of power_ma_stsb.py
COLUMNS = ("checkpoint", "kd_steps", "retention", "pairs", "spearman_compacted", "spearman_original")


@dataclass
class OriginalColumns(ReferenceBackend):
    """The reference backend, with the approximator read at the kept tokens' original positions."""

    positions: np.ndarray | None = None  # (B, T_l) original positions of the tokens present

    def _embedding(self, table, ids):  # the first op of a forward: every token at its own position
        self.positions = None
        return super()._embedding(table, ids)

    def _top_tokens(self, significance, keep):
        index = super()._top_tokens(significance, keep)  # (B, keep) into the tokens present
        present = np.broadcast_to(np.arange(significance.shape[1]), significance.shape)
        self.positions = np.take_along_axis(present if self.positions is None else self.positions, index, axis=1)
        return index

    def truncate(self, x, length, axis):  # model.py truncates only the approximator's weights
        if self.positions is None:
            return super().truncate(x, length, axis)
        return np.take(x, self.positions, axis=axis)  # W_1 -> (h, B, T_l), W_2 -> (B, T_l, h), b_2 -> (B, T_l)

    def _linear(self, x, weight, bias):
        if weight.ndim == 3 and bias.ndim == 1:  # first approximator layer: (B, H, T, T) x (h, B, T)
            return np.einsum("bhqk,nbk->bhqn", x, weight) + bias
        if weight.ndim == 3:  # second: (B, H, T, h) x (B, T, h) + (B, T)
            return np.einsum("bhqk,bnk->bhqn", x, weight) + bias[:, None, None, :]
        return super()._linear(x, weight, bias)


def kd_steps(source: str) -> int | str:
    """The knowledge-transfer steps of the MA checkpoint at `source`, as its config.json's conversion record
    says (steps_run; records written before steps_run have final_loss's step); "" where it records none."""
    config = checkpoint.source_path(source) / "config.json"
    if not config.is_file():
        return ""
    record = conversion_record(checkpoint.read_config(config))
    final = record.get("final_loss")
    steps = record.get("steps_run", final.get("step") if isinstance(final, dict) else None)
    return steps if isinstance(steps, int) else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=str(CACHE_ROOT / "ma-minilm"),
                        help="an MA-BERT checkpoint (default: ~/.cache/mabert-hw/ma-minilm, which `mabert-hw convert` "
                        "writes as analysis/ma_minilm.py's docstring says)")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--limit", type=positive_int, help="only the first N dev pairs (default: all 1500)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "power_bert" / "power_ma_columns.csv")
    return run_script(parser, run, argv)


def run(args) -> int:
    ck = checkpoint.load(args.ckpt)
    steps = kd_steps(args.ckpt)
    task = load_stsb(args.data, args.limit)
    rows = []
    for schedule in SCHEDULES:
        eliminating = replace(ck, spec=ck.spec.with_variant(retention=parse_retention(schedule, ck.spec.layers)))
        row = {"checkpoint": args.ckpt, "kd_steps": steps, "retention": schedule, "pairs": len(task.scores)}
        for columns, backend in (("compacted", ReferenceBackend()), ("original", OriginalColumns())):
            spearman = stsb_spearman(eliminating, task, backend, batch_size=BATCH_SIZE, max_len=MAX_LEN)
            row[f"spearman_{columns}"] = round(spearman, 2)
        rows.append(row)
        print(row, flush=True)
    kept = [row for row in read_csv_rows(args.out) if row["checkpoint"] != args.ckpt]
    write_text_whole(args.out, csv_table(kept + rows, COLUMNS))  # rows from before kd_steps: left empty
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

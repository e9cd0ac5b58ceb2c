"""Run SCALE-Sim v3 on GEMM shapes and print its compute cycles as CSV (the golden data's generator).

Runs in any interpreter where `import scalesim` works (scalesim is NOT a project dependency):
    python3 -m venv /tmp/scalesim-venv && /tmp/scalesim-venv/bin/pip install scalesim==3.0.0 "numpy<2.3"
    /tmp/scalesim-venv/bin/python tests/golden/scalesim_gemm.py > tests/golden/scalesim_gemm_cycles.csv
    /tmp/scalesim-venv/bin/python tests/golden/scalesim_gemm.py M K N ROWS COLS DATAFLOW   # one case
(numpy < 2.3: scalesim 3.0.0's memory model calls int() on a 1-element array, which numpy 2.4 rejects.)
Stdlib + scalesim only. Case list: CASES below (shape x array x dataflow). SCALE-Sim's GEMM topology
columns are M, N, K: an (M, K) ifmap times a (K, N) filter.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import sys
import tempfile
from datetime import date
from pathlib import Path

# (M, K, N): BERT-like shapes scaled down so the cycle-level simulation stays quick (its run time
# grows with the cycle count), and shapes that are not multiples of any array dimension (37, 129,
# 65, ...) to exercise the partial folds; square and non-square arrays. One BERT-base head
# projection, (128, 768) x (768, 64), on 32x32 only (the small arrays take > 100k cycles on it).
SHAPES = [(64, 64, 128), (37, 129, 65), (100, 50, 7), (5, 300, 33), (96, 40, 96)]
ARRAYS = [(32, 32), (8, 8), (16, 8), (4, 12)]
DATAFLOWS = ["os", "ws", "is"]
CASES = [((128, 768, 64), (32, 32), d) for d in DATAFLOWS]
CASES += [(s, a, d) for s, a, d in itertools.product(SHAPES, ARRAYS, DATAFLOWS)]

CONFIG = """[general]
run_name = golden

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = 1024
FilterSramSzkB = 1024
OfmapSramSzkB = 1024
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {dataflow}
Bandwidth = 10
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""


def compute_cycles(workdir: Path, m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    from scalesim.scale_sim import scalesim

    config = workdir / "scale.cfg"
    config.write_text(CONFIG.format(rows=rows, cols=cols, dataflow=dataflow))
    topology = workdir / "gemm.csv"
    topology.write_text(f"Layer, M, N, K,\ngemm, {m}, {n}, {k},\n")
    layout = workdir / "layout.csv"
    layout.write_text("Layer, IFMAP Height, IFMAP Width,\ngemm, 1, 1,\n")
    sim = scalesim(save_disk_space=True, verbose=False, config=str(config), topology=str(topology),
                   layout=str(layout), input_type_gemm=True)
    with contextlib.redirect_stdout(io.StringIO()):
        sim.run_scale(top_path=str(workdir / "out"))
    (layer,) = sim.runner.single_layer_sim_object_list
    return int(layer.get_compute_report_items()[1])


def main() -> None:
    from importlib.metadata import version

    print(f"# scalesim {version('scalesim')} (numpy {version('numpy')}) compute cycles (COMPUTE_REPORT "
          f"'Compute cycles'), generated {date.today().isoformat()} by: python tests/golden/scalesim_gemm.py")
    print("m,k,n,rows,cols,dataflow,compute_cycles")
    with tempfile.TemporaryDirectory() as tmp:
        for (m, k, n), (rows, cols), dataflow in CASES:
            cycles = compute_cycles(Path(tmp), m, k, n, rows, cols, dataflow)
            print(f"{m},{k},{n},{rows},{cols},{dataflow},{cycles}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 7:
        m, k, n, rows, cols = map(int, sys.argv[1:6])
        with tempfile.TemporaryDirectory() as tmp:
            print(compute_cycles(Path(tmp), m, k, n, rows, cols, sys.argv[6]))
    else:
        main()

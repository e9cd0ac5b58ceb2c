"""`convert` and `softmax-error` end to end on a tiny random BERT (a handful of steps only)."""

from __future__ import annotations

import json

import numpy as np
import torch

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.cli import main
from mabert_hw.inputs import SAMPLE_TEXTS, tokenize
from mabert_hw.model import forward
from mabert_hw.torch_ref.hf import hf_forward, hf_model
from mabert_hw.torch_ref.ma_bert import MABertModel, load_official
from mabert_hw.weights import random_weights

from .conftest import TINY_TEACHER
from .tolerances import REFERENCE_VS_TORCH_ATOL



def test_baseline_torch_module_matches_hf():
    spec = TINY_TEACHER
    weights = random_weights(spec, seed=1)
    batch = tokenize_random(spec)
    ours = load_official(spec, weights)
    with torch.no_grad():
        out = ours(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids)))
    theirs = hf_forward(hf_model(spec, weights), batch)
    for a, b in zip(out["hidden_states"], theirs["hidden_states"]):
        assert np.abs(a.numpy() - b).max() <= REFERENCE_VS_TORCH_ATOL
    for a, b in zip(out["attentions"], theirs["attentions"]):
        assert np.abs(a.numpy() - b).max() <= REFERENCE_VS_TORCH_ATOL


def tokenize_random(spec):
    from mabert_hw.inputs import random_batch

    return random_batch(spec, 3, 12, seed=4)


def test_convert_resume_load_and_softmax_error(tmp_path, teacher_dir, corpus, capsys):
    out = tmp_path / "ma"
    common = [str(teacher_dir), "--out", str(out), "--data", str(corpus), "--softmax-input", "32",
              "--softmax-hidden", "16", "--max-len", "24", "--batch", "4", "--prefit-steps", "5",
              "--checkpoint-every", "2"]
    assert main(["convert", *common, "--steps", "2"]) == 0
    first = json.loads((out / "history.json").read_text())
    assert main(["convert", *common, "--steps", "4", "--resume"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4] and history[:2] == first
    ck = checkpoint.load(out)
    assert ck.spec.variant.softmax == "mlp" and ck.spec.variant.norm == "powernorm"
    torch_model = load_official(ck.spec, checkpoint.read_state_dict(out))
    assert isinstance(torch_model, MABertModel)
    batch = tokenize(ck.tokenizer_dir, list(SAMPLE_TEXTS))
    ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    with torch.no_grad():
        theirs = torch_model(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                              batch.token_type_ids)))
    assert np.abs(ours.last_hidden_state - theirs["hidden_states"][-1].numpy()).max() <= REFERENCE_VS_TORCH_ATOL
    capsys.readouterr()
    assert main(["softmax-error", str(out), "--data", str(corpus), "--pad-to", "32",
                 "--output-dir", str(tmp_path / "err")]) == 0
    printed = capsys.readouterr().out
    assert "argmax_agree_%" in printed and "padding dependence" in printed
    assert (tmp_path / "err" / "softmax_error_heatmap.png").exists()


def test_ablation_conversion_is_loadable(tmp_path, teacher_dir, corpus):
    out = tmp_path / "relu"
    assert main(["convert", str(teacher_dir), "--out", str(out), "--data", str(corpus), "--only", "relu",
                 "--steps", "1", "--max-len", "24", "--batch", "2"]) == 0
    v = checkpoint.load(out).spec.variant
    assert (v.ffn_activation, v.softmax, v.norm, v.mask) == ("relu", "exact", "layernorm", "additive")

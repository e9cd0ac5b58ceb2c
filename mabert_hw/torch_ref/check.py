"""Reference backend vs an independent torch model on the same inputs: max |diff| per layer.

BERT checkpoints are compared with HF transformers in float64 (cli/check.py says why); MA-BERT ones
with torch_ref.ma_bert run on the weights as stored (unfolded PowerNorm, the approximator as a torch
MLP), the reference's folded hidden states read back into that basis (fold.read_hidden_states);
crammed BERT / UltraFastBERT ones with torch_ref.crammed on the state dict as stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backends import make_backend
from ..checkpoint import Checkpoint
from ..crammed_checkpoint import CrammedSource
from ..inputs import Batch
from ..model import forward
from ..spec import ModelSpec
from ..weights import Weights
from .hf import hf_forward, hf_model, hf_pretrained


def compare_with_hf(ck: Checkpoint, weights: Weights, batch: Batch, directory: Path) -> list[tuple[str, float]]:
    """[(label, max |reference - HF|)] for embeddings, each layer, pooler and logits, both in float64. HF
    is transformers' own from_pretrained of `directory` when the checkpoint has weights there (its config
    and key renames, not ours), else built from our spec and `weights` (presets, bare configs)."""
    if ck.weights is not None and directory.is_dir():
        print(f"HF side: transformers' from_pretrained({directory}), float64")
        model = hf_pretrained(directory, ck.spec)
    else:
        print("HF side: built from the parsed config, float64")
        model = hf_model(ck.spec, weights)
    ours = forward(ck.spec, weights, batch.input_ids, make_backend("reference", dtype=np.float64),
                   batch.attention_mask, batch.token_type_ids)
    return _diffs(ck.spec, ours.hidden_states, ours, hf_forward(model.double(), batch))


def compare_with_ma_torch(spec: ModelSpec, unfolded: Weights, batch: Batch) -> list[tuple[str, float]]:
    """[(label, max |reference - torch_ref MA-BERT|)]; the reference runs the folded weights."""
    import torch

    from ..fold import fold_powernorm, read_hidden_states
    from .ma_bert import load_official

    folded, bases = fold_powernorm(spec, unfolded) if spec.variant.norm == "powernorm" else (unfolded, None)
    ours = forward(spec, folded, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    hidden = ours.hidden_states if bases is None else read_hidden_states(bases, ours.hidden_states)
    with torch.no_grad():
        out = load_official(spec, unfolded)(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                                           batch.token_type_ids)))
    theirs = {k: [h.numpy() for h in v] if k == "hidden_states" else (None if v is None else v.numpy())
              for k, v in out.items() if k in ("hidden_states", "pooled", "logits")}
    return _diffs(spec, hidden, ours, theirs)


def compare_with_crammed_torch(spec: ModelSpec, source: CrammedSource, batch: Batch,
                               seed: int = 0) -> list[tuple[str, float]]:
    """[(label, max |reference - torch_ref crammed|)]; a config-only checkpoint gets the torch module's
    seeded initialisation, mapped by crammed_checkpoint as a stored state dict is."""
    from ..crammed_checkpoint import encoder_keys, to_weights
    from .crammed import crammed_hidden_states, initial_state, load_official

    state = source.state
    if state is None:
        state = encoder_keys(initial_state(source.arch, spec.vocab_size, seed))
    ours = forward(spec, to_weights(source.arch, state), batch.input_ids, make_backend("reference"),
                   batch.attention_mask, batch.token_type_ids)
    hidden = crammed_hidden_states(load_official(source.arch, state), batch.input_ids, batch.attention_mask)
    return _diffs(spec, ours.hidden_states, ours, {"hidden_states": hidden, "pooled": None, "logits": None})


def _diffs(spec: ModelSpec, hidden_states, ours, theirs: dict) -> list[tuple[str, float]]:
    labels = ["embeddings"] + [f"layer {i}" for i in range(spec.layers)]
    diffs = [(label, float(np.abs(np.asarray(a) - b).max()))
             for label, a, b in zip(labels, hidden_states, theirs["hidden_states"])]
    if theirs["pooled"] is not None:
        diffs.append(("pooler", float(np.abs(ours.pooled - theirs["pooled"]).max())))
    if theirs["logits"] is not None:
        diffs.append(("logits", float(np.abs(ours.logits - theirs["logits"]).max())))
    return diffs

"""Reference backend vs HF transformers on the same inputs: max |diff| per layer."""

from __future__ import annotations

import numpy as np

from ..backends import make_backend
from ..inputs import Batch
from ..model import forward
from ..spec import ModelSpec
from ..weights import Weights
from .hf import hf_forward, hf_model


def compare_with_hf(spec: ModelSpec, weights: Weights, batch: Batch) -> list[tuple[str, float]]:
    """[(label, max |reference - HF|)] for embeddings, each layer, pooler and logits."""
    ours = forward(spec, weights, batch.input_ids, make_backend("reference"),
                   batch.attention_mask, batch.token_type_ids)
    theirs = hf_forward(hf_model(spec, weights), batch)
    labels = ["embeddings"] + [f"layer {i}" for i in range(spec.layers)]
    diffs = [(label, float(np.abs(a - b).max()))
             for label, a, b in zip(labels, ours.hidden_states, theirs["hidden_states"])]
    if theirs["pooled"] is not None:
        diffs.append(("pooler", float(np.abs(ours.pooled - theirs["pooled"]).max())))
    if theirs["logits"] is not None:
        diffs.append(("logits", float(np.abs(ours.logits - theirs["logits"]).max())))
    return diffs

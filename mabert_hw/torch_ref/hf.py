"""The independent check: a HF transformers BERT built from a ModelSpec and loaded with our Weights."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from ..inputs import Batch
from ..spec import ModelSpec
from ..weights import Weights


def hf_config(spec: ModelSpec) -> BertConfig:
    return BertConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=spec.max_positions,
        type_vocab_size=spec.type_vocab_size,
        layer_norm_eps=spec.eps,
        hidden_act=spec.variant.ffn_activation,
        num_labels=max(spec.num_labels, 1),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",  # attention probabilities and matmul FLOPs stay visible
    )


def hf_model(spec: ModelSpec, weights: Weights | None = None) -> torch.nn.Module:
    """BertModel, or BertForSequenceClassification when the spec has a head; eval mode."""
    config = hf_config(spec)
    if spec.num_labels:
        model = BertForSequenceClassification(config)
        prefix = lambda key: key if key.startswith("classifier.") else "bert." + key  # noqa: E731
    else:
        model = BertModel(config, add_pooling_layer=spec.has_pooler)
        prefix = lambda key: key  # noqa: E731
    if weights is not None:
        state = {prefix(k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids") and "token_type_ids" not in k]
        if missing or unexpected:
            raise ValueError(f"HF model keys differ: missing {missing}, unexpected {unexpected}")
    return model.eval()


@torch.no_grad()
def hf_forward(model: torch.nn.Module, batch: Batch) -> dict[str, object]:
    """hidden_states (L + 1 arrays), pooled and logits (or None), attentions, all as NumPy."""
    inputs = {
        "input_ids": torch.from_numpy(batch.input_ids),
        "attention_mask": torch.from_numpy(batch.attention_mask),
        "token_type_ids": torch.from_numpy(batch.token_type_ids),
    }
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    body = out if isinstance(model, BertModel) else None
    return {
        "hidden_states": [h.numpy() for h in out.hidden_states],
        "attentions": [a.numpy() for a in out.attentions],
        "pooled": body.pooler_output.numpy() if body is not None and body.pooler_output is not None else None,
        "logits": out.logits.numpy() if hasattr(out, "logits") else None,
    }

"""The independent check: a HF transformers BERT built from a ModelSpec and loaded with our Weights, or
loaded by transformers itself from a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.utils import logging as hf_logging

from ..errors import UserError
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


def hf_pretrained(directory: Path, spec: ModelSpec) -> torch.nn.Module:
    """transformers' own from_pretrained of a checkpoint directory: its config and key renames, not ours, so
    what checkpoint.py drops or misreads shows as a difference. A classifier (as our spec reads the weights)
    loads as BertForSequenceClassification, anything else (BertModel, masked-LM and pre-training
    checkpoints: their `bert.` body) as BertModel with a pooler exactly when the weights have one, so
    the pooler is compared whenever the reference computes it; eval mode."""
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per call would clutter the CLI's report
    options = {"attn_implementation": "eager", "output_loading_info": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report (a head's keys unused; missing keys, refused below)
    try:
        if spec.num_labels:
            model, info = BertForSequenceClassification.from_pretrained(directory, **options)
        else:
            model, info = BertModel.from_pretrained(directory, add_pooling_layer=spec.has_pooler, **options)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, StrictDataclassError) as error:
        # StrictDataclassError: transformers 5 validates config fields by type (e.g. a hidden_size of 24.0),
        # its reason on the second line
        lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
        reason = " ".join(lines[:2]) if isinstance(error, StrictDataclassError) else lines[0]
        raise UserError(f"transformers cannot load {directory}: {reason}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # e.g. a training checkpoint's {"state_dict": ...}: HF would run random weights there
        raise UserError(f"transformers' from_pretrained leaves {len(missing)} weights of {directory} "
                        f"uninitialised ({missing[0]}, ...): it cannot serve as the independent side of the check")
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

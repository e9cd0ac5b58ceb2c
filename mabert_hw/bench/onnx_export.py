"""Export the HF (eager) model built from our spec and weights to ONNX fp32, cached by model and shape.

Cache: ~/.cache/mabert-hw/onnx/<model>-b<B>-t<T>-<spec digest>-<weights digest>.onnx. The spec digest
covers the settings that change the graph but no weight's shape (heads, activation, eps, pooler), so
an edited config.json is exported anew. The graph has static shapes (the benchmark runs one shape
per session) and outputs what the torch engine's model returns: a classifier's logits, or the last
hidden state and, when the model has one, the pooled output. Export uses torch.onnx's TorchScript
exporter (dynamo=False): the dynamo exporter needs onnxscript, which the project does not install.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import partial
from pathlib import Path

from ..atomic import atomic_path
from ..cache import CACHE_ROOT, file_safe
from ..spec import ModelSpec
from ..weights import Weights, weights_digest

CACHE_DIR = CACHE_ROOT / "onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17  # LayerNormalization is a standard op from opset 17


def onnx_path(spec: ModelSpec, weights: Weights, batch: int, seq_len: int) -> Path:
    return CACHE_DIR / f"{file_safe(spec.name)}-b{batch}-t{seq_len}-{spec_digest(spec)}-{weights_digest(weights)}.onnx"


def spec_digest(spec: ModelSpec) -> str:
    """16 hex digits naming every field of the spec (a frozen dataclass of numbers, strings and tuples,
    so its repr is stable)."""
    return hashlib.blake2b(repr(spec).encode(), digest_size=8).hexdigest()


def export_onnx(spec: ModelSpec, weights: Weights, batch: int, seq_len: int, build=None) -> Path:
    """The cached ONNX file for this model and (batch, seq_len); exported on first use from `build()`
    (default: torch_ref.hf.hf_model of the spec and weights), which is called only then."""
    path = onnx_path(spec, weights, batch, seq_len)
    if path.exists():
        return path
    import torch

    if build is None:
        from ..torch_ref.hf import hf_model

        build = partial(hf_model, spec, weights)

    class Outputs(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if getattr(out, "logits", None) is not None:  # BertForSequenceClassification: no hidden state
                return (out.logits,)
            pooled = getattr(out, "pooler_output", None)
            return (out.last_hidden_state,) if pooled is None else (out.last_hidden_state, pooled)

    model = Outputs(build())
    ids = torch.ones((batch, seq_len), dtype=torch.int64)
    mask = torch.ones((batch, seq_len), dtype=torch.int64)
    mask[:, seq_len // 2 + 1:] = 0  # padded: a trace of an all-ones mask may drop the masking
    example = (ids, mask, torch.zeros_like(ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(model, example, str(temporary), dynamo=False, input_names=list(INPUT_NAMES),
                          opset_version=OPSET)
    return path

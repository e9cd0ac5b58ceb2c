"""Weights: a flat dict of NumPy arrays keyed by the HF BertModel state-dict names.

Keeping the checkpoint's own names means loading is a prefix strip plus shape checks, and model.py
reads `w["encoder.layer.3.attention.self.query.weight"]` exactly as the checkpoint spells it.
Linear weights keep torch's (out_features, in_features) layout.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from .fff import FFF_PREFIX, fff_shapes
from .errors import UserError
from .spec import ModelSpec

Weights = dict[str, np.ndarray]
# Pre-LN models (Variant.norm_position = "pre") end with one more LayerNorm on the last layer's output.
FINAL_NORM = "encoder.LayerNorm"
# PowerNorm models keep their norms folded into the linear layers (fold.py); this affine reads the output.
READOUT = "encoder.readout"


ENCODER_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.")  # a state dict key in BERT names: encoder.layer.N.<...>


def refuse_extra_layers(spec: ModelSpec, state: dict) -> None:
    """Layers in the weights past the config's count are an error: HF's from_pretrained warns and drops them,
    and the model that runs is then a truncated one, whatever its figures say."""
    extra = sorted({int(m.group(1)) for key in state if (m := ENCODER_LAYER_KEY.match(key))} - set(range(spec.layers)))
    if extra:
        raise UserError(f"the weights hold encoder.layer.{extra[-1]}, past the config's num_hidden_layers = "
                        f"{spec.layers}: do the config and the weights match?")


def check_shapes(state: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every key of `shapes` is in `state` with that shape, in floating point (a one-line UserError naming the
    first that is not). Integers would be read as float values: a quantized file's codes, not the weights."""
    for key, shape in shapes.items():
        if key not in state:
            raise UserError(f"missing key {key}")
        if tuple(state[key].shape) != shape:
            raise UserError(f"shape of key {key} is {tuple(state[key].shape)} expected {shape}")
        if not np.issubdtype(state[key].dtype, np.floating):
            raise UserError(f"weight {key} is {state[key].dtype}, not floating point: quantized or integer "
                            "checkpoints are not supported")


def layer_prefix(layer: int) -> str:
    return f"encoder.layer.{layer}."


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter the baseline forward reads, with its shape."""
    C, F = spec.hidden, spec.intermediate
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (spec.vocab_size, C),
        "embeddings.position_embeddings.weight": (spec.max_positions, C),
        "embeddings.token_type_embeddings.weight": (spec.type_vocab_size, C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    for layer in range(spec.layers):
        p = layer_prefix(layer)
        for proj in ("query", "key", "value"):
            shapes[f"{p}attention.self.{proj}.weight"] = (C, C)
            shapes[f"{p}attention.self.{proj}.bias"] = (C,)
        shapes[f"{p}attention.output.dense.weight"] = (C, C)
        shapes[f"{p}attention.output.dense.bias"] = (C,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = (C,)
        shapes[f"{p}attention.output.LayerNorm.bias"] = (C,)
        if spec.variant.ffn == "fff":  # UltraFastBERT: linear_in with bias, linear_out without
            v = spec.variant
            for key, shape in fff_shapes(C, v.fff_depth, v.fff_trees).items():
                shapes[f"{p}{FFF_PREFIX}{key}"] = shape
        else:
            shapes[f"{p}intermediate.dense.weight"] = (F, C)
            shapes[f"{p}intermediate.dense.bias"] = (F,)
            shapes[f"{p}output.dense.weight"] = (C, F)
            shapes[f"{p}output.dense.bias"] = (C,)
        shapes[f"{p}output.LayerNorm.weight"] = (C,)
        shapes[f"{p}output.LayerNorm.bias"] = (C,)
    if spec.variant.norm_position == "pre":
        shapes[f"{FINAL_NORM}.weight"] = shapes[f"{FINAL_NORM}.bias"] = (C,)
    if spec.has_pooler:
        shapes["pooler.dense.weight"] = (C, C)
        shapes["pooler.dense.bias"] = (C,)
    if spec.num_labels:
        shapes["classifier.weight"] = (spec.num_labels, C)
        shapes["classifier.bias"] = (spec.num_labels,)
    return _ma_shapes(spec, shapes)


def approximator_prefix(spec: ModelSpec, layer: int) -> str:
    """Where layer `layer` reads its MA-BERT softmax approximator (shared: one for all layers)."""
    owner = "" if spec.variant.share_softmax else layer_prefix(layer) + "attention.self."
    return owner + "softmax.linear_relu_stack."


def _ma_shapes(spec: ModelSpec, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """MA-BERT: approximator Linear(n->h), Linear(h->n); PowerNorm stored folded (see fold.py)."""
    v = spec.variant
    if v.norm == "powernorm":
        shapes = {k: s for k, s in shapes.items() if ".LayerNorm." not in k}
        shapes[READOUT + ".scale"] = shapes[READOUT + ".shift"] = (spec.hidden,)
    if v.softmax == "mlp":
        n, h = v.softmax_input, v.softmax_hidden
        for p in dict.fromkeys(approximator_prefix(spec, layer) for layer in range(spec.layers)):
            shapes.update({p + "0.weight": (h, n), p + "0.bias": (h,), p + "2.weight": (n, h), p + "2.bias": (n,)})
    return shapes


def parameter_count(spec: ModelSpec) -> int:
    return sum(int(np.prod(shape)) for shape in expected_shapes(spec).values())


def random_weights(spec: ModelSpec, seed: int = 0, std: float = 0.02) -> Weights:
    """BERT's initialiser: normal(0, initializer_range=0.02), float32, norm gains around 1.

    Biases are random rather than BERT's zeros so that tests exercise every bias path.
    """
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for key, shape in expected_shapes(spec).items():
        offset = 1.0 if key.endswith(("LayerNorm.weight", "readout.scale")) else 0.0
        weights[key] = (offset + rng.normal(0.0, std, shape)).astype(np.float32)
    return weights


def weights_digest(weights: Weights) -> str:
    """16 hex digits naming these arrays' names and bytes: a cache key that two checkpoints in folders
    of the same name (runA/model, runB/model) do not share."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(weights[key]).view(np.uint8))
    return digest.hexdigest()

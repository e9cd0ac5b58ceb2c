"""Official MA-BERT / MA-DistilBERT checkpoints (W6WM9M/MA-BERT) -> (ModelSpec, folded Weights).

Official files are bare `torch.save(model.state_dict())` pickles (`ma_bert_mlm_ckpt.pt`, keys
`bert.*` and the MLM head `cls.*`); a directory written by `mabert-hw convert` holds config.json
(MA config keys) + model.safetensors with the same names. What the official code implies:
- config keys: ffn_hidden_act (MA_DistilBertConfig: ffn_activation), norm_type ("Power" | "Layer"),
  use_softmax_approx, share_softmax_nn, softmax_input_size, softmax_hidden_layer_size; defaults are
  MA_BertConfig's (bert-base dims);
- the mask is always the unmodified 0/1 mask multiplied into the scaled scores;
- PowerNorm buffers per norm: running_phi (1, C, 1, 1), ema_gz (1, C, 1, 1), iters (1,),
  accumulated_var (1, C, 1, 1); only running_phi matters at inference;
- a shared approximator is one module referenced by every layer, so its state dict holds it under
  `softmax.*` AND under every `encoder.layer.i.attention.self.softmax.*` (identical copies).
A bare .pt has no head count: it comes from a config.json beside the file, else the official default.
Heads (`cls.*`, DistilBERT's vocab_*) are dropped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import UserError
from .spec import ModelSpec, Variant, real_number, true_or_false, whole_number
from .weights import Weights, check_shapes, expected_shapes, layer_prefix, refuse_extra_layers

MA_CONFIG_KEYS = ("ffn_hidden_act", "norm_type", "use_softmax_approx", "share_softmax_nn",
                  "softmax_input_size", "softmax_hidden_layer_size")
# MA_BertConfig defaults (ma_bert/configuration_ma_bert.py)
OFFICIAL_DEFAULTS = {
    "num_attention_heads": 12, "layer_norm_eps": 1e-12, "ffn_hidden_act": "relu", "norm_type": "Power",
    "use_softmax_approx": True, "share_softmax_nn": False, "softmax_input_size": 128,
    "softmax_hidden_layer_size": 128,
}
# MA-DistilBERT names -> BERT names (transformer.layer.i.X -> encoder.layer.i.Y)
DISTIL_LAYER_NAMES = {
    "attention.q_lin.": "attention.self.query.", "attention.k_lin.": "attention.self.key.",
    "attention.v_lin.": "attention.self.value.", "attention.out_lin.": "attention.output.dense.",
    "attention.softmax.": "attention.self.softmax.", "sa_layer_norm.": "attention.output.LayerNorm.",
    "ffn.lin1.": "intermediate.dense.", "ffn.lin2.": "output.dense.", "output_layer_norm.": "output.LayerNorm.",
}
HEAD_PREFIXES = ("cls.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.")


def is_ma_config(config: dict) -> bool:
    return any(key in config for key in MA_CONFIG_KEYS)


def to_bert_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Official key names (BERT or DistilBERT, with or without the model prefix) -> BertModel names."""
    out = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES) or key.endswith("position_ids"):
            continue
        key = key.removeprefix("bert.").removeprefix("distilbert.")
        if key.startswith("transformer.layer."):
            _, _, index, rest = key.split(".", 3)
            for old, new in DISTIL_LAYER_NAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            key = f"{layer_prefix(int(index))}{rest}"
        out[key] = value
    if "embeddings.token_type_embeddings.weight" not in out and "embeddings.word_embeddings.weight" in out:
        # DistilBERT has no token types: one all-zero type row is the same sum
        hidden = out["embeddings.word_embeddings.weight"].shape[1]
        out["embeddings.token_type_embeddings.weight"] = np.zeros((1, hidden), np.float32)
    return out


def _no_token_types(config: dict, state: dict[str, np.ndarray] | None) -> bool:
    """DistilBERT's: its config says so, or its state had no table and to_bert_keys added the one zero
    row (the engines add it; the counts leave it out, as the model has no such parameters)."""
    if config.get("model_type") == "distilbert":
        return True
    table = None if state is None else state.get("embeddings.token_type_embeddings.weight")
    return table is not None and table.shape[0] == 1 and not table.any()


def spec_from_ma(config: dict, state: dict[str, np.ndarray] | None, name: str) -> ModelSpec:
    """ModelSpec from MA config keys (BERT or DistilBERT spelling), shapes filling what is missing."""
    c = {**OFFICIAL_DEFAULTS, **config}
    if state is not None:
        def shape(key: str) -> tuple[int, ...]:
            if key not in state:
                raise UserError(f"missing key {key}")
            return state[key].shape

        word = shape("embeddings.word_embeddings.weight")
        c.setdefault("vocab_size", word[0])
        c.setdefault("hidden_size", word[1])
        c.setdefault("intermediate_size", shape(f"{layer_prefix(0)}intermediate.dense.weight")[0])
        layers = [int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")]  # layer 0's is there
        c.setdefault("num_hidden_layers", 1 + max(layers))
        c.setdefault("max_position_embeddings", shape("embeddings.position_embeddings.weight")[0])
        c.setdefault("type_vocab_size", shape("embeddings.token_type_embeddings.weight")[0])
    distil = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "hidden_dim": "intermediate_size", "ffn_activation": "ffn_hidden_act"}
    for old, new in distil.items():
        if old in config:
            c[new] = config[old]
    if config.get("model_type") == "distilbert":
        c["type_vocab_size"] = 1
    if c["ffn_hidden_act"] not in ("relu", "gelu"):
        raise UserError(f"unsupported ffn_hidden_act {c['ffn_hidden_act']!r} (supported: relu, gelu)")
    if c["norm_type"] not in ("Power", "Layer"):
        raise UserError(f"unsupported norm_type {c['norm_type']!r} (supported: Power, Layer)")
    def whole(key: str, default=KeyError) -> int:
        return whole_number(c[key] if default is KeyError else c.get(key, default), key)

    try:
        variant = Variant(
            softmax="mlp" if true_or_false(c["use_softmax_approx"], "use_softmax_approx") else "exact",
            ffn_activation=c["ffn_hidden_act"],
            norm="powernorm" if c["norm_type"] == "Power" else "layernorm",
            mask=c.get("mask_type", "multiplicative"),  # our extension key, for single-technique ablations
            softmax_input=whole("softmax_input_size"),
            softmax_hidden=whole("softmax_hidden_layer_size"),
            share_softmax=true_or_false(c["share_softmax_nn"], "share_softmax_nn"),
        )
        return ModelSpec(
            name=name, vocab_size=whole("vocab_size"), hidden=whole("hidden_size"),
            layers=whole("num_hidden_layers"), heads=whole("num_attention_heads"),
            intermediate=whole("intermediate_size"), max_positions=whole("max_position_embeddings", 512),
            type_vocab_size=whole("type_vocab_size", 2), eps=real_number(c["layer_norm_eps"], "layer_norm_eps"),
            has_pooler=state is None or "pooler.dense.weight" in state,
            num_labels=state["classifier.weight"].shape[0] if state and "classifier.weight" in state else 0,
            token_types=not _no_token_types(config, state),
            variant=variant,
        )
    except KeyError as error:
        raise UserError(f"MA config is missing {error.args[0]} and there are no weights to infer it from") from None
    except (TypeError, ValueError) as error:
        raise UserError(f"MA config has a bad value: {error}") from None


def raw_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The unfolded parameters an MA checkpoint must hold (PowerNorm: + running_phi per norm)."""
    shapes = expected_shapes(replace(spec, variant=replace(spec.variant, norm="layernorm")))
    if spec.variant.norm == "powernorm":
        for key in [k for k in shapes if k.endswith("LayerNorm.weight")]:
            shapes[key.removesuffix("weight") + "running_phi"] = (1, spec.hidden, 1, 1)
    return shapes


def ma_weights(spec: ModelSpec, state: dict[str, np.ndarray]) -> tuple[Weights, Weights]:
    """Check the unfolded official weights -> (them, as float32; the weights the engines run: PowerNorm
    folded (fold.py) when the model has it)."""
    from .fold import fold_powernorm

    refuse_extra_layers(spec, state)
    shapes = raw_shapes(spec)
    check_shapes(state, shapes)
    raw = {key: np.asarray(state[key], np.float32) for key in shapes}
    if spec.variant.norm != "powernorm":
        return raw, raw
    return raw, fold_powernorm(spec, raw)[0]


def load_official_file(path: Path, read_torch) -> tuple[ModelSpec, Weights, Weights]:
    """A bare official .pt state dict -> (spec, unfolded weights, engine weights); heads from a
    config.json beside it if there is one (an unreadable one is a UserError, as any checkpoint's config)."""
    from .checkpoint import read_config

    state = to_bert_keys(read_torch(path))
    config_path = path.parent / "config.json"
    config = read_config(config_path) if config_path.exists() else {}
    if "embeddings.word_embeddings.weight" not in state:
        raise UserError(f"{path}: not a (MA-)BERT state dict (no embeddings.word_embeddings.weight)")
    has_ma_keys = any(k.endswith(".running_phi") or "softmax.linear_relu_stack." in k for k in state)
    if not (is_ma_config(config) or has_ma_keys):
        raise UserError(f"{path}: no MA-BERT keys (running_phi, softmax.*); for a plain BERT pass its directory")
    spec = spec_from_ma(config, state, path.stem)
    return spec, *ma_weights(spec, state)

"""crammed BERT checkpoints (JonasGeiping/cramming and its UltraFastBERT fork, pbelcak/UltraFastBERT
training/cramming/) -> (ModelSpec, Weights) in this package's HF key names.

Sources, read from the official code (paths relative to cramming/architectures/ of either repository):
- config: the HF `config.json` of crammedBertConfig, {"model_type": "crammedBERT", "arch": {...}}
  (crammed_bert.py; the arch section is the hydra config of config/arch/crammed-bert(-fff).yaml), or
  cramming's own `model_config.json`, the bare arch dict, beside `model.pth` (backend/torch_default.py
  save_final_model);
- state dict of ScriptableLMForPreTraining (crammed_bert.py), C hidden, D = C / H, P max positions:
    encoder.embedding.word_embedding.weight             (V, C)  components.py EmbeddingComponent
    encoder.embedding.pos_embedding.scale_factor        (1,)    embeddings.py ScaledSinosoidal, or
    encoder.embedding.pos_embedding.embedding.weight    (P, C)  LearnablePositional ("learned"), or
                                                                 nothing (SinusoidalPositional: `pe` is
                                                                 a non-persistent buffer)
    encoder.embedding.norm.{weight,bias}                (C,)
    encoder.layers.{l}.norm1.{weight,bias}              (C,)    TransformerLayer: pre-LN,
    encoder.layers.{l}.norm2.{weight,bias}              (C,)    x + attn(norm1(x)), x + ffn(norm2(x))
    encoder.layers.{l}.attn.self_attention.query_key_value.weight  (3C, C)  attention.py
        SeqFirstSelfAttention; `.bias` (3C,) only with attention.qkv_bias
    encoder.layers.{l}.attn.self_attention.norm_factor  ()      buffer 1/sqrt(D), in the stored dtype
    encoder.layers.{l}.attn.dense.weight                (C, C)  AttentionComponent; `.bias` with use_bias
    encoder.layers.{l}.ffn.linear_{in,out}...                   fff.py FFF (intermed_type 'fff'), or
    encoder.layers.{l}.ffn.dense_{in,out}.weight        (F, C), (C, F)  FFNComponent ('ff', the default);
                                                                 `.bias` with use_bias
    encoder.final_norm.{weight,bias}                    (C,)    ScriptableLM, final_norm: True
  plus the MLM head, which is not read (as HF's cls.* heads): decoder.weight (tied to word_embedding),
  decoder.bias (decoder_bias), prediction_head.* (unless skip_head_transform).
  A ScriptableLM (AutoModel) state dict holds the same keys without `encoder.`.

What the layout needs beyond HF BERT, and how it lands in model.py:
- pre-LN: Variant(norm_position="pre"); norm1 -> attention.output.LayerNorm, norm2 -> output.LayerNorm,
  final_norm -> weights.FINAL_NORM;
- the fused query_key_value: rows grouped per head as [q_h | k_h | v_h] (forward views the output as
  (H, 3D) and splits each head's 3D columns in three), split into query, key and value;
- norm_factor: a half-precision (float16 / bfloat16) checkpoint stores 1/sqrt(D) rounded to 11 / 8
  significant bits (1/sqrt(8) -> 0.353515625), and the official forward multiplies the scores by that
  value; model.py applies 1/sqrt(D), so the ratio of the two is folded into W_q and b_q;
- positions: a fixed (P, C) table computed by SinusoidalPositional's formula, times scale_factor for
  "scaled-sinusoidal"; "learned" is the stored table;
- absent tensors become zero arrays so model.py stays one code path: the biases that use_bias /
  qkv_bias leave out, and a (2, C) token-type table (crammed BERT has no segment embedding). The spec
  records what is absent (ModelSpec qkv_bias, dense_bias, token_types, positions), so the cost counts
  (cost.counts.built_ops) count neither those zeros nor the sinusoid table as parameters, nor the bias
  adds and the token-type gather + add as work;
- the mask: crammed adds (1 - m) * -10000 to padded keys' scores, HF (and model.py) finfo.min; after the
  row maximum is subtracted both underflow exp to exactly 0 in float32, so the outputs agree whenever a
  sequence has a real token. A sequence of padding alone (an all-zero mask row) differs: -10000 shifts all
  its scores alike, so crammed attends as if unmasked, while finfo.min + score rounds every score to
  finfo.min and model.py attends uniformly; such a sequence has no token to read out.
Unsupported (one-line UserError): other attention types, rotary embeddings, non-softmax sequence ops,
causal attention, no embedding norm or final norm, GLU or other non-linearities than GELU (ReLU for
dense FFNs), norms other than LayerNorm, and sequence-classification heads (pooler.*, head.*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .fff import crammed_fff_key, fff_shapes, n_nodes
from .spec import ModelSpec, Variant, positive_size, real_number, whole_number
from .weights import FINAL_NORM, Weights, check_shapes, layer_prefix

MODEL_TYPE = "crammedBERT"  # crammedBertConfig.model_type
CRAMMING_CONFIG = "model_config.json"  # cramming's save_final_model: the bare arch dict
POSITION_KINDS = ("scaled-sinusoidal", "sinusoidal", "learned")
ACTIVATIONS = {"GELU": "gelu", "ReLU": "relu"}  # torch.nn class names, as _get_nonlin_fn reads them
TOKEN_TYPES = 2  # rows of the zero token-type table: any 0/1 segment ids a BERT tokenizer emits
IGNORED_PREFIXES = ("decoder.", "prediction_head.")  # the MLM head
IGNORED_BUFFERS = ("encoder.embedding.pos_embedding.pe", "encoder.embedding.pos_embedding.position_ids")
HEAD_PREFIXES = ("pooler.", "head.")  # ScriptableLMForSequenceClassification
# A model saved while wrapped has its keys prefixed: `module.` under DistributedDataParallel,
# `_orig_mod.` for a torch.compile'd module's own state_dict(); both are stripped, as loaders of
# training checkpoints commonly do.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SINUSOID_BASE = 10000.0  # embeddings.py SinusoidalPositional: wavelengths up to 2 pi * 10000
# Significant bits of the half-precision types a checkpoint may hold, float16 and bfloat16. Tensors reach
# to_weights widened to float32 (NumPy has no bfloat16), so the stored value is all that is left of its dtype.
HALF_PRECISION_BITS = (11, 8)


@dataclass(frozen=True)
class CrammedArch:
    """What the state dict layout and the forward depend on, read from the arch config."""

    hidden: int  # C
    layers: int  # L
    heads: int  # H
    eps: float
    ffn: str  # "ff" | "fff"
    intermed_size: int  # F for "ff"; the number of parallel trees K for "fff"
    depth: int  # fff tree depth (intermed_depth); 0 for "ff"
    activation: str  # "gelu" | "relu"
    positions: str  # one of POSITION_KINDS
    max_positions: int  # P
    qkv_bias: bool
    use_bias: bool
    vocab_size: int | None  # None when the config leaves it to be filled in (then: the embedding's rows)

    @property
    def ffn_width(self) -> int:
        """Neurons of one FFN block: F, or K * (2^(d+1) - 1) tree nodes."""
        return self.intermed_size if self.ffn == "ff" else self.intermed_size * n_nodes(self.depth)


def is_crammed(config: dict, state: dict | None) -> bool:
    """A crammedBERT config (HF or cramming's bare arch dict), or a state dict in the crammed layout."""
    if config.get("model_type") == MODEL_TYPE or "num_transformer_layers" in config:
        return True
    return state is not None and any(k.startswith(("encoder.layers.", "encoder.embedding.")) for k in state)


def parse_arch(config: dict) -> CrammedArch:
    arch = config.get("arch", config) if config.get("model_type") == MODEL_TYPE else config
    if not isinstance(arch, dict):
        raise UserError(f"crammed config's 'arch' must be a JSON object, got {arch!r:.40}")
    if "num_transformer_layers" not in arch:
        if arch is not config:  # the section is there, its key is not
            raise UserError("crammed config is missing arch.num_transformer_layers")
        raise UserError(f"the crammed BERT layout needs its arch config: config.json with model_type {MODEL_TYPE!r} "
                        f"and the 'arch' section, or cramming's {CRAMMING_CONFIG}")

    def get(path: str, default=KeyError):
        node = arch
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is KeyError:
                    raise UserError(f"crammed config is missing arch.{path}")
                return default
            node = node[part]
        return node

    def require(path: str, supported, default=KeyError):
        value = get(path, default)
        if value not in supported:
            names = ", ".join(map(repr, supported))
            raise UserError(f"unsupported crammed arch.{path} = {value!r} (supported: {names})")
        return value

    require("norm", ("LayerNorm",))
    require("embedding.normalization", (True,))
    require("final_norm", (True,))
    require("attention.type", ("self-attention",))
    require("attention.causal_attention", (False,))
    require("attention.rotary_embedding", (False,))
    require("attention.sequence_op", ("torch-softmax",))
    require("attention.skip_output_projection", (False,))
    ffn = require("intermed_type", ("ff", "fff"), default="ff")  # crammed_bert.py: absent means 'ff'
    nonlin = require("nonlin", ("GELU",) if ffn == "fff" else tuple(ACTIVATIONS))
    vocab = get("embedding.vocab_size", None)
    try:
        def whole(path: str) -> int:
            return positive_size(get(path), f"arch.{path}")

        hidden = whole("hidden_size")
        depth = whole_number(get("intermed_depth"), "arch.intermed_depth") if ffn == "fff" else 0
        if depth < 0:  # else n_nodes is 0 or fractional, and the spec blames a width the config never names
            raise UserError(f"crammed arch.intermed_depth must be >= 0, got {depth}")
        if whole("embedding.embedding_dim") != hidden:
            raise UserError(f"crammed arch.embedding.embedding_dim {get('embedding.embedding_dim')} differs from "
                            f"hidden_size {hidden} (not supported)")
        positions = require("embedding.pos_embedding", POSITION_KINDS)
        if positions != "learned" and hidden % 2:  # the official table fills sin and cos columns in pairs
            raise UserError(f"crammed arch.embedding.pos_embedding {positions!r} needs an even hidden_size, "
                            f"got {hidden}")
        return CrammedArch(
            hidden=hidden, layers=whole("num_transformer_layers"),
            heads=whole("attention.num_attention_heads"), eps=real_number(get("norm_eps"), "arch.norm_eps"), ffn=ffn,
            intermed_size=whole("intermed_size"), depth=depth,
            activation=ACTIVATIONS[nonlin], positions=positions,
            max_positions=whole("embedding.max_seq_length"), qkv_bias=bool(get("attention.qkv_bias")),
            use_bias=bool(get("use_bias")),
            vocab_size=None if vocab is None else whole_number(vocab, "arch.embedding.vocab_size"),
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"crammed config has a bad value: {error}") from None


def official_shapes(arch: CrammedArch, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The encoder's state-dict keys (ScriptableLMForPreTraining names) and shapes for this arch."""
    C = arch.hidden
    e = "encoder.embedding."
    shapes: dict[str, tuple[int, ...]] = {e + "word_embedding.weight": (vocab_size, C)}
    if arch.positions == "scaled-sinusoidal":
        shapes[e + "pos_embedding.scale_factor"] = (1,)
    elif arch.positions == "learned":
        shapes[e + "pos_embedding.embedding.weight"] = (arch.max_positions, C)
    shapes[e + "norm.weight"] = shapes[e + "norm.bias"] = (C,)
    for layer in range(arch.layers):
        p = f"encoder.layers.{layer}."
        for norm in ("norm1", "norm2"):
            shapes[f"{p}{norm}.weight"] = shapes[f"{p}{norm}.bias"] = (C,)
        shapes[p + "attn.self_attention.query_key_value.weight"] = (3 * C, C)
        if arch.qkv_bias:
            shapes[p + "attn.self_attention.query_key_value.bias"] = (3 * C,)
        shapes[p + "attn.self_attention.norm_factor"] = ()
        shapes[p + "attn.dense.weight"] = (C, C)
        if arch.use_bias:
            shapes[p + "attn.dense.bias"] = (C,)
        if arch.ffn == "fff":  # FFF(hidden, hidden, intermed_depth, intermed_size): K = intermed_size trees
            for key, shape in fff_shapes(C, arch.depth, arch.intermed_size).items():
                shapes[p + "ffn." + key] = shape
        else:
            F = arch.intermed_size
            shapes[p + "ffn.dense_in.weight"], shapes[p + "ffn.dense_out.weight"] = (F, C), (C, F)
            if arch.use_bias:
                shapes[p + "ffn.dense_in.bias"], shapes[p + "ffn.dense_out.bias"] = (F,), (C,)
    shapes["encoder.final_norm.weight"] = shapes["encoder.final_norm.bias"] = (C,)
    return shapes


def spec_from_arch(arch: CrammedArch, vocab_size: int, name: str) -> ModelSpec:
    variant = Variant(ffn_activation=arch.activation, norm_position="pre", ffn="fff" if arch.ffn == "fff" else "dense",
                      fff_depth=arch.depth, fff_trees=arch.intermed_size if arch.ffn == "fff" else 1)
    return ModelSpec(name=name, vocab_size=vocab_size, hidden=arch.hidden, layers=arch.layers, heads=arch.heads,
                     intermediate=arch.ffn_width, max_positions=arch.max_positions, type_vocab_size=TOKEN_TYPES,
                     eps=arch.eps, has_pooler=False, variant=variant, qkv_bias=arch.qkv_bias,
                     dense_bias=arch.use_bias, token_types=False, positions=arch.positions)


@dataclass(frozen=True)
class CrammedSource:
    """A crammed checkpoint as stored: its arch and encoder state dict (None: config only), which
    `mabert-hw check` runs through torch_ref.crammed."""

    arch: CrammedArch
    state: dict[str, np.ndarray] | None


def load(config: dict, state: dict[str, np.ndarray] | None,
         name: str) -> tuple[ModelSpec, Weights | None, CrammedSource]:
    """(spec, weights, source) of a crammed checkpoint; weights None when there is no state dict."""
    arch = parse_arch(config)
    if state is None:
        if arch.vocab_size is None:
            raise UserError("crammed config leaves arch.embedding.vocab_size empty and there is no state dict "
                            "to read it from")
        return spec_from_arch(arch, arch.vocab_size, name), None, CrammedSource(arch, None)
    state = encoder_keys(state)
    word = state.get("encoder.embedding.word_embedding.weight")
    if word is None:
        raise UserError("missing key encoder.embedding.word_embedding.weight")
    vocab_size = word.shape[0]
    if arch.vocab_size is not None and arch.vocab_size != vocab_size:
        raise UserError(f"crammed config vocab_size {arch.vocab_size} differs from the word embedding's "
                        f"{vocab_size} rows")
    return spec_from_arch(arch, vocab_size, name), to_weights(arch, state), CrammedSource(arch, state)


def encoder_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Training wrappers' prefixes are removed (WRAPPER_PREFIXES); ScriptableLM keys get the
    `encoder.` prefix; the tied decoder stands in for a missing word embedding (tie_weights: a
    deduplicating save may keep either name); MLM-head keys are dropped."""
    state = {unwrapped_key(k): v for k, v in state.items()}
    if any(k.startswith(HEAD_PREFIXES) for k in state):
        raise UserError("crammed sequence-classification heads (pooler.*, head.*) are not supported: "
                        "load the pretraining checkpoint")
    bare = not any(k.startswith("encoder.") for k in state)
    out = {("encoder." + k if bare and not k.startswith(IGNORED_PREFIXES) else k): v for k, v in state.items()}
    if "encoder.embedding.word_embedding.weight" not in out and "decoder.weight" in out:
        out["encoder.embedding.word_embedding.weight"] = out["decoder.weight"]
    return {k: v for k, v in out.items() if not k.startswith(IGNORED_PREFIXES) and k not in IGNORED_BUFFERS}


def unwrapped_key(key: str) -> str:
    """A state-dict key without the prefixes of the modules that wrapped the model when it was saved."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.partition(".")[2]
    return key


def to_weights(arch: CrammedArch, state: dict[str, np.ndarray]) -> Weights:
    """Check the crammed key set and shapes, then map it onto this package's names."""
    expected = official_shapes(arch, state["encoder.embedding.word_embedding.weight"].shape[0])
    check_shapes(state, expected)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"unexpected key {unexpected[0]} for this crammed config ({len(unexpected)} in all: "
                        f"a bias that use_bias / qkv_bias leaves out, or a module of another arch)")
    s = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    C, D = arch.hidden, arch.hidden // arch.heads
    e = "encoder.embedding."
    weights: Weights = {
        "embeddings.word_embeddings.weight": s[e + "word_embedding.weight"],
        "embeddings.position_embeddings.weight": position_table(arch, s),
        "embeddings.token_type_embeddings.weight": np.zeros((TOKEN_TYPES, C), np.float32),  # no segments
        "embeddings.LayerNorm.weight": s[e + "norm.weight"],
        "embeddings.LayerNorm.bias": s[e + "norm.bias"],
        f"{FINAL_NORM}.weight": s["encoder.final_norm.weight"],
        f"{FINAL_NORM}.bias": s["encoder.final_norm.bias"],
    }
    for layer in range(arch.layers):
        src, dst = f"encoder.layers.{layer}.", layer_prefix(layer)
        attention = src + "attn.self_attention."
        scale = score_scale(float(s[attention + "norm_factor"]), D, attention + "norm_factor")
        qkv_bias = _bias_or_zeros(s, attention + "query_key_value.bias", 3 * C)
        query, key, value = split_qkv(s[attention + "query_key_value.weight"], qkv_bias, arch.heads)
        query = tuple(t * scale for t in query)  # model.py's 1/sqrt(D) times scale: the stored norm_factor
        for name, (weight, bias) in zip(("query", "key", "value"), (query, key, value)):
            weights[f"{dst}attention.self.{name}.weight"], weights[f"{dst}attention.self.{name}.bias"] = weight, bias
        weights[dst + "attention.output.dense.weight"] = s[src + "attn.dense.weight"]
        weights[dst + "attention.output.dense.bias"] = _bias_or_zeros(s, src + "attn.dense.bias", C)
        weights[dst + "attention.output.LayerNorm.weight"] = s[src + "norm1.weight"]
        weights[dst + "attention.output.LayerNorm.bias"] = s[src + "norm1.bias"]
        weights[dst + "output.LayerNorm.weight"] = s[src + "norm2.weight"]
        weights[dst + "output.LayerNorm.bias"] = s[src + "norm2.bias"]
        if arch.ffn == "fff":
            for key in fff_shapes(C, arch.depth, arch.intermed_size):
                weights[crammed_fff_key(src + "ffn." + key)] = s[src + "ffn." + key]
        else:
            F = arch.intermed_size
            weights[dst + "intermediate.dense.weight"] = s[src + "ffn.dense_in.weight"]
            weights[dst + "intermediate.dense.bias"] = _bias_or_zeros(s, src + "ffn.dense_in.bias", F)
            weights[dst + "output.dense.weight"] = s[src + "ffn.dense_out.weight"]
            weights[dst + "output.dense.bias"] = _bias_or_zeros(s, src + "ffn.dense_out.bias", C)
    return {k: np.ascontiguousarray(v) for k, v in weights.items()}


def _bias_or_zeros(state: dict[str, np.ndarray], key: str, width: int) -> np.ndarray:
    """use_bias / qkv_bias false leave the bias out of the module; a zero bias computes the same."""
    return state.get(key, np.zeros(width, np.float32))


def split_qkv(weight: np.ndarray, bias: np.ndarray, heads: int):
    """query_key_value (3C, C), (3C,) -> [(W_q, b_q), (W_k, b_k), (W_v, b_v)], each (C, C), (C,).

    SeqFirstSelfAttention views the (.., 3C) output as (.., H, 3D) and splits the last axis into
    q, k, v of D each: output row h*3D + j*D + d is projection j (q, k, v) of head h, dim d; ours,
    split_heads' layout, is row h*D + d of projection j."""
    C = weight.shape[1]
    D = C // heads
    w = weight.reshape(heads, 3, D, C)  # (H, q|k|v, D, C)
    b = bias.reshape(heads, 3, D)
    return [(w[:, j].reshape(C, C), b[:, j].reshape(C)) for j in range(3)]


def score_scale(value: float, head_dim: int, key: str) -> np.float32:
    """The stored score scale over the 1/sqrt(D) model.py applies: 1 for a float32 rsqrt (within 1 ulp),
    stored * sqrt(D) for 1/sqrt(D) rounded to a half-precision type; any other scale is refused."""
    exact = 1.0 / math.sqrt(head_dim)
    if math.isclose(value, exact, rel_tol=2.0 ** -22):
        return np.float32(1.0)
    if any(_rounded_to(value, exact, bits) for bits in HALF_PRECISION_BITS):
        return np.float32(value * math.sqrt(head_dim))
    raise UserError(f"{key} is {value!r}, not 1/sqrt({head_dim}): a rescaled attention is not supported")


def _rounded_to(value: float, exact: float, bits: int) -> bool:
    """value has `bits` significant bits and is one of the two such numbers around exact (> 0): a rounding
    of exact, to nearest or (a rounded rsqrt rounded again) to its other neighbour."""
    mantissa, _ = math.frexp(value)
    ulp = 2.0 ** (math.frexp(exact)[1] - bits)
    return (mantissa * 2 ** bits).is_integer() and abs(value - exact) < ulp


def sinusoidal_table(positions: int, width: int) -> np.ndarray:
    """SinusoidalPositional's `pe`, computed in float32 as its torch code does (P, C), C even
    (parse_arch checks it):
    f_i = exp(2i * (-ln(10000) / C)),  pe[p, 2i] = sin(p f_i),  pe[p, 2i+1] = cos(p f_i)."""
    position = np.arange(positions, dtype=np.float32)[:, None]  # (P, 1)
    frequency = np.exp(np.arange(0, width, 2, dtype=np.float32) * np.float32(-math.log(SINUSOID_BASE) / width))
    angle = position * frequency  # (P, C/2) float32
    table = np.empty((positions, width), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle)
    return table


def position_table(arch: CrammedArch, state: dict[str, np.ndarray]) -> np.ndarray:
    """(P, C) table added to the word embeddings: the learned table, or the sinusoids (times
    ScaledSinosoidal's learned scalar scale_factor)."""
    e = "encoder.embedding.pos_embedding."
    if arch.positions == "learned":
        return state[e + "embedding.weight"]
    table = sinusoidal_table(arch.max_positions, arch.hidden)
    return table * state[e + "scale_factor"] if arch.positions == "scaled-sinusoidal" else table

"""ModelSpec (the dimensions) and Variant (which arithmetic each block uses), plus presets.

Dimension letters used across the package: B batch, T tokens, C hidden, H heads, D = C / H head dim,
F FFN width, L layers, T_l tokens kept after layer l (PoWER-BERT), depth of an FFF tree.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Literal, get_args

from .errors import UserError

SoftmaxKind = Literal["exact", "mlp"]
Activation = Literal["gelu", "relu"]
NormKind = Literal["layernorm", "powernorm"]
NormPosition = Literal["post", "pre"]
FfnKind = Literal["dense", "fff"]
MaskKind = Literal["additive", "multiplicative"]
PositionKind = Literal["learned", "sinusoidal", "scaled-sinusoidal"]

# Ten times the deepest published Transformer (DeepNet, Wang et al. 2022: 1,000 layers). Every tool
# traces each layer's ops: a shapes-only profile of 20,000 MiniLM layers took 15 s and 370 MB here,
# so a config past this bound (a typo, or a hostile file) would grow until the OS kills it.
MAX_LAYERS = 10_000


def check_retention(retention: Sequence[int], layers: int, seq_len: int | None = None) -> tuple[int, ...]:
    """One count per layer, each >= 1, non-increasing and, when seq_len is given, <= seq_len."""
    retention = tuple(retention)
    shown = ",".join(map(str, retention))
    if len(retention) != layers:
        raise UserError(f"retention {shown} has {len(retention)} entries for {layers} layers")
    if min(retention) < 1:
        raise UserError(f"retention {shown}: every layer must keep >= 1 token (CLS)")
    for j, (before, after) in enumerate(pairwise(retention), start=2):
        if after > before:
            raise UserError(f"retention {shown} must be non-increasing: layer {j} keeps {after} > {before}")
    if seq_len is not None and retention[0] > seq_len:
        raise UserError(f"retention {shown}: layer 1 keeps {retention[0]} > the {seq_len} input tokens")
    return retention


def check_choice(value, name: str, kind) -> None:
    """value is one of the Literal type `kind`'s values (a one-line UserError otherwise)."""
    choices = get_args(kind)
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True)
class Variant:
    """How each block computes. The default is the baseline BERT of Devlin et al.

    softmax: "exact" or "mlp" (MA-BERT: Linear(n->h) -> ReLU -> Linear(h->n) on score rows).
    mask: "additive" (HF: finfo.min added to padded keys) or "multiplicative" (MA-BERT: 0/1 product
        with the scaled scores before the approximator).
    retention: PoWER-BERT tokens kept after each layer (non-increasing, one per layer) or None.
    ffn: "dense" or "fff" (UltraFastBERT fast feed-forward: fff_depth, fff_trees parallel trees).
    norm_position: "post" (HF BERT: LN(x + block(x))) or "pre" (crammed BERT / UltraFastBERT:
        x + block(LN(x)), and one more LayerNorm on the last layer's output).
    """

    softmax: SoftmaxKind = "exact"
    ffn_activation: Activation = "gelu"
    norm: NormKind = "layernorm"
    ffn: FfnKind = "dense"
    retention: tuple[int, ...] | None = None
    mask: MaskKind = "additive"
    softmax_input: int = 128  # n: MA-BERT pads every score row to this length
    softmax_hidden: int = 128  # h: approximator hidden width
    share_softmax: bool = False  # one approximator for all layers
    fff_depth: int = 0
    fff_trees: int = 1
    norm_position: NormPosition = "post"

    def __post_init__(self) -> None:
        for name, kind in (("softmax", SoftmaxKind), ("ffn_activation", Activation), ("norm", NormKind),
                           ("ffn", FfnKind), ("mask", MaskKind), ("norm_position", NormPosition)):
            check_choice(getattr(self, name), name, kind)
        # a tree of depth d has 2^(d+1) - 1 nodes (fff.n_nodes): a negative depth makes that a fraction,
        # and no trees is no feed-forward block at all; the approximator's Linear(n->h), Linear(h->n) need
        # n, h >= 1 (h <= 0 gave negative MACs and params)
        for name, least in (("fff_depth", 0), ("fff_trees", 1), ("softmax_input", 1), ("softmax_hidden", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise UserError(f"{name} must be a whole number >= {least}, got {value!r}")

    @property
    def is_baseline(self) -> bool:
        return self == Variant()

    def describe(self) -> str:
        """Short human label, e.g. 'baseline' or 'softmax=mlp,ffn_activation=relu'."""
        base = Variant()
        changed = [
            f"{name}={getattr(self, name)}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(base, name)
        ]
        return ",".join(changed) or "baseline"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a BERT encoder (field names follow HF BertConfig where one exists).

    qkv_bias, dense_bias, token_types and positions say which parameters the model has where HF BERT
    has them all (crammed BERT: attention.qkv_bias, use_bias, no segment embedding, sinusoidal
    positions). The engines run one code path (model.py) on zeros for an absent bias or token-type
    table and on the computed sinusoid table, which compute the same; the cost counts leave them out
    (cost.counts.built_ops).
    """

    name: str
    vocab_size: int
    hidden: int  # C
    layers: int  # L
    heads: int  # H
    intermediate: int  # F
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    has_pooler: bool = True
    num_labels: int = 0  # > 0: BertForSequenceClassification head on the pooled output
    variant: Variant = field(default_factory=Variant)
    qkv_bias: bool = True  # query, key and value projections add a bias
    dense_bias: bool = True  # the attention output and both FFN projections add a bias
    token_types: bool = True  # a segment (token-type) embedding is added
    positions: PositionKind = "learned"  # the position table: learned, or fixed sinusoids (scaled by
    # one learned scalar for "scaled-sinusoidal")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "layers", "heads", "intermediate", "max_positions", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.layers > MAX_LAYERS:
            raise UserError(f"{self.layers} layers is past the {MAX_LAYERS:,} this tool traces "
                            f"(ten times the deepest published Transformer)")
        check_choice(self.positions, "positions", PositionKind)
        eps_is_number = isinstance(self.eps, numbers.Real) and not isinstance(self.eps, bool)
        if not (eps_is_number and math.isfinite(self.eps) and self.eps > 0):  # LayerNorm divides by sqrt(var + eps)
            raise UserError(f"layer norm eps must be a positive finite number, got {self.eps}")
        if self.hidden % self.heads:
            raise UserError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if self.num_labels and not self.has_pooler:
            raise UserError("a classification head needs the pooler")
        if self.variant.retention is not None:
            check_retention(self.variant.retention, self.layers)

    @property
    def head_dim(self) -> int:  # D
        return self.hidden // self.heads

    def with_variant(self, **changes) -> ModelSpec:
        return replace(self, variant=replace(self.variant, **changes))


# Architectures only (no weights), from the models' published config.json files.
PRESETS: dict[str, ModelSpec] = {
    # Devlin et al. 2019, google-research/bert uncased_L-12_H-768_A-12/bert_config.json
    "bert-base-uncased": ModelSpec("bert-base-uncased", 30522, 768, 12, 12, 3072),
    # uncased_L-24_H-1024_A-16/bert_config.json
    "bert-large-uncased": ModelSpec("bert-large-uncased", 30522, 1024, 24, 16, 4096),
    # nreimers/MiniLM-L6-H384-uncased config.json (the base of all-MiniLM-L6-v2)
    "minilm-l6": ModelSpec("minilm-l6", 30522, 384, 6, 12, 1536),
}

# Variants by the names the CLI and the studies use.
VARIANTS: dict[str, Variant] = {
    "bert": Variant(),
    # MA-BERT (W6WM9M/MA-BERT): approximator n = h = 128, ReLU FFN, PowerNorm, 0/1 mask.
    "ma": Variant(softmax="mlp", ffn_activation="relu", norm="powernorm", mask="multiplicative"),
    # UltraFastBERT-1x11 (pbelcak/UltraFastBERT): one tree of depth 11 per layer.
    "fff": Variant(ffn="fff", fff_depth=11, fff_trees=1),
}


def whole_number(value, key: str) -> int:
    """A dimension read from a config: an int, or a float only when whole. 2.7 layers, `true` or the
    string "3" is a bad config, not something to round or parse (transformers refuses the string);
    raises ValueError, which the loaders report as a bad value."""
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    return int(value)


def positive_size(value, key: str) -> int:
    """A size read from a config (a whole_number) that must be at least 1, refused under the config's
    own key (ModelSpec's check would name its field: `intermediate` for `intermediate_size`)."""
    size = whole_number(value, key)
    if size <= 0:
        raise ValueError(f"{key} must be positive, got {size}")
    return size


def real_number(value, key: str) -> float:
    """A real number read from a config (layer_norm_eps): an int or a float. The string "1e-12" is
    refused, as transformers refuses it, not parsed; raises ValueError like whole_number."""
    if not _is_number(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def true_or_false(value, key: str) -> bool:
    """A flag read from a config or TOML file: JSON / TOML true or false only. The string "false" is
    non-empty, which bool() reads as true; raises ValueError like whole_number."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)

"""QuantConfig: how each op of the forward is quantized, as defaults plus ordered rules.

A TOML file holds the defaults at top level and `[[rule]]` tables that override fields for the ops
they match, by `kind` (linear, matmul, softmax, layernorm, gelu, add, embedding, ...) or `name`
(a glob on the op name, e.g. "encoder.layer.*.output.dense"); later rules win. `quantize = false`
leaves an op in float. Example:

    weight_bits = 8
    act_bits = 8
    weight_granularity = "channel"
    calibrator = "percentile"
    nonlinear = "integer"
    [[rule]]
    kind = "softmax"
    act_bits = 16

`residual_bits` (default: act_bits) sets the activation bits of the residual stream: the `add`,
`layernorm` and `embedding` outputs. `out_bits` (default 0: act_bits) sets the bits of an op's result
only, e.g. a W8A8 GEMM that writes 16-bit codes into the residual adder:

    [[rule]]
    name = "encoder.layer.*.output.dense"
    out_bits = 16

`act_granularity = "channel"` gives an op's activation tensors one scale and zero point per channel
(per hidden unit, the last axis; formats.py), for the ops of CHANNEL_ACT_KINDS only: the residual
stream's add, layernorm and embedding tensors, and a linear's OUTPUT (its requantization multiplier
x_s * w_s[n] / y_s[n] is per output column already). A GEMM's inputs keep one scale: a scale that varies
along K cannot be taken out of the integer sum (SmoothQuant's reason to fold it into the weights). What
an integer engine does with it: the residual adder rescales each operand per channel to the output's
scale (a vector of C dyadic multipliers, or shifts with pow2 scales) and writes per-channel codes; the
LayerNorm unit brings its per-channel input codes to one common scale (the finest; ~7 more bits on
MiniLM) before the mean and variance, in its wide internal registers (intops.to_common_scale); a GEMM
fed by a per-channel tensor quantizes it per tensor at its input, as it does any input.
`residual_granularity` (default "tensor") sets it for every residual-stream op at once, as
`residual_bits` does the bits:

    residual_granularity = "channel"
    [[rule]]
    kind = "add"
    calibrator = "mse"
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import UserError
from ..inputs import read_toml
from .formats import ACT_GRANULARITIES, GRANULARITIES, ROUNDING_MODES
from .requant import INT32_REQUANT_MODES, REQUANT_MODES

CALIBRATORS = ("minmax", "percentile", "mse", "entropy")
CALIBRATION_SENTENCES = 128  # texts a sweep or quant-error calibrates on: a cap, as the observers keep a sample of
# every call until the ranges are estimated (quant/calibrate.py)
SWEEP_CALIBRATION_BATCH = 16  # sentences per calibration call in a sweep (eval/sweep.py): 8 calls of 128. The
# observers keep a sample per call, so the batching moves the ranges; quant-error keeps its own 32
# (cli/quant_error.py CALIBRATION_BATCH, what its reports were calibrated on)
RESIDUAL_KINDS = ("add", "layernorm", "embedding")
GEMM_KINDS = ("linear",)  # per-channel: the output only
RESIDUAL_MAX_BITS = 23  # codes travel between ops as float32 (backends/fixed.py _values): beyond 23 bits
# the round trip loses codes (measured: 24 bits lose ~7 % of 200k codes spread over the range, 23 none)
CHANNEL_ACT_KINDS = RESIDUAL_KINDS + GEMM_KINDS  # ops whose activations may have per-channel scales
# the kinds the fixed backend asks settings for (backends/fixed.py): what a rule's `kind` may name
RULE_KINDS = ("embedding", "add", "linear", "matmul", "scale", "softmax", "layernorm", "gelu", "relu", "tanh",
              "affine")
CHOICES = {
    "weight_granularity": GRANULARITIES, "act_granularity": ACT_GRANULARITIES, "calibrator": CALIBRATORS,
    "rounding": ROUNDING_MODES, "requant": REQUANT_MODES, "overflow": ("saturate", "wrap"),
    "nonlinear": ("float", "integer"), "accumulate": ("exact", "avx2_u8s8"),
}


@dataclass(frozen=True)
class OpSettings:
    """Every choice for one op (the fields a rule may set)."""

    quantize: bool = True
    weight_bits: int = 8
    act_bits: int = 8
    out_bits: int = 0  # bits of the op's result; 0: act_bits (e.g. 16-bit outputs of the GEMMs feeding the residual)
    weight_granularity: str = "channel"
    act_granularity: str = "tensor"  # or "channel": per hidden unit, for CHANNEL_ACT_KINDS (module docstring)
    group_size: int = 64
    weight_symmetric: bool = True
    act_symmetric: bool = False
    calibrator: str = "minmax"
    percentile: float = 99.99
    rounding: str = "half_even"  # of weights and activations (requant rounding belongs to `requant`)
    requant: str = "ort"
    acc_bits: int = 32
    overflow: str = "saturate"
    accumulate: str = "exact"  # or "avx2_u8s8": vpmaddubsw pair saturation (intgemm.py)
    nonlinear: str = "float"
    pow2: bool = False
    seed: int = 0


SETTING_NAMES = tuple(f.name for f in fields(OpSettings))
SETTING_TYPES = {f.name: type(f.default) for f in fields(OpSettings)}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class QuantConfig:
    defaults: OpSettings = field(default_factory=OpSettings)
    residual_bits: int | None = None
    rules: tuple[dict, ...] = ()
    residual_granularity: str = "tensor"

    def settings(self, name: str, kind: str) -> OpSettings:
        s = self.defaults
        if self.residual_bits and kind in RESIDUAL_KINDS:
            s = replace(s, act_bits=self.residual_bits)
        if self.residual_granularity != "tensor" and kind in RESIDUAL_KINDS:
            s = replace(s, act_granularity=self.residual_granularity)
        for rule in self.rules:
            if _matches(rule, name, kind):
                s = replace(s, **{k: v for k, v in rule.items() if k not in ("kind", "name")})
        if s.quantize and s.act_granularity == "channel" and kind not in CHANNEL_ACT_KINDS:
            raise UserError(f"{name} ({kind}): act_granularity = 'channel' is for {', '.join(CHANNEL_ACT_KINDS)} "
                            "ops only (set it by rule or residual_granularity)")
        if s.quantize and s.requant in INT32_REQUANT_MODES and s.acc_bits > 32:
            raise UserError(f"{name} ({kind}): requant = {s.requant!r} multiplies int32 accumulators (gemmlowp): "
                            f"acc_bits = {s.acc_bits} must be at most 32")
        return s

    def with_fields(self, **values) -> QuantConfig:
        """A copy with top-level fields changed (what a sweep grid varies)."""
        return from_dict({**self.to_dict(), **values})

    def to_dict(self) -> dict:
        d = asdict(self.defaults)
        if self.residual_bits:
            d["residual_bits"] = self.residual_bits
        if self.residual_granularity != "tensor":
            d["residual_granularity"] = self.residual_granularity
        if self.rules:
            d["rule"] = [dict(r) for r in self.rules]
        return d


def _matches(rule: dict, name: str, kind: str) -> bool:
    return rule.get("kind", kind) == kind and fnmatch.fnmatchcase(name, rule.get("name", "*"))


def _check(values: dict, where: str) -> None:
    for key, value in values.items():
        if key in ("kind", "name"):
            _check_selector(key, value, where)
            continue
        if key not in SETTING_NAMES:
            raise UserError(f"{where}: unknown field {key!r}; {fields_help()}")
        if not _has_type(value, SETTING_TYPES[key]):
            raise UserError(f"{where}: {key} = {value!r}; expected {TYPE_WORDS[SETTING_TYPES[key]]}")
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"{where}: {key} = {value!r}; choose from {', '.join(CHOICES[key])}")
        if key in ("weight_bits", "act_bits") and not 2 <= value <= 16:
            raise UserError(f"{where}: {key} = {value}; bits must be 2..16")
        if key == "out_bits" and not (value == 0 or 2 <= value <= 16):
            raise UserError(f"{where}: out_bits = {value}; must be 0 (= act_bits) or 2..16")
        if key == "acc_bits" and not 8 <= value <= 64:
            raise UserError(f"{where}: acc_bits = {value}; must be 8..64")
        if key == "group_size" and value < 1:
            raise UserError(f"{where}: group_size = {value}; must be at least 1")
        if key == "seed" and value < 0:
            raise UserError(f"{where}: seed = {value}; must be at least 0")
        if key == "percentile" and not 50 < value <= 100:  # the range is [P(100 - p), P(p)]
            raise UserError(f"{where}: percentile = {value}; must be above 50 and at most 100")
    kind = values.get("kind")
    if values.get("act_granularity") == "channel" and kind is not None and kind not in CHANNEL_ACT_KINDS:
        raise UserError(f"{where}: act_granularity = 'channel' is for {', '.join(CHANNEL_ACT_KINDS)} ops only")


def _has_type(value, expected: type) -> bool:
    if isinstance(value, bool):  # TOML true is no number, and 1 is no boolean
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _check_selector(key: str, value, where: str) -> None:
    if not isinstance(value, str):
        raise UserError(f"{where}: {key} = {value!r}; expected a string")
    if key == "kind" and value not in RULE_KINDS:
        raise UserError(f"{where}: kind = {value!r} is no op kind; choose from {', '.join(RULE_KINDS)}")


def _rules(values, where: str) -> tuple[dict, ...]:
    if not isinstance(values, list) or not all(isinstance(rule, dict) for rule in values):
        raise UserError(f"{where}: rule = {values!r}; expected [[rule]] tables, each with a kind and / or a name "
                        "and the fields it sets")
    return tuple(dict(rule) for rule in values)


def from_dict(values: dict, where: str = "config") -> QuantConfig:
    values = dict(values)
    rules = _rules(values.pop("rule", []), where)
    residual_bits = values.pop("residual_bits", None)
    residual_granularity = values.pop("residual_granularity", "tensor")
    selectors = [key for key in ("kind", "name") if key in values]
    if selectors:
        raise UserError(f"{where}: {' and '.join(selectors)} select ops inside a [[rule]] table, not at the top level")
    _check(values, where)
    for i, rule in enumerate(rules):
        _check(rule, f"{where} rule {i + 1}")
    if residual_bits is not None and not (_has_type(residual_bits, int) and 2 <= residual_bits <= RESIDUAL_MAX_BITS):
        raise UserError(f"{where}: residual_bits = {residual_bits!r}; expected an integer 2..{RESIDUAL_MAX_BITS}")
    if residual_granularity not in ACT_GRANULARITIES:
        raise UserError(f"{where}: residual_granularity = {residual_granularity!r}; choose from "
                        f"{', '.join(ACT_GRANULARITIES)}")
    return QuantConfig(OpSettings(**values), residual_bits, rules, residual_granularity)


def unmatched_rules(config: QuantConfig, ops: list[tuple[str, str]]) -> list[str]:
    """The rules (described) that match none of `ops`, (name, kind) pairs: a name glob with a typo, say."""
    return [f"rule {i + 1} ({', '.join(f'{k} = {rule[k]!r}' for k in ('kind', 'name') if k in rule)})"
            for i, rule in enumerate(config.rules) if not any(_matches(rule, name, kind) for name, kind in ops)]


def group_misfits(config: QuantConfig, ops) -> list[str]:
    """The linear ops (backends.base.Op, weights (N, K)) whose per-group weight quantization cannot
    split their K inputs into groups of config's group_size, described. K is the width of the weight
    the op was traced with: trace where every weight is whole (the MA approximator's W_1 at T = n
    tokens, as the fixed backend groups its stored n columns: cli.common.check_configs_for_model)."""
    misfits = []
    for op in ops:
        if op.kind not in GEMM_KINDS or not op.weights:
            continue
        s = config.settings(op.name, op.kind)
        inputs = op.weights[0][-1]
        if s.quantize and s.weight_granularity == "group" and inputs % s.group_size:
            misfits.append(f"{op.name}: group_size {s.group_size} does not divide its {inputs} inputs")
    return misfits


def fields_help() -> str:
    """The keys a QuantConfig TOML may hold, for --help (this module's docstring explains them)."""
    ops = ", ".join(f.name for f in fields(OpSettings))
    whole = ", ".join(f.name for f in fields(QuantConfig) if f.name not in ("defaults", "rules"))
    return (f"top-level fields: {ops}; {whole}; and [[rule]] tables, each a kind or a name glob and any of "
            "the top-level fields before the semicolon (mabert_hw/quant/config.py explains each)")


def load(path: str | Path) -> QuantConfig:
    return from_dict(read_toml(path, "quantization config"), str(path))

"""Fold MA-BERT's inference PowerNorm (and the score scale) into the linear layers, exactly.

PowerNorm at inference is a per-channel affine (official MaskPowerNorm, eval branch):
    P(r) = S * r + s,    S = weight / sqrt(running_phi + eps),  s = bias                      (1)
In a post-LN encoder the normalised state x' = P(x + a) feeds both the next linear layers and the
residual path, so S cannot simply move into one matrix. Instead each hidden state is carried in a
per-channel basis
    x = A * u + c        (A, c: (C,) vectors; u: what the backends compute)                    (2)
Starting from A = 1, c = 0 after the embeddings (whose norm folds into the tables, (3)):
    consumers of x   (Q, K, V, FFN in):  W' = W * A[None, :],   b' = W @ c + b                 (4)
    producers into the residual (attention output, FFN out):  W' = W / A[:, None], b' = b / A  (5)
    then the norm after the residual add only changes the basis:  A <- S * A,  c <- S * c + s  (6)
Check of (5)-(6): S * (A u + c + W ctx + b) + s = (S A) * (u + (W ctx + b) / A) + (S c + s).
Embeddings (3): S0 * (E_w[i] + E_t[j] + E_p[k]) + s0 = (S0 E_w)[i] + (S0 E_t + s0)[j] + (S0 E_p)[k]:
every token gathers exactly one row of each table, so the bias joins the token-type table.
The score scale 1/sqrt(D) joins W_q and b_q. The last layer's basis (A_L, c_L) is undone once, by
the `encoder.readout` affine where the output is read (last hidden state, then the pooler).
Everything is computed in float64 and cast to float32 at the end.

The folded model runs with no norm, division, square root or score scale: what remains in the
encoder is GEMMs, bias/residual adds, ReLU, the 0/1 mask product and (outside the layers) the gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .spec import ModelSpec
from .weights import READOUT, Weights, layer_prefix

NORM_SUFFIXES = (".weight", ".bias", ".running_phi")
# |A| below this: 1 / A times a weight would leave float32 (max 3.4e38), so no layer may write into
# such a channel (UserError); after the last layer A * u is under 1e-30 |u|, below float32
# resolution of any hidden value, and the read-out holds the channel at exactly A = 0 (x = c).
DEAD_SCALE = 1e-30


@dataclass
class Basis:
    """x = scale * u + shift, per channel (C,)."""

    scale: np.ndarray
    shift: np.ndarray

    def read(self, u: np.ndarray) -> np.ndarray:
        return (u * self.scale + self.shift).astype(np.asarray(u).dtype)


def norm_affine(raw: dict[str, np.ndarray], name: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(S, s) of equation (1) for the PowerNorm `name`, in float64."""
    weight = raw[name + ".weight"].astype(np.float64)
    phi = raw[name + ".running_phi"].astype(np.float64).reshape(-1)  # official shape (1, C, 1, 1)
    if np.any(phi + eps <= 0):
        raise UserError(f"{name}.running_phi + eps must be positive")
    return weight / np.sqrt(phi + eps), raw[name + ".bias"].astype(np.float64)


def fold_powernorm(spec: ModelSpec, raw: dict[str, np.ndarray]) -> tuple[Weights, list[Basis]]:
    """Unfolded MA weights (LayerNorm.{weight,bias,running_phi} per norm) -> folded Weights.

    Returns the folded weights and the basis of every hidden state (embeddings, then each layer),
    so that callers inspecting intermediate hidden states can read them back with Basis.read.
    """
    f64 = {k: np.asarray(v, np.float64) for k, v in raw.items() if not k.endswith(".LayerNorm.running_phi")}
    out: dict[str, np.ndarray] = {}
    e = "embeddings."
    S0, s0 = norm_affine(raw, e + "LayerNorm", spec.eps)
    out[e + "word_embeddings.weight"] = f64[e + "word_embeddings.weight"] * S0
    out[e + "position_embeddings.weight"] = f64[e + "position_embeddings.weight"] * S0
    out[e + "token_type_embeddings.weight"] = f64[e + "token_type_embeddings.weight"] * S0 + s0
    A, c = np.ones(spec.hidden), np.zeros(spec.hidden)
    bases = [Basis(A, c)]
    score_scale = 1.0 / np.sqrt(spec.head_dim)
    for layer in range(spec.layers):
        p = layer_prefix(layer)
        for proj, factor in (("query", score_scale), ("key", 1.0), ("value", 1.0)):
            _consume(f64, out, f"{p}attention.self.{proj}", A, c, factor)
        A, c = _produce(raw, f64, out, p + "attention.output", A, c, spec.eps)
        _consume(f64, out, p + "intermediate.dense", A, c, 1.0)
        A, c = _produce(raw, f64, out, p + "output", A, c, spec.eps)
        bases.append(Basis(A, c))
    out[READOUT + ".scale"], out[READOUT + ".shift"] = np.where(np.abs(A) < DEAD_SCALE, 0.0, A), c
    for key, value in f64.items():  # approximator, pooler, classifier: unchanged
        if key not in out and not key.endswith(tuple("LayerNorm" + s for s in NORM_SUFFIXES)):
            out[key] = value
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    bad = [k for k, v in weights.items() if not np.all(np.isfinite(v))]
    if bad:
        raise UserError(f"folding leaves float32 range: {', '.join(bad)}")
    return weights, [Basis(b.scale.astype(np.float32), b.shift.astype(np.float32)) for b in bases]


def _consume(f64, out, name: str, A, c, factor: float) -> None:
    """Equation (4): a linear layer reading x = A * u + c reads u instead."""
    W, b = f64[name + ".weight"], f64[name + ".bias"]
    out[name + ".weight"] = W * A[None, :] * factor
    out[name + ".bias"] = (W @ c + b) * factor


def _produce(raw, f64, out, block: str, A, c, eps: float):
    """Equations (5)-(6): the dense layer writing into the residual, then its PowerNorm."""
    if np.any(np.abs(A) < DEAD_SCALE):
        channels = np.flatnonzero(np.abs(A) < DEAD_SCALE).tolist()
        raise UserError(f"cannot fold {block}: the basis scale of channels {channels} underflowed "
                        f"(product of tiny PowerNorm gains); W / A would leave float32")
    W, b = f64[block + ".dense.weight"], f64[block + ".dense.bias"]
    out[block + ".dense.weight"] = W / A[:, None]
    out[block + ".dense.bias"] = b / A
    S, s = norm_affine(raw, block + ".LayerNorm", eps)
    return S * A, S * c + s


def read_hidden_states(bases: list[Basis], hidden_states: list) -> list[np.ndarray]:
    """Folded forward's hidden states -> the unfolded model's (the last one is already read out)."""
    read = [b.read(np.asarray(h)) for b, h in zip(bases[:-1], hidden_states[:-1])]
    return read + [np.asarray(hidden_states[-1])]

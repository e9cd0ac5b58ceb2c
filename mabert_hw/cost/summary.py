"""Profiles as rows (by op, layer or kind) and as the JSON document `mabert-hw profile` prints."""

from __future__ import annotations

from collections import Counter

from ..spec import ModelSpec
from ..weights import FINAL_NORM, READOUT
from .counts import APPROXIMATOR_MARK, OpCount, Profile, count_ops, model_ops

GROUPINGS = ("op", "layer", "kind")
# the ops that close the encoder after its last layer (model.run_layers): a pre-LN encoder's final
# LayerNorm, and the read-out of a folded PowerNorm basis (MA-BERT)
ENCODER_CLOSERS = (FINAL_NORM, READOUT)


def layer_label(count: OpCount) -> str:
    """The encoder layer's index, "embeddings", "final" or "head" (pooler, classifier). What closes the
    encoder is encoder work, not a head's: a crammed model or an MA encoder without a pooler, which
    have no head, showed one."""
    layer = count.op.layer
    if layer is not None:
        return str(layer)
    if count.op.name.startswith("embeddings."):
        return "embeddings"
    return "final" if count.op.name in ENCODER_CLOSERS else "head"


def op_record(count: OpCount) -> dict:
    op = count.op
    return {
        "name": op.name,
        "layer": op.layer,
        "kind": op.kind,
        "output_shape": list(op.output),
        "macs": count.macs,
        "flops": count.flops,
        "gemm_flops": count.gemm_flops,
        "elementwise": dict(count.elementwise),
        "params": count.params,
        "weight_bytes": count.weight_bytes,
        "activation_bytes": count.activation_bytes,
    }


def _aggregate(label: str, counts: list[OpCount], total_flops: int) -> dict:
    elementwise: Counter = Counter()
    for c in counts:
        elementwise.update(c.elementwise)
    flops = sum(c.flops for c in counts)
    return {
        label: None,
        "ops": len(counts),
        "macs": sum(c.macs for c in counts),
        "flops": flops,
        "flops_share_%": 100.0 * flops / total_flops if total_flops else 0.0,
        "elementwise": sum(elementwise.values()),
        "params": sum(c.params for c in counts),
        "weight_bytes": sum(c.weight_bytes for c in counts),
        "activation_bytes": sum(c.activation_bytes for c in counts),
    }


def rows(profile: Profile, by: str) -> list[dict]:
    total = profile.total("flops")
    if by == "op":
        return [
            {"name": c.op.name, "kind": c.op.kind, "output_shape": "x".join(map(str, c.op.output)),
             "macs": c.macs, "flops": c.flops, "flops_share_%": 100.0 * c.flops / total if total else 0.0,
             "elementwise": sum(c.elementwise.values()), "params": c.params,
             "weight_bytes": c.weight_bytes, "activation_bytes": c.activation_bytes}
            for c in profile.counts
        ]
    key = layer_label if by == "layer" else (lambda c: c.op.kind)
    out = []
    for label, counts in profile.group(key).items():
        row = _aggregate(by, counts, total)
        row[by] = label
        out.append(row)
    return out


def profile_model(spec: ModelSpec, batch: int, seq_len: int, bytes_per_element: float = 4) -> Profile:
    profile = count_ops(model_ops(spec, batch, seq_len), bytes_per_element)
    if spec.variant.share_softmax:
        _count_shared_approximator_once(profile)
    return profile


def _count_shared_approximator_once(profile: Profile) -> None:
    """Every layer's approximator ops read the one shared tensor set: its params stay on layer 0's
    ops (the convention in cost.counts), so the totals and the by-layer rows count it once."""
    for count in profile.counts:
        if APPROXIMATOR_MARK in count.op.name and count.op.layer != 0:
            count.params = 0


def document(spec: ModelSpec, batch: int, seq_len: int, profile: Profile, bytes_per_element: float) -> dict:
    by_kind = {
        kind: {"macs": sum(c.macs for c in counts), "flops": sum(c.flops for c in counts)}
        for kind, counts in profile.group(lambda c: c.op.kind).items()
    }
    return {
        "model": spec.name,
        "batch": batch,
        "seq_len": seq_len,
        "variant": spec.variant.describe(),
        "bytes_per_element": bytes_per_element,
        "ops": [op_record(c) for c in profile.counts],
        "unknown_ops": [{"name": op.name, "kind": op.kind} for op in profile.unknown],
        "totals": {
            "macs": profile.total("macs"),
            "flops": profile.total("flops"),
            "gemm_flops": profile.total("gemm_flops"),
            "params": profile.total("params"),
            "weight_bytes": profile.total("weight_bytes"),
            "activation_bytes": profile.total("activation_bytes"),
            "by_kind": by_kind,
            "elementwise": dict(profile.elementwise()),
        },
    }

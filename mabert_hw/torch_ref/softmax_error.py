"""How wrong is the softmax approximator on real attention rows?

Rows come from the baseline teacher on real text: s = scaled scores, p = softmax(s + additive mask)
(0 at padded keys). The approximator sees s * m (0/1 mask, zero-padded to n) and gives q[:T].
Per (layer, head), over real query rows and the T key columns of the padded batch:
max / mean |p - q|; how often q leaves the simplex (a negative entry; |sum q - 1| > SUM_TOLERANCE);
KL(p || q~) with q~ = q clipped to >= CLIP_FLOOR and renormalised; argmax agreement; top-k mass
overlap = p-mass on q's top-k keys / p-mass on p's own top-k keys.
Mean |p - q| divides by all T columns, padded ones included (p = 0 there): padding the same rows wider
can lower it while KL rises, so compare it only between batches of one width.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..inputs import Batch
from ..spec import ModelSpec
from ..weights import Weights, approximator_prefix
from .ma_bert import MABertModel, SoftmaxApproximator

SUM_TOLERANCE = 1e-2  # a row "sums to 1" within 1 %
CLIP_FLOOR = 1e-8  # q~ = max(q, 1e-8), renormalised: KL stays finite where q <= 0
TOP_K = 5  # a reporting choice (as ImageNet's top-5): a handful of keys, where a sharp head's mass sits
LENGTH_BIN_EDGES = (1, 9, 17, 33, 65, 129, 513)  # lengths 1-8, 9-16, ..., 129-512: doubling bins up to
# BERT's 512 positions (the approximator's n is 128 in the official config)


def approximator(weights: Weights, spec: ModelSpec, layer: int) -> SoftmaxApproximator:
    """Layer `layer`'s softmax approximator, as the MA model runs it, with the checkpoint's weights."""
    p = approximator_prefix(spec, layer)
    h, n = weights[p + "0.weight"].shape
    module = SoftmaxApproximator(n, h)
    module.linear_relu_stack.load_state_dict(
        {k: torch.from_numpy(weights[p + k]) for k in ("0.weight", "0.bias", "2.weight", "2.bias")})
    return module


@torch.no_grad()
def row_errors(teacher: MABertModel, ma_spec: ModelSpec, ma_weights: Weights, batch: Batch) -> dict:
    """Per-row metrics, each an array (L, H, rows), plus the real length of each row's sentence."""
    ids, mask, types = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))
    out = teacher(ids, mask, types, keep_scores=True)
    m = mask[:, None, None, :].float()  # (B, 1, 1, T)
    real_rows = mask.bool()  # (B, T)
    lengths = mask.sum(1)[:, None].expand_as(mask)[real_rows].numpy()
    metrics = defaultdict(list)
    for layer, (scores, p) in enumerate(zip(out["scores"], out["attentions"])):
        q = approximator(ma_weights, ma_spec, layer)(scores * m)  # (B, H, T, T)
        p, q = p.permute(1, 0, 2, 3)[:, real_rows], q.permute(1, 0, 2, 3)[:, real_rows]  # (H, rows, T)
        err = (p - q).abs()
        clipped = q.clamp_min(CLIP_FLOOR)
        clipped = clipped / clipped.sum(-1, keepdim=True)
        k = min(TOP_K, p.shape[-1])
        top_q = q.topk(k, dim=-1).indices
        metrics["max_abs"].append(err.amax(-1))
        metrics["mean_abs"].append(err.mean(-1))
        metrics["negative"].append((q < 0).any(-1).float())
        metrics["sum_off"].append(((q.sum(-1) - 1).abs() > SUM_TOLERANCE).float())
        metrics["kl"].append((p * (p.clamp_min(1e-30).log() - clipped.log())).sum(-1))
        metrics["argmax_agree"].append((p.argmax(-1) == q.argmax(-1)).float())
        metrics["topk_overlap"].append(p.gather(-1, top_q).sum(-1) / p.topk(k, dim=-1).values.sum(-1))
    return {name: torch.stack(v).numpy() for name, v in metrics.items()} | {"length": lengths}


def merge(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}


def first_rows(errors: dict, count: int) -> dict:
    """The metrics of the first `count` rows (all, where there are fewer): rows run along the last axis."""
    return {k: v[..., :count] for k, v in errors.items()}


METRICS = ("max_abs", "mean_abs", "negative", "sum_off", "kl", "argmax_agree", "topk_overlap")
PERCENT = ("negative", "sum_off", "argmax_agree", "topk_overlap")  # fractions of rows, shown in %


def summary_rows(errors: dict, by: str) -> list[dict]:
    """Table rows: by 'layer', 'head' (layer x head) or 'length' (bucket of real sentence length)."""
    L, H, _ = errors["mean_abs"].shape

    def row(label: dict, select) -> dict:
        r = {**label, "rows": int(errors["mean_abs"][select].size), "max_abs": float(errors["max_abs"][select].max())}
        for m in METRICS[1:]:
            mean = float(errors[m][select].mean())
            r.update({f"{m}_%": 100 * mean} if m in PERCENT else {m: mean})
        return r

    if by == "layer":
        return [row({"layer": layer}, np.s_[layer]) for layer in range(L)]
    if by == "head":
        return [row({"layer": layer, "head": h}, np.s_[layer, h]) for layer in range(L) for h in range(H)]
    out = []
    for lo, hi in zip(LENGTH_BIN_EDGES, LENGTH_BIN_EDGES[1:]):
        keep = (errors["length"] >= lo) & (errors["length"] < hi)
        if keep.any():
            out.append(row({"length": f"{lo}-{hi - 1}"}, np.s_[:, :, keep]))
    return out

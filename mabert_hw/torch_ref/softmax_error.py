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
import torch.nn.functional as F

from ..inputs import Batch
from ..spec import ModelSpec
from ..weights import Weights, approximator_prefix
from .ma_bert import MABertModel

SUM_TOLERANCE = 1e-2  # a row "sums to 1" within 1 %
CLIP_FLOOR = 1e-8  # q~ = max(q, 1e-8), renormalised: KL stays finite where q <= 0
TOP_K = 5


def approximator_numpy(weights: Weights, spec: ModelSpec, layer: int):
    p = approximator_prefix(spec, layer)
    w1, b1, w2, b2 = (torch.from_numpy(weights[p + k]) for k in ("0.weight", "0.bias", "2.weight", "2.bias"))

    def apply(rows: torch.Tensor) -> torch.Tensor:  # (..., T) with T <= n
        T = rows.shape[-1]
        return F.linear(F.relu(F.linear(rows, w1[:, :T], b1)), w2[:T], b2[:T])

    return apply


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
        q = approximator_numpy(ma_weights, ma_spec, layer)(scores * m)  # (B, H, T, T)
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
    edges = [1, 9, 17, 33, 65, 129, 513]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        keep = (errors["length"] >= lo) & (errors["length"] < hi)
        if keep.any():
            out.append(row({"length": f"{lo}-{hi - 1}"}, np.s_[:, :, keep]))
    return out

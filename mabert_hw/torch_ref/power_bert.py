"""PoWER-BERT in torch, on the modules of a HF BertModel / BertForSequenceClassification (eager
attention): the independent check of model.py's elimination, and the soft-extract training of the
retention configuration (Goyal et al. 2020, sec. 3.3; IBM/PoWER-BERT model/model.py Soft_Extract).

Each layer runs HF's own attention block (self-attention, output dense, residual, LayerNorm) and
feed-forward chunk; between them this module ranks tokens by the attention they receive,
    s[k] = (1/H) sum_h sum_{q != k, q real} A_h[q, k],  padded k -> -inf,
and then either
- hard extract: keeps CLS and the l_j - 1 highest-ranked others in original order (the 0/1 mask is
  gathered with them), or
- soft extract: multiplies the token of rank t (CLS is always rank 0, then by significance, ties to the
  lower position; the official Soft_Extract ranks CLS like any token, but its hard Extract always keeps
  CLS, so here soft and hard agree on it) by a trainable r_j[t] in [0, 1];
  the regulariser lambda * sum_j j * sum_t r_j[t]
  pushes late layers hardest, and l_j = floor(sum_t r_j[t]) afterwards (non-increasing by a running min).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

import torch
from torch import nn
from transformers import BertModel


def significance(probs: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, T, T) attention probs, (B, T) 0/1 mask -> (B, T) attention received."""
    real = token_mask.to(probs.dtype)
    received = torch.einsum("bhqk,bq->bk", probs, real)
    diagonal = torch.diagonal(probs, dim1=-2, dim2=-1).sum(1) * real  # (B, T)
    s = (received - diagonal) / probs.shape[1]
    return s.masked_fill(token_mask == 0, float("-inf"))


def ranking(s: torch.Tensor) -> torch.Tensor:
    """(B, T) significance -> (B, T) token positions, CLS first, then most significant first."""
    rest = torch.sort(-s[:, 1:], dim=1, stable=True).indices + 1
    return torch.cat([torch.zeros_like(rest[:, :1]), rest], dim=1)


def kept_index(s: torch.Tensor, keep: int) -> torch.Tensor:
    """(B, T) significance -> (B, keep) positions of CLS and the keep - 1 most significant, in order."""
    return torch.sort(ranking(s)[:, :keep], dim=1).values


class PowerBert(nn.Module):
    """Wraps a HF BERT (with or without a classifier). mode: "hard" (needs retention) or "soft"."""

    def __init__(self, hf: nn.Module, retention: Sequence[int] | None = None,
                 mode: str = "hard", max_len: int = 128):
        super().__init__()
        self.hf = hf
        self.bert: BertModel = hf if isinstance(hf, BertModel) else hf.bert
        self.mode = mode
        self.retention = None if retention is None else tuple(retention)
        layers = len(self.bert.encoder.layer)
        if mode == "hard" and self.retention is not None and len(self.retention) != layers:
            raise ValueError(f"retention has {len(self.retention)} entries for {layers} layers")
        self.soft = nn.Parameter(torch.ones(layers, max_len)) if mode == "soft" else None  # r_j[t]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_kept: bool = False):
        """-> dict: hidden_states (L + 1, each (B, T_l, C)), pooled, logits (or None), kept
        (per layer, the (B, T_l) ORIGINAL positions still present, when output_kept)."""
        token_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, C)
        positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)  # (B, T)
        hidden_states, kept = [x], []
        for j, layer in enumerate(self.bert.encoder.layer):
            bias = (1.0 - token_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
            x, probs = layer.attention(x, bias)  # (B, T, C), (B, H, T, T)
            s = significance(probs, token_mask)
            if self.mode == "soft":
                rank_of = torch.argsort(ranking(s), dim=1)  # (B, T): rank of each position
                x = x * self.soft[j].clamp(0, 1)[rank_of].unsqueeze(-1)
            elif self.retention is not None and self.retention[j] < x.shape[1]:
                index = kept_index(s, self.retention[j])  # (B, l_j)
                x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                token_mask = torch.gather(token_mask, 1, index)
                positions = torch.gather(positions, 1, index)
            x = layer.feed_forward_chunk(x)
            hidden_states.append(x)
            kept.append(positions)
        pooled = self.bert.pooler(x) if self.bert.pooler is not None else None
        logits = None if self.hf is self.bert else self.hf.classifier(self.hf.dropout(pooled))
        out = {"hidden_states": hidden_states, "pooled": pooled, "logits": logits}
        if output_kept:
            out["kept"] = kept
        return out

    def soft_penalty(self) -> torch.Tensor:
        """sum_j j * sum_t r_j[t], j = 1..L (the paper's layer-weighted mass of the soft masks)."""
        weights = torch.arange(1, self.soft.shape[0] + 1, dtype=self.soft.dtype)
        return (weights * self.soft.clamp(0, 1).sum(1)).sum()

    def soft_retention(self) -> tuple[int, ...]:
        """l_j = floor(sum_t r_j[t]), at least 1, made non-increasing by a running minimum."""
        counts = torch.floor(self.soft.detach().clamp(0, 1).sum(1)).clamp(min=1).int().tolist()
        return tuple(accumulate(counts, min))


def train(model: PowerBert, batches: Iterable[dict], steps: int, lr: float, soft_lr: float = 0.0,
          lam: float = 0.0, progress: Callable | None = None) -> list[float]:
    """AdamW on the task loss (cross-entropy) + lam * soft_penalty() in soft mode; the soft masks
    learn at soft_lr and are clipped to [0, 1] after each step, as the official constraint does.
    batches: dicts of input_ids, attention_mask, token_type_ids, labels (torch tensors). Returns losses."""
    body = [p for name, p in model.named_parameters() if name != "soft" and p.requires_grad]
    groups = [{"params": body, "lr": lr}]
    if model.soft is not None:
        groups.append({"params": [model.soft], "lr": soft_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    model.train()
    losses, stream = [], iter(batches)
    for _ in progress(range(steps)) if progress else range(steps):
        batch = next(stream)
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = nn.functional.cross_entropy(out["logits"], batch["labels"])
        if model.soft is not None:
            loss = loss + lam * model.soft_penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if model.soft is not None:
            with torch.no_grad():
                model.soft.clamp_(0.0, 1.0)
        losses.append(loss.item())
    model.eval()
    return losses

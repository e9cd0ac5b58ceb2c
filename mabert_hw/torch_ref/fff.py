"""UltraFastBERT fast feed-forward in torch: the independent check of every backend's FFF, the
FFF-BMM form the benchmark times, and the trainable module of the MiniLM distillation study.

`FFF.forward` is the hard path as the official training code computes it (pbelcak/UltraFastBERT
training/cramming/architectures/fff.py): every node's logit by one dense linear_in, the visited
nodes marked in a 0/1 map by walking the decisions level by level, then linear_out of
GELU(logits) * map. It shares nothing with the walk of mabert_hw/fff.py but the equations.
`FFF.forward_gather` computes only the visited nodes: per level, gather each token's w_in row, a
batched dot (bmm), and its w_out column; gradients reach the visited rows only, as in the official
hard-path training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..fff import FFF_PREFIX, n_nodes
from ..spec import ModelSpec
from ..weights import Weights, layer_prefix
from .hf import hf_model


class FFF(nn.Module):
    """Field names are the official module's, so its state dict loads as is."""

    def __init__(self, width: int, depth: int, trees: int = 1, out_width: int | None = None):
        super().__init__()
        self.depth, self.trees, self.nodes = depth, trees, n_nodes(depth)
        self.linear_in = nn.Linear(width, trees * self.nodes, bias=True)
        self.linear_out = nn.Linear(trees * self.nodes, out_width or width, bias=False)
        bound_in = math.sqrt(1.0 / width)  # the official initialisation: uniform(+-sqrt(1/C)) ...
        bound_out = math.sqrt(1.0 / ((depth + 1) * trees))  # ... and uniform(+-sqrt(1/((d+1)K)))
        nn.init.uniform_(self.linear_in.weight, -bound_in, bound_in)
        nn.init.uniform_(self.linear_in.bias, -bound_in, bound_in)
        nn.init.uniform_(self.linear_out.weight, -bound_out, bound_out)

    def visited(self, logits: torch.Tensor) -> torch.Tensor:
        """(M, K, N) logits -> (M, K, d + 1) node index visited at each level (walk of the signs)."""
        right = logits > 0  # (M, K, N)
        node = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)  # (M, K)
        path = [node]
        for _ in range(self.depth):
            go_right = torch.gather(right, 2, node.unsqueeze(2)).squeeze(2)  # (M, K)
            node = 2 * node + 1 + go_right.long()
            path.append(node)
        return torch.stack(path, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (M, C)
        logits = self.linear_in(flat).view(-1, self.trees, self.nodes)  # (M, K, N)
        with torch.no_grad():
            chosen = torch.zeros_like(logits).scatter_(2, self.visited(logits), 1.0)  # (M, K, N) 0/1
        y = self.linear_out((nn.functional.gelu(logits) * chosen).flatten(1))  # (M, C_out)
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., C_out); -1 fails at 0 tokens

    def forward_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Same output, computing only the d + 1 visited nodes per tree (batched gather + bmm)."""
        flat = x.reshape(-1, x.shape[-1])  # (M, C)
        w_in, b_in = self.linear_in.weight, self.linear_in.bias  # (K*N, C), (K*N,)
        w_out = self.linear_out.weight.t()  # (K*N, C_out)
        y = flat.new_zeros(flat.shape[0], w_out.shape[1])  # (M, C_out)
        for k in range(self.trees):
            node = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)  # (M,)
            for _ in range(self.depth + 1):
                row = k * self.nodes + node
                logit = torch.bmm(w_in[row].unsqueeze(1), flat.unsqueeze(2)).view(-1) + b_in[row]  # (M,)
                y = y + nn.functional.gelu(logit).unsqueeze(1) * w_out[row]  # (M, C_out)
                node = 2 * node + 1 + (logit > 0).long()
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., C_out); -1 fails at 0 tokens

    def load_numpy(self, weights: Weights, prefix: str) -> FFF:
        """Load `<prefix>linear_in.weight`, ... from our Weights (float32 copies)."""
        state = {key: torch.from_numpy(np.array(weights[prefix + key], dtype=np.float32))
                 for key in self.state_dict()}
        self.load_state_dict(state)
        return self


def hf_fff_model(spec: ModelSpec, weights: Weights) -> nn.Module:
    """HF BertModel whose every layer's FFN is an FFF: BertLayer computes LN(x + output.dense(
    intermediate(x))), so intermediate becomes the FFF and output.dense the identity."""
    v = spec.variant
    dense_spec = spec.with_variant(ffn="dense")
    model = hf_model(dense_spec, None)
    body = getattr(model, "bert", model)  # BertForSequenceClassification keeps the encoder in .bert
    prefix = "" if body is model else "bert."
    state = {(key if key.startswith("classifier.") else prefix + key): torch.from_numpy(np.ascontiguousarray(value))
             for key, value in weights.items() if f".{FFF_PREFIX}" not in key}
    missing, unexpected = model.load_state_dict(state, strict=False)
    ffn_keys = (".intermediate.dense.", ".output.dense.")
    missing = [k for k in missing if not any(s in k for s in ffn_keys) and not k.endswith("position_ids")
               and "token_type_ids" not in k]
    if missing or unexpected:
        raise ValueError(f"HF model keys differ: missing {missing}, unexpected {unexpected}")
    for layer, module in enumerate(body.encoder.layer):
        module.intermediate = FFF(spec.hidden, v.fff_depth, v.fff_trees).load_numpy(
            weights, layer_prefix(layer) + FFF_PREFIX)
        module.output.dense = nn.Identity()
    return model.eval()

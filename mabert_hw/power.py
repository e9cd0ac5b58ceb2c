"""PoWER-BERT (Goyal et al. 2020, IBM/PoWER-BERT): progressive word-vector elimination.

A retention configuration l_1 >= ... >= l_L says how many word vectors layer j passes on. In layer j,
after the attention block (attention output + residual + LayerNorm) and before the feed-forward, the
significance of token k is the attention it receives, averaged over heads and summed over queries:

    s[k] = (1/H) sum_h sum_{q != k, q real} A_h[q, k]            (1)

and the layer keeps CLS plus the l_j - 1 most significant other tokens, in their original order
(ties go to the lower position). The feed-forward and every later layer see only the kept tokens;
their 0/1 padding mask is gathered with them.

Where this follows the official code and where it departs (model/model.py, Hard_Extract):
- the official code also subtracts the diagonal and averages heads before summing queries (1);
- it sums over ALL query rows, padded ones included, so a sentence's kept tokens there depend on how
  much padding its batch has; here padded queries are left out, so the choice is the sentence's own;
- padded keys get ~0 there (their attention is masked) and lose to real tokens; here they are -inf,
  which says the same thing exactly;
- it truncates the mask to its first l_j entries; gathering it gives the same mask there (padding
  sits at the end and loses every comparison), and stays right for any padding layout.
When l_j >= the tokens present, layer j keeps them all and records no elimination ops.

With MA-BERT (softmax="mlp") there are no attention probabilities: A in (1) is the softmax
approximator's output q = W_2 relu(W_1 s + b_1) + b_2 on each (masked) score row, the very weights the
layer mixes the value vectors with (context = q V). Chosen over the alternatives because:
- it keeps the MA layer matrix-arithmetic only: (1) is adds, the ranking compares (a softmax of the
  raw scores would bring back the exp and div MA removes);
- it is what the layer computes anyway; q is not a distribution (entries can be negative, rows do
  not sum to 1: reports/ma_bert), and a negative weight counts against a token, as it takes that
  token's value out of the others' outputs.
Padded keys still get -inf and padded query rows are still left out, as in (1). After elimination
the T_l kept tokens are compacted to positions 0..T_l-1 of the next layer's score rows, so the
approximator reads them as a T_l-token sentence zero-padded to n (model.py: its first T_l columns
of W_1 and rows of W_2, b_2), the way it reads any shorter input and the way it was trained (real
tokens first, zeros after). Keeping each token at its original column instead would need the
approximator's weights gathered per sentence (one weight matrix per row of the batch, not one GEMM)
and would put zeros in the middle of rows, which training never showed it; measured on MA-MiniLM
STS-B dev it is also no better (0.2-3.5 points worse: reports/power_bert/power_ma_columns.csv).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from .backends.base import Backend
from .errors import UserError
from .spec import check_retention


class Eliminator:
    """Carries the kept tokens' 0/1 mask from layer to layer; called once per layer by model.py."""

    def __init__(self, backend: Backend, retention: Sequence[int], token_mask, mask_mode: str):
        self.backend = backend
        self.retention = tuple(retention)
        self.token_mask = token_mask  # (B, T_l) 0/1 of the tokens still present
        self.mask_mode = mask_mode

    @property
    def mask(self):
        """The attention mask bias of the tokens still present, (B, 1, 1, T_l)."""
        return self.backend.mask_bias(self.token_mask, self.mask_mode)

    def __call__(self, layer: int, prefix: str, x, probs):
        """x (B, T, C) after the attention block, probs (B, H, T, T) -> x (B, l_j, C)."""
        keep = self.retention[layer]
        if keep >= x.shape[1]:
            return x
        bk, p = self.backend, prefix + "power."
        significance = bk.significance(p + "significance", probs, self.token_mask)  # (B, T)
        index = bk.top_tokens(p + "top_tokens", significance, keep)  # (B, l_j)
        self.token_mask = bk.select_tokens(p + "select_mask", self.token_mask, index)  # (B, l_j)
        return bk.select_tokens(p + "select", x, index)  # (B, l_j, C)


def parse_retention(text: str, layers: int, seq_len: int | None = None) -> tuple[int, ...]:
    """'64,48,32,...' (one count per layer) -> a validated tuple (see check_retention)."""
    try:
        retention = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise UserError(f"retention must be comma-separated integers, got {text!r}") from None
    return check_retention(retention, layers, seq_len)


def geometric_retention(seq_len: int, layers: int, ratio: float, floor: int = 1) -> tuple[int, ...]:
    """l_j = max(floor, round(seq_len * ratio^j)), j = 1..L: the paper's schedules decay about so."""
    return tuple(max(floor, min(seq_len, round(seq_len * ratio ** j))) for j in range(1, layers + 1))


def kept_tokens(seq_len: int, retention: Sequence[int]) -> list[int]:
    """T_l after each layer for inputs of seq_len tokens: T_l = min(l_j, T_{l-1})."""
    return list(accumulate(retention, min, initial=seq_len))[1:]

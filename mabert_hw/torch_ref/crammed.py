"""crammed BERT / UltraFastBERT encoder in torch, built as the official modules are (pbelcak/UltraFastBERT
training/cramming/architectures/crammed_bert.py on JonasGeiping/cramming's components.py,
attention.py and embeddings.py), so that its state dict carries the official key names and loads
an official state dict strictly. It is the independent check of crammed_checkpoint.py (key map,
per-head fused-QKV split, position table, zero biases) and of model.py's pre-LN blocks: it shares
only torch_ref.fff.FFF (the hard-path module) and the parsed arch config (CrammedArch) with them.

Batch-first throughout; the official SeqFirstSelfAttention runs [T, B, C] with the same math. Dropout
is left out (inference).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..crammed_checkpoint import CrammedArch
from .fff import FFF

MASKED_SCORE = -10000.0  # components.py get_extended_attention_mask: (1 - m) * -10000 on padded keys


class SinusoidalPositional(nn.Module):
    """pe[p, 2i] = sin(p f_i), pe[p, 2i+1] = cos(p f_i), f_i = exp(2i * -ln(10000) / C), not saved."""

    def __init__(self, width: int, positions: int):
        super().__init__()
        position = torch.arange(positions, dtype=torch.float32).unsqueeze(1)  # (P, 1)
        frequency = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
        pe = torch.zeros(positions, width)
        pe[:, 0::2] = torch.sin(position * frequency)
        pe[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.pe[: input_ids.shape[1]].unsqueeze(0)  # (1, T, C)


class ScaledSinusoidal(SinusoidalPositional):
    """The sinusoids times one learned scalar, initialised to 1/sqrt(C)."""

    def __init__(self, width: int, positions: int):
        super().__init__(width, positions)
        self.scale_factor = nn.Parameter(torch.tensor([1.0 / math.sqrt(width)]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.scale_factor * super().forward(input_ids)


class LearnablePositional(nn.Module):
    def __init__(self, width: int, positions: int):
        super().__init__()
        self.embedding = nn.Embedding(positions, width)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.position_ids[:, : input_ids.shape[1]])  # (1, T, C)


POSITIONAL = {"scaled-sinusoidal": ScaledSinusoidal, "sinusoidal": SinusoidalPositional,
              "learned": LearnablePositional}


class EmbeddingComponent(nn.Module):
    def __init__(self, arch: CrammedArch, vocab_size: int):
        super().__init__()
        self.word_embedding = nn.Embedding(vocab_size, arch.hidden)
        self.pos_embedding = POSITIONAL[arch.positions](arch.hidden, arch.max_positions)
        self.norm = nn.LayerNorm(arch.hidden, eps=arch.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.word_embedding(input_ids) + self.pos_embedding(input_ids))


class SelfAttention(nn.Module):
    """One fused projection whose output is viewed as (H, 3D): head h's q, k, v are its 3 D-slices."""

    def __init__(self, arch: CrammedArch):
        super().__init__()
        self.heads, self.head_dim = arch.heads, arch.hidden // arch.heads
        self.query_key_value = nn.Linear(arch.hidden, 3 * arch.hidden, bias=arch.qkv_bias)
        self.register_buffer("norm_factor", torch.tensor(self.head_dim).rsqrt())

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        mixed = self.query_key_value(x).view(B, T, self.heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in torch.split(mixed, self.head_dim, dim=3))  # (B, H, T, D) each
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.norm_factor + mask_bias  # (B, H, T, T)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, T, D)
        return context.transpose(1, 2).reshape(B, T, C)


class AttentionComponent(nn.Module):
    def __init__(self, arch: CrammedArch):
        super().__init__()
        self.self_attention = SelfAttention(arch)
        self.dense = nn.Linear(arch.hidden, arch.hidden, bias=arch.use_bias)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.dense(self.self_attention(x, mask_bias))


class FFNComponent(nn.Module):
    def __init__(self, arch: CrammedArch):
        super().__init__()
        self.dense_in = nn.Linear(arch.hidden, arch.intermed_size, bias=arch.use_bias)
        self.nonlin = nn.GELU() if arch.activation == "gelu" else nn.ReLU()
        self.dense_out = nn.Linear(arch.intermed_size, arch.hidden, bias=arch.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.nonlin(self.dense_in(x)))


class TransformerLayer(nn.Module):
    def __init__(self, arch: CrammedArch):
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.hidden, eps=arch.eps)
        self.norm2 = nn.LayerNorm(arch.hidden, eps=arch.eps)
        self.attn = AttentionComponent(arch)
        # crammed_bert.py: FFF(hidden, hidden, intermed_depth, intermed_size), i.e. K = intermed_size trees
        self.ffn = FFF(arch.hidden, arch.depth, arch.intermed_size) if arch.ffn == "fff" else FFNComponent(arch)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask_bias)
        return x + self.ffn(self.norm2(x))


class ScriptableLM(nn.Module):
    def __init__(self, arch: CrammedArch, vocab_size: int):
        super().__init__()
        self.embedding = EmbeddingComponent(arch, vocab_size)
        self.layers = nn.ModuleList(TransformerLayer(arch) for _ in range(arch.layers))
        self.final_norm = nn.LayerNorm(arch.hidden, eps=arch.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """L + 1 hidden states: the embeddings, each layer's output, the last through final_norm."""
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * MASKED_SCORE  # (B, 1, 1, T)
        hidden = [self.embedding(input_ids)]
        for layer in self.layers:
            hidden.append(layer(hidden[-1], mask_bias))
        hidden[-1] = self.final_norm(hidden[-1])
        return hidden


class ScriptableLMForPreTraining(nn.Module):
    """The encoder and its MLM decoder, tied to the word embedding (skip_head_transform, no decoder bias)."""

    def __init__(self, arch: CrammedArch, vocab_size: int):
        super().__init__()
        self.encoder = ScriptableLM(arch, vocab_size)
        self.decoder = nn.Linear(arch.hidden, vocab_size, bias=False)
        self.decoder.weight = self.encoder.embedding.word_embedding.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(input_ids, attention_mask)


# What crammed_checkpoint.encoder_keys drops and the model rebuilds: the decoder is the word embedding
# (tied), position_ids is arange(P).
REBUILT_KEYS = ("decoder.weight", "encoder.embedding.pos_embedding.position_ids")


def load_official(arch: CrammedArch, state: dict[str, np.ndarray]) -> ScriptableLMForPreTraining:
    """The model with an official-layout state dict loaded: every key must fit, none may be missing
    but REBUILT_KEYS."""
    model = ScriptableLMForPreTraining(arch, state["encoder.embedding.word_embedding.weight"].shape[0])
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                                strict=False)
    missing = [k for k in missing if k not in REBUILT_KEYS]
    if missing or unexpected:
        raise ValueError(f"crammed state dict keys differ: missing {missing}, unexpected {unexpected}")
    return model.eval()


def initial_state(arch: CrammedArch, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """The module's own (seeded) initialisation as an official-layout state dict."""
    torch.manual_seed(seed)
    return {k: v.numpy() for k, v in ScriptableLMForPreTraining(arch, vocab_size).state_dict().items()}


@torch.no_grad()
def crammed_hidden_states(model: ScriptableLMForPreTraining, input_ids: np.ndarray,
                          attention_mask: np.ndarray) -> list[np.ndarray]:
    hidden = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    return [h.numpy() for h in hidden]

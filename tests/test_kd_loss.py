"""torch_ref.train.kd_loss, the MA-BERT knowledge-transfer loss, against the formula written out anew.

DESIGN.md / train.py's docstring: L = a CE(z_s / t, softmax(z_t / t)) + (1 - a) L_task
+ b [sum_i MSE(H_s^i, H_t^i) + g sum_i MSE(A_s^i, A_t^i)], t = 15, a = 0.9, b = 1, g = 100; H^i the
embeddings and every layer's output over real tokens, A^i the attention rows over real query rows
(every key column); text corpora carry no labels, so L_task is absent, and the logit term exists only
with a classifier. The transcription here selects real positions by boolean indexing and uses
F.mse_loss / F.cross_entropy with probability targets in float64, where kd_loss multiplies by the mask
and divides by counts in float32; values and gradients are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mabert_hw.torch_ref.train import kd_loss

T_SOFT, A_CE, B_KD, G_ATT = 15.0, 0.9, 1.0, 100.0  # the paper's t, a, b, g (DESIGN.md)
# float32 kd_loss vs the float64 transcription: sums of a few hundred float32 terms of size ~1 round at
# ~1e-6 relative; 1e-5 leaves a decade. A wrong weight, temperature or mask moves the loss by > 1 %.
KD_LOSS_RTOL = 1e-5

B, T, C, H, L, K = 3, 7, 8, 2, 2, 3
LENGTHS = (7, 4, 2)  # one full row, two padded ones


def outputs(seed: int, logits: bool) -> tuple[dict, dict, torch.Tensor]:
    """Student and teacher outputs as the models return them (float32), differing everywhere; at padded
    positions by far more, so that counting them would show."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()  # (B, T), int64 as in training
    pad_tok = (1 - mask)[..., None].float()  # (B, T, 1)
    pad_row = (1 - mask)[:, None, :, None].float()  # (B, 1, T, 1): padded query rows

    def hidden():
        return [torch.randn(B, T, C, generator=g) + 50 * pad_tok for _ in range(L + 1)]

    def attention(student: bool):
        rows = [torch.softmax(torch.randn(B, H, T, T, generator=g), -1) for _ in range(L)]
        if student:  # approximator outputs: off the simplex, negative entries, wild at padded rows
            rows = [r + 0.1 * torch.randn(B, H, T, T, generator=g) + 5 * pad_row for r in rows]
        return rows

    def head():
        return 20 * torch.randn(B, K, generator=g) if logits else None  # spread >> t: the temperature matters

    student = {"hidden_states": hidden(), "attentions": attention(True), "logits": head()}
    teacher = {"hidden_states": hidden(), "attentions": attention(False), "logits": head()}
    for value in student["hidden_states"] + student["attentions"] + ([student["logits"]] if logits else []):
        value.requires_grad_(True)
    return student, teacher, mask


def transcription(student: dict, teacher: dict, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The formula in float64: MSE over the real tokens' channels, over real query rows' (head, key) entries."""
    real = mask.bool()  # (B, T)
    d = {k: [x.double() for x in v] for k, v in student.items() if k != "logits"}
    e = {k: [x.double() for x in v] for k, v in teacher.items() if k != "logits"}
    hidden = sum(F.mse_loss(s[real], t[real]) for s, t in zip(d["hidden_states"], e["hidden_states"]))
    # (B, H, T, T) -> (B, T_query, H, T_key), then the real query rows
    attention = sum(F.mse_loss(s.transpose(1, 2)[real], t.transpose(1, 2)[real])
                    for s, t in zip(d["attentions"], e["attentions"]))
    loss = B_KD * (hidden + G_ATT * attention)
    parts = {"hidden": hidden, "attention": attention}
    if student["logits"] is not None:
        target = F.softmax(teacher["logits"].double() / T_SOFT, dim=-1)
        ce = F.cross_entropy(student["logits"].double() / T_SOFT, target)  # probability targets, batch mean
        loss = loss + A_CE * ce
        parts["soft_ce"] = ce
    return loss, parts


def gradients(loss: torch.Tensor, student: dict) -> list[np.ndarray]:
    leaves = [x for k in ("hidden_states", "attentions") for x in student[k]]
    leaves += [student["logits"]] if student["logits"] is not None else []
    return [g.numpy() for g in torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("with_logits", [True, False], ids=["classifier", "encoder-only"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kd_loss_equals_the_paper_formula(seed, with_logits):
    student, teacher, mask = outputs(seed, with_logits)
    ours, our_parts = kd_loss(student, teacher, mask)
    theirs, their_parts = transcription(student, teacher, mask)
    assert set(our_parts) == set(their_parts)
    for name, value in their_parts.items():
        assert our_parts[name] == pytest.approx(value.item(), rel=KD_LOSS_RTOL), name
    assert ours.item() == pytest.approx(theirs.item(), rel=KD_LOSS_RTOL)
    # kd_loss trains the student: its gradient is the formula's, down to the masked (zero) entries
    for got, want in zip(gradients(ours, student), gradients(theirs, student)):
        np.testing.assert_allclose(got, want, rtol=KD_LOSS_RTOL, atol=KD_LOSS_RTOL * np.abs(want).max())


def test_each_term_carries_weight():
    """No weighted term is negligible (each is over 1 % of the total, 1000 x KD_LOSS_RTOL): a wrong weight or
    a dropped term changes the total far beyond the tolerance, so the comparison above can fail."""
    student, teacher, mask = outputs(0, True)
    _, parts = transcription(student, teacher, mask)
    weighted = np.array([B_KD * parts["hidden"].item(), B_KD * G_ATT * parts["attention"].item(),
                         A_CE * parts["soft_ce"].item()])
    assert weighted.min() > 0.01 * weighted.sum(), weighted

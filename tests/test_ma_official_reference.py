"""MA-BERT against the official code (W6WM9M/MA-BERT), transcribed here anew in NumPy float64 from
ma_bert/modeling_ma_bert.py, ma_distilbert/modeling_ma_distilbert.py, ma_distilbert/ma_distilbert_modifications.py
(MaskPowerNorm, Softmax_Approximator), the two configuration files and val_glue.py (TotalLossForKD):

- attention: scores = Q K^T / sqrt(D), times the unmodified 0/1 mask reshaped (B, 1, 1, T) (padded keys -> 0,
  padded query rows untouched), then Linear(n->h) -> ReLU -> Linear(h->n) on the last axis; one per layer or
  one module shared by all (state dict: `<root>.softmax.*` and the same tensors under every layer);
- every LayerNorm of the encoder (embeddings included) is MaskPowerNorm, eval: w * x / sqrt(running_phi + eps) + b
  with eps = config.layer_norm_eps; FFN activation config.ffn_hidden_act (DistilBERT: ffn_activation); the
  pooler keeps tanh;
- MaskPowerNorm training as MA-BERT calls it (no input_mask): statistic mean(x^2) over every position; in
  iteration i, z = x / sqrt(stat + eps) while i <= warmup_iters, else x / sqrt(running_phi + eps); every
  accumulation_step iterations phi <- phi (i - 1) / i + acc / i (only while i < warmup_iters), then
  phi <- 0.9 phi + 0.1 acc;
- TotalLossForKD: a CE(z_s / 15, softmax(z_t / 15)) + (1 - a) L_task + b (sum_i MSE(H_s^i, H_t^i)
  + 100 sum_i MSE(A_s^i, A_t^i)), nn.MSELoss means over every element.

The project's documented differences are checked as documented: T < n runs the approximator on the score row
zero-padded to n with the extra outputs dropped (model.py), the PowerNorm statistic counts real tokens only
and no gradient accumulation (torch_ref/ma_bert.py), the knowledge-transfer loss has no task term
(torch_ref/train.py). With padding, kd_loss averages over real positions only: test_kd_loss.py checks that.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mabert_hw import checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.fold import fold_powernorm, read_hidden_states
from mabert_hw.ma_checkpoint import spec_from_ma
from mabert_hw.model import forward
from mabert_hw.torch_ref.ma_bert import PowerNorm, load_official
from mabert_hw.torch_ref.train import kd_loss

from .tolerances import FOLDED_VS_UNFOLDED_ATOL, REFERENCE_VS_TORCH_ATOL

V, P, C, L, H, F, N, HID = 53, 24, 12, 2, 3, 20, 16, 10  # vocab, positions, hidden, layers, heads, FFN, n, h
WARMUP_UPDATES = 997120  # MA_BertConfig / MA_DistilBertConfig warmup_updates
ALPHA_FWD = 0.9  # MaskPowerNorm alpha_fwd
# float32 (project) vs float64 (transcription) on the same math: summation-order noise ~1e-6 relative
STATS_RTOL = 1e-5
# the comparisons must be able to fail: what each checked rule changes is this many times the tolerance
SENSITIVITY = 100

# Official module names per layout: (state-dict root, layer prefix, names inside a layer).
LAYOUTS = {
    "bert": ("bert.", "bert.encoder.layer.{}.", {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "softmax": "attention.self.softmax", "o": "attention.output.dense", "norm1": "attention.output.LayerNorm",
        "ffn1": "intermediate.dense", "ffn2": "output.dense", "norm2": "output.LayerNorm"}),
    "distilbert": ("distilbert.", "distilbert.transformer.layer.{}.", {
        "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "softmax": "attention.softmax",
        "o": "attention.out_lin", "norm1": "sa_layer_norm", "ffn1": "ffn.lin1", "ffn2": "ffn.lin2",
        "norm2": "output_layer_norm"}),
}
# name: (layout, shared approximator, head, FFN activation, layer_norm_eps or None for the config default)
CASES = {
    "bert-mlm": ("bert", False, "mlm", "relu", None),
    "bert-mlm-shared": ("bert", True, "mlm", "relu", None),
    "bert-classifier-eps": ("bert", False, "classifier", "relu", 0.1),
    "distilbert-mlm": ("distilbert", False, "mlm", "relu", None),
    "distilbert-shared-gelu": ("distilbert", True, "mlm", "gelu", None),
}


def official_state(layout: str, share: bool, head: str, seed: int = 0) -> dict[str, np.ndarray]:
    """What MA_BertForMaskedLM / MA_BertForSequenceClassification / MA_DistilBertForMaskedLM.state_dict() holds."""
    rng = np.random.default_rng(seed)
    root, layer, names = LAYOUTS[layout]
    state: dict[str, np.ndarray] = {}

    def linear(name, fan_in, fan_out, std=0.1):
        state[name + ".weight"] = rng.normal(0, std, (fan_out, fan_in))
        state[name + ".bias"] = rng.normal(0, 0.1, fan_out)

    def power_norm(name):
        state[name + ".weight"] = 1 + rng.normal(0, 0.2, C)
        state[name + ".bias"] = rng.normal(0, 0.1, C)
        state[name + ".running_phi"] = rng.uniform(0.3, 3.0, (1, C, 1, 1))
        state[name + ".ema_gz"] = rng.normal(0, 0.01, (1, C, 1, 1))
        state[name + ".iters"] = np.array([1234], np.int64)
        state[name + ".accumulated_var"] = rng.uniform(0, 1, (1, C, 1, 1))

    def approximator(name):
        linear(name + ".linear_relu_stack.0", N, HID, std=0.15)
        linear(name + ".linear_relu_stack.2", HID, N, std=0.15)

    e = root + "embeddings."
    state[e + "word_embeddings.weight"] = rng.normal(0, 1, (V, C))
    state[e + "position_embeddings.weight"] = rng.normal(0, 1, (P, C))
    if layout == "bert":
        state[e + "token_type_embeddings.weight"] = rng.normal(0, 1, (2, C))
        state[e + "position_ids"] = np.arange(P)[None, :]  # a persistent buffer in MA_BertEmbeddings
    power_norm(e + "LayerNorm")
    if share:
        approximator(root + "softmax")
    for i in range(L):
        p = layer.format(i)
        for proj in "qkvo":  # Q and K larger: scores of order 1, so the mask and the scale matter
            linear(p + names[proj], C, C, std=0.2 if proj in "qk" else 0.1)
        if share:  # the one shared module, saved again under every layer
            for key in [k for k in state if k.startswith(root + "softmax.")]:
                state[p + names["softmax"] + key.removeprefix(root + "softmax")] = state[key]
        else:
            approximator(p + names["softmax"])
        power_norm(p + names["norm1"])
        linear(p + names["ffn1"], C, F)
        linear(p + names["ffn2"], F, C)
        power_norm(p + names["norm2"])
    if head == "classifier":
        linear(root + "pooler.dense", C, C)
        linear("classifier", C, 3)
    elif layout == "bert":  # MA_BertForMaskedLM: no pooler (add_pooling_layer=False), the MLM head
        linear("cls.predictions.transform.dense", C, C)
        state["cls.predictions.transform.LayerNorm.weight"], state["cls.predictions.transform.LayerNorm.bias"] = (
            np.ones(C), np.zeros(C))  # nn.LayerNorm: the head keeps it
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"] = np.zeros(V)
        state["cls.predictions.decoder.weight"] = state[e + "word_embeddings.weight"]
    else:
        linear("vocab_transform", C, C)
        state["vocab_layer_norm.weight"], state["vocab_layer_norm.bias"] = np.ones(C), np.zeros(C)
        linear("vocab_projector", C, V)
    return state


def official_config(layout: str, share: bool, activation: str, eps: float | None) -> dict:
    """config.json as save_pretrained writes MA_BertConfig / MA_DistilBertConfig (their key spellings)."""
    ma = {"norm_type": "Power", "use_softmax_approx": True, "share_softmax_nn": share, "softmax_input_size": N,
          "softmax_hidden_layer_size": HID, "warmup_updates": WARMUP_UPDATES, "accumulation_step": 8,
          "vocab_size": V, "max_position_embeddings": P}
    if eps is not None:
        ma["layer_norm_eps"] = eps
    if layout == "bert":
        return {**ma, "model_type": "bert", "hidden_size": C, "num_hidden_layers": L, "num_attention_heads": H,
                "intermediate_size": F, "type_vocab_size": 2, "ffn_hidden_act": activation,
                "predicition_head_hidden_act": "gelu"}
    return {**ma, "model_type": "distilbert", "dim": C, "n_layers": L, "n_heads": H, "hidden_dim": F,
            "ffn_activation": activation, "cls_activation": "gelu"}


def gelu(x: np.ndarray) -> np.ndarray:
    """ACT2FN["gelu"]: the erf form."""
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def official_forward(state: dict, config: dict, layout: str, ids, mask, types) -> dict:
    """The official model's eval forward in float64. T < n is not official (nn.Linear(n, h) needs T = n): the
    score rows are then zero-padded to n and the extra outputs dropped, the project's documented rule."""
    root, layer, names = LAYOUTS[layout]
    eps = config.get("layer_norm_eps", 1e-12)
    act = {"relu": lambda y: np.maximum(y, 0), "gelu": gelu}[config.get("ffn_hidden_act",
                                                                       config.get("ffn_activation"))]
    D = C // H
    B, T = ids.shape

    def w(key):
        return np.asarray(state[key], np.float64)

    def linear(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")

    def power_norm(x, name):  # MaskPowerNorm eval branch
        return w(name + ".weight") * x / np.sqrt(w(name + ".running_phi").reshape(-1) + eps) + w(name + ".bias")

    def heads(y):  # (B, T, C) -> (B, H, T, D)
        return y.reshape(B, T, H, D).transpose(0, 2, 1, 3)

    e = root + "embeddings."
    x = w(e + "word_embeddings.weight")[ids] + w(e + "position_embeddings.weight")[np.arange(T)]
    if layout == "bert":
        x = x + w(e + "token_type_embeddings.weight")[types]
    x = power_norm(x, e + "LayerNorm")
    keep = mask.reshape(B, 1, 1, T).astype(np.float64)
    hidden_states, attentions = [x], []
    for i in range(L):
        p = layer.format(i)
        q, k, v = (heads(linear(x, p + names[name])) for name in "qkv")
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) * keep
        s = p + names["softmax"] + ".linear_relu_stack."
        padded = np.concatenate([scores, np.zeros((B, H, T, N - T))], axis=-1)
        probs = linear(np.maximum(linear(padded, s + "0"), 0), s + "2")[..., :T]
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x1 = power_norm(linear(context, p + names["o"]) + x, p + names["norm1"])
        x = power_norm(linear(act(linear(x1, p + names["ffn1"])), p + names["ffn2"]) + x1, p + names["norm2"])
        hidden_states.append(x)
        attentions.append(probs)
    out = {"hidden_states": hidden_states, "attentions": attentions, "pooled": None, "logits": None}
    if root + "pooler.dense.weight" in state:
        out["pooled"] = np.tanh(linear(x[:, 0], root + "pooler.dense"))
        out["logits"] = linear(out["pooled"], "classifier")
    return out


def padded_inputs(T: int, seed: int, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, types) of 3 rows: one full, two ending in padding ([PAD] = 0, type 0); DistilBERT has no
    token types (all 0)."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None, :] < np.array([T, T - 3, 2])[:, None]).astype(np.int64)
    ids = rng.integers(1, V, (3, T)) * mask
    types = (np.arange(T)[None, :] >= T // 2).astype(np.int64) * mask * (layout == "bert")
    return ids, mask, types


def save(tmp_path, case: str):
    layout, share, head, activation, eps = CASES[case]
    state = official_state(layout, share, head)
    config = official_config(layout, share, activation, eps)
    path = tmp_path / "ma_ckpt.pt"
    torch.save({k: torch.from_numpy(np.asarray(v, np.int64 if v.dtype.kind == "i" else np.float32))
                for k, v in state.items()}, path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return path, state, config, layout


def maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("T", [N, 9], ids=["T=n", "T<n"])
@pytest.mark.parametrize("case", CASES)
def test_official_state_dict_runs_as_the_official_model(tmp_path, case, T):
    path, state, config, layout = save(tmp_path, case)
    ck = checkpoint.load(path)
    assert (ck.spec.has_pooler, ck.spec.num_labels) == ((True, 3) if "classifier" in case else (False, 0))
    ids, mask, types = padded_inputs(T, T, layout)
    want = official_forward(state, config, layout, ids, mask, types)

    module = load_official(ck.spec, torch.load(path))
    with torch.no_grad():
        got = module(*(torch.from_numpy(a) for a in (ids, mask, types)))
    for key in ("hidden_states", "attentions"):
        for i, (a, b) in enumerate(zip(got[key], want[key], strict=True)):
            assert maxdiff(a, b) <= REFERENCE_VS_TORCH_ATOL, f"torch {key}[{i}]: maxdiff {maxdiff(a, b):.3e}"
    # the engines run the PowerNorm-folded weights: every hidden state, read back in its basis, is the official one
    bases = fold_powernorm(ck.spec, ck.unfolded)[1]
    for backend in ("reference", "fast"):
        ours = forward(ck.spec, ck.weights, ids, make_backend(backend), mask, types)
        for i, (a, b) in enumerate(zip(read_hidden_states(bases, ours.hidden_states), want["hidden_states"],
                                       strict=True)):
            assert maxdiff(a, b) <= FOLDED_VS_UNFOLDED_ATOL, f"{backend} hidden state {i}: maxdiff {maxdiff(a, b):.3e}"
        for key in ("pooled", "logits"):
            mine, theirs = getattr(ours, key), want[key]
            assert (mine is None) == (theirs is None), key
            assert theirs is None or maxdiff(mine, theirs) <= REFERENCE_VS_TORCH_ATOL, (backend, key)

    # the checks can fail: the 0/1 mask, and (where set) eps, move the outputs far beyond the tolerance
    unmasked = official_forward(state, config, layout, ids, np.ones_like(mask), types)
    assert maxdiff(unmasked["hidden_states"][-1], want["hidden_states"][-1]) > SENSITIVITY * REFERENCE_VS_TORCH_ATOL
    if "layer_norm_eps" in config:
        default_eps = official_forward(state, {**config, "layer_norm_eps": 1e-12}, layout, ids, mask, types)
        assert maxdiff(default_eps["logits"], want["logits"]) > SENSITIVITY * REFERENCE_VS_TORCH_ATOL


def test_short_inputs_differ_from_the_official_padding_to_n_tokens(tmp_path):
    """model.py's documented difference: the official model needs T = n, so its inputs are padded to n tokens,
    whose keys then get nonzero approximator weights; the project runs T tokens and drops those columns.
    The same real tokens give other hidden states; both agree at T = n (the test above)."""
    path, state, config, layout = save(tmp_path, "bert-mlm")
    ck = checkpoint.load(path)
    T = 9
    ids, mask, types = padded_inputs(T, 1, layout)
    ours = forward(ck.spec, ck.weights, ids, make_backend("reference"), mask, types).last_hidden_state
    pad = ((0, 0), (0, N - T))
    official = official_forward(state, config, layout, *(np.pad(a, pad) for a in (ids, mask, types)))
    real = mask.astype(bool)
    assert maxdiff(ours[real], official["hidden_states"][-1][:, :T][real]) > SENSITIVITY * REFERENCE_VS_TORCH_ATOL


@pytest.mark.parametrize("layout,key", [("bert", "ffn_hidden_act"), ("distilbert", "ffn_activation")])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_official_config_keys_give_the_variant(layout, key, activation):
    config = official_config(layout, True, activation, None)  # the activation under `key`, as the official names it
    spec = spec_from_ma(config, None, "x")
    v = spec.variant
    assert (v.softmax, v.norm, v.mask, v.ffn_activation) == ("mlp", "powernorm", "multiplicative", activation)
    assert (v.softmax_input, v.softmax_hidden, v.share_softmax) == (N, HID, True)
    assert (spec.hidden, spec.layers, spec.heads, spec.intermediate, spec.eps) == (C, L, H, F, 1e-12)
    assert spec.token_types == (layout == "bert")


class OfficialPowerNormTraining:
    """MaskPowerNorm.forward + PowerFunction.forward in training mode, as MA-BERT calls it (input_mask None:
    every position it is given counts), float64. x: (positions, C)."""

    def __init__(self, running_phi: np.ndarray, iters: int, warmup_iters: int, accumulation_step: int):
        self.running_phi = running_phi.astype(np.float64)
        self.accumulated_var = np.zeros_like(self.running_phi)
        self.iters, self.warmup_iters, self.accumulation_step = iters, warmup_iters, accumulation_step

    def __call__(self, x, weight, bias, eps):
        self.iters += 1
        i = self.iters
        var = (x * x).sum(axis=0) / x.shape[0]
        z = x / np.sqrt((var if i <= self.warmup_iters else self.running_phi) + eps)
        self.accumulated_var = self.accumulated_var + var / self.accumulation_step
        if i % self.accumulation_step == 0:
            if i < self.warmup_iters:
                self.running_phi = self.running_phi * (i - 1) / i + self.accumulated_var / i
            self.running_phi = ALPHA_FWD * self.running_phi + (1 - ALPHA_FWD) * self.accumulated_var
            self.accumulated_var = np.zeros_like(self.running_phi)
        return weight * z + bias


def norm_pair(iters: int, seed: int = 0) -> tuple[PowerNorm, OfficialPowerNormTraining, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight, bias, phi0 = 1 + rng.normal(0, 0.3, C), rng.normal(0, 0.2, C), rng.uniform(0.5, 2.0, C)
    ours = PowerNorm(C, eps=1e-5).train()
    with torch.no_grad():
        ours.weight.copy_(torch.from_numpy(weight))
        ours.bias.copy_(torch.from_numpy(bias))
        ours.running_phi.copy_(torch.from_numpy(phi0).view(1, C, 1, 1))
        ours.iters.fill_(iters)
    # accumulation_step = 1: the project accumulates no gradients (torch_ref/ma_bert.py)
    return ours, OfficialPowerNormTraining(phi0, iters, WARMUP_UPDATES, 1), weight, bias


def batch(seed: int, scale: float = 1.0) -> np.ndarray:
    """(B, T, C) with per-channel scales from 0.2 to 3: statistics far from the initial running_phi."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.3, 1.0, (4, 6, C)) * scale * np.linspace(0.2, 3.0, C)


@pytest.mark.parametrize("start", [0, WARMUP_UPDATES - 2], ids=["from-fresh", "across-the-warm-up-end"])
def test_powernorm_training_follows_the_official_update(start):
    ours, official, weight, bias = norm_pair(start)
    for step in range(5):
        x = batch(step)
        want = official(x.reshape(-1, C), weight, bias, 1e-5).reshape(x.shape)
        got = ours(torch.from_numpy(x).float()).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=STATS_RTOL, atol=STATS_RTOL, err_msg=f"output, step {step}")
        np.testing.assert_allclose(ours.running_phi.numpy().reshape(-1), official.running_phi, rtol=STATS_RTOL,
                                   err_msg=f"running_phi after step {step}")
        assert int(ours.iters.item()) == official.iters
    assert ours.running_phi.shape == (1, C, 1, 1)


def test_the_first_official_update_replaces_the_initial_running_phi():
    """Why the comparison above can fail: a plain moving average (0.9 phi + 0.1 stat) keeps 90 % of the initial
    running_phi after one step; the official warm-up average keeps none of it, and nor does the project's."""
    ours, official, weight, bias = norm_pair(0)
    x = batch(0, scale=5.0).reshape(-1, C)
    official(x, weight, bias, 1e-5)
    stat = (x * x).mean(axis=0)
    np.testing.assert_allclose(official.running_phi, stat, rtol=1e-12)
    phi0 = ours.running_phi.numpy().reshape(-1).astype(np.float64)
    assert not np.allclose(ALPHA_FWD * phi0 + (1 - ALPHA_FWD) * stat, stat, rtol=SENSITIVITY * STATS_RTOL)
    ours(torch.from_numpy(x[None]).float())  # (1, N, C): one batch of the same rows
    np.testing.assert_allclose(ours.running_phi.numpy().reshape(-1), stat, rtol=STATS_RTOL)


def test_powernorm_statistic_is_the_official_one_over_the_real_tokens():
    """The documented difference: with padding the project's statistic is the official one computed on the real
    tokens alone; the official one (every position) is another number."""
    ours, official, weight, bias = norm_pair(0)
    _, everything, _, _ = norm_pair(0)
    x = batch(3)
    mask = (np.arange(6)[None, :] < np.array([6, 4, 2, 1])[:, None]).astype(np.int64)
    x[mask == 0] = 7.0  # padding far from the real values
    real = mask.astype(bool)
    got = ours(torch.from_numpy(x).float(), torch.from_numpy(mask)).detach().numpy()
    np.testing.assert_allclose(got[real], official(x[real], weight, bias, 1e-5), rtol=STATS_RTOL, atol=STATS_RTOL)
    np.testing.assert_allclose(ours.running_phi.numpy().reshape(-1), official.running_phi, rtol=STATS_RTOL)
    everything(x.reshape(-1, C), weight, bias, 1e-5)
    assert not np.allclose(everything.running_phi, official.running_phi, rtol=SENSITIVITY * STATS_RTOL)


def official_kd_loss(student: dict, teacher: dict, alpha=0.9, temperature=15.0, beta=1.0) -> float:
    """val_glue.TotalLossForKD with L_task = 0 (kd_loss has no labels), float64."""
    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    zs, zt = (np.asarray(o["logits"], np.float64) / temperature for o in (student, teacher))
    soft = float(-(np.exp(log_softmax(zt)) * log_softmax(zs)).sum(axis=-1).mean())
    layer = sum(mse(s, t) for s, t in zip(student["hidden_states"], teacher["hidden_states"], strict=True))
    attn = sum(mse(s, t) for s, t in zip(student["attentions"], teacher["attentions"], strict=True))
    return alpha * soft + beta * (layer + 100 * attn)


def mse(a, b) -> float:
    """nn.MSELoss(): the mean over every element."""
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())


@pytest.mark.parametrize("labels", [3, 1], ids=["classifier", "regression"])
def test_kd_loss_is_the_official_total_loss(labels):
    """Without padding (val_glue pads every text to 128 tokens and averages over all of them) kd_loss is
    TotalLossForKD less its task term; one logit (STS-B) makes the soft term 0 in both."""
    g = torch.Generator().manual_seed(labels)
    B, T = 3, 5

    def outputs():
        return {"hidden_states": [torch.randn(B, T, C, generator=g) for _ in range(L + 1)],
                "attentions": [torch.rand(B, H, T, T, generator=g) for _ in range(L)],
                "logits": 20 * torch.randn(B, labels, generator=g)}

    student, teacher = outputs(), outputs()
    loss, parts = kd_loss(student, teacher, torch.ones(B, T, dtype=torch.long))
    assert loss.item() == pytest.approx(official_kd_loss(student, teacher), rel=STATS_RTOL)
    if labels == 1:
        assert parts["soft_ce"] == 0.0
    else:  # every term is visible at this tolerance
        assert parts["soft_ce"] > SENSITIVITY * STATS_RTOL * loss.item()

"""UltraFastBERT against a second, independent transcription of the official code, written here in float64
NumPy from pbelcak/UltraFastBERT (training/cramming/architectures/fff.py and crammed_bert.py, the
benchmark_pytorch / benchmark_cuda FFF forms) and JonasGeiping/cramming (architectures/components.py,
attention.py, embeddings.py); the transcription shares no code with mabert_hw or its torch_ref (only the
arch config dict, crammed-bert-fff.yaml resolved, comes from tests/crammed_checkpoints.py):

- the FFF as the official module computes it: every node's logit by linear_in (with bias), decisions
  `logits > 0`, a 0/1 map of the visited nodes built level by level with the official "platform"
  arithmetic (node = (node - (2^d - 1)) * 2 + move + 2^(d+1) - 1), GELU (erf) of the logits times the
  map, linear_out (no bias) over the K trees' nodes flattened tree by tree;
- the crammed-bert(-fff) encoder: word + scale_factor * sinusoids, embedding LayerNorm, pre-LN layers
  (x + attn(norm1(x)), x + ffn(norm2(x))), the fused query_key_value viewed per head as (H, 3D), scores
  times the stored norm_factor plus (1 - m) * -10000, final_norm; state dicts keyed as the official
  ScriptableLMForPreTraining names them.

Also the FFF counting rules against the rows a real walk touches, and the parameter count of the
official state dict (163,671,025 for UltraFastBERT-1x11)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mabert_hw import crammed_checkpoint
from mabert_hw.backends import make_backend
from mabert_hw.backends.trace import Shaped
from mabert_hw.cost.counts import count_op, fff_walk_counts
from mabert_hw.cost.summary import profile_model
from mabert_hw.fff import walk_layout
from mabert_hw.model import forward
from tests.crammed_checkpoints import arch_config
from tests.tolerances import FFF_BRANCH_MARGIN, FFF_LAYER_VS_TORCH_ATOL, REFERENCE_VS_TORCH_ATOL

# The crammed encoder's FFF logits carry the float32 error of everything before them (a few 1e-6 in
# the project's float32 engines vs this float64 transcription): a visited logit this far from 0 takes
# the same branch in both, so the comparison tests the math and not a coin flip at a tie.
ENCODER_BRANCH_MARGIN = 1e-3
VISIBLE = 1e-3  # an output column above this shows a visited node (GELU of a logit of |z| > ~0.002)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(z: np.ndarray) -> np.ndarray:
    """torch.nn.GELU() (approximate='none'), what crammed's _get_nonlin_fn("GELU") builds."""
    return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))


def official_fff(x, w_in, b_in, w_out, depth, trees):
    """training/cramming/architectures/fff.py FFF.forward in float64: (M, C) -> (M, C_out), the 0/1
    map of visited nodes (M, K, N) and the smallest |logit| of a visited node (how far from a tie)."""
    x, w_in, b_in, w_out = (np.asarray(a, np.float64) for a in (x, w_in, b_in, w_out))
    M, N = x.shape[0], 2 ** (depth + 1) - 1
    logits = x @ w_in.T + b_in  # (M, K*N): every node of every tree
    decisions = (logits > 0).astype(np.int64).reshape(M, trees, N)
    current = np.zeros((M, trees), np.int64)
    visited = np.zeros((M, trees, N))
    np.put_along_axis(visited, current[..., None], 1.0, axis=2)
    for d in range(depth):
        platform, next_platform = 2 ** d - 1, 2 ** (d + 1) - 1
        moves = np.take_along_axis(decisions, current[..., None], axis=2)[..., 0]
        current = (current - platform) * 2 + moves + next_platform
        np.put_along_axis(visited, current[..., None], 1.0, axis=2)
    y = (gelu(logits) * visited.reshape(M, -1)) @ w_out.T  # (M, C_out)
    margin = np.abs(logits[visited.reshape(M, -1) > 0]).min() if M else np.inf
    return y, visited, margin


def benchmark_bmm_fff(x, w1s, w2s, depth):
    """benchmark_pytorch/fff/fff_bmm.py (one tree, no bias): w1s (N, C), w2s (N, C_out), a node goes
    right on `logit >= 0` (the training code: `> 0`)."""
    x, w1s, w2s = (np.asarray(a, np.float64) for a in (x, w1s, w2s))
    node = np.zeros(len(x), np.int64)
    y = np.zeros((len(x), w2s.shape[1]))
    for _ in range(depth + 1):
        logit = np.einsum("mc,mc->m", x, w1s[node])
        y += gelu(logit)[:, None] * w2s[node]
        node = node * 2 + (logit >= 0) + 1
    return y


def project_fffs(x, w_in, b_in, w_out, depth, trees) -> dict[str, np.ndarray]:
    """The project's FFF implementations on the same float32 values: both engines and both torch forms."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    from mabert_hw.torch_ref.fff import FFF

    args = [np.asarray(a, np.float32) for a in (x, w_in, b_in, w_out)]
    out = {name: make_backend(name).fff("ffn", *args, depth, trees) for name in ("reference", "fast")}
    module = FFF(w_in.shape[1], depth, trees, w_out.shape[0])
    with torch.no_grad():
        for param, value in zip((module.linear_in.weight, module.linear_in.bias, module.linear_out.weight), args[1:]):
            param.copy_(torch.from_numpy(value))
        out["torch"] = module(torch.from_numpy(args[0])).numpy()
        out["torch gather"] = module.forward_gather(torch.from_numpy(args[0])).numpy()
    return out


def random_fff(rng, C, C_out, depth, trees, tokens):
    """Weights drawn as fff.py initialises them, and tokens whose visited logits clear FFF_BRANCH_MARGIN."""
    width = trees * (2 ** (depth + 1) - 1)
    bound_in, bound_out = math.sqrt(1.0 / C), math.sqrt(1.0 / ((depth + 1) * trees))
    w_in = rng.uniform(-bound_in, bound_in, (width, C)).astype(np.float32)
    b_in = rng.uniform(-bound_in, bound_in, width).astype(np.float32)
    w_out = rng.uniform(-bound_out, bound_out, (C_out, width)).astype(np.float32)
    x = rng.normal(size=(8 * tokens, C)).astype(np.float32)
    keep = [official_fff(row[None], w_in, b_in, w_out, depth, trees)[2] > FFF_BRANCH_MARGIN for row in x]
    x = x[np.array(keep)][:tokens]
    assert len(x) == tokens
    return x, w_in, b_in, w_out


# 1. The hard-path FFF layer.

@pytest.mark.parametrize("C,C_out,depth,trees", [(16, 16, 0, 1), (16, 12, 3, 1), (24, 24, 5, 3), (8, 20, 7, 2)])
def test_every_fff_implementation_is_the_official_masked_forward(C, C_out, depth, trees):
    rng = np.random.default_rng(depth * 10 + trees)
    x, w_in, b_in, w_out = random_fff(rng, C, C_out, depth, trees, tokens=24)
    want, visited, _ = official_fff(x, w_in, b_in, w_out, depth, trees)
    assert (visited.sum(axis=2) == depth + 1).all()  # d + 1 of the N nodes, in each of the K trees
    for name, got in project_fffs(x, w_in, b_in, w_out, depth, trees).items():
        diff = np.abs(got - want).max()
        assert diff <= FFF_LAYER_VS_TORCH_ATOL, f"{name}: maxdiff {diff:.3g}"


def test_gelu_is_the_erf_form_not_the_tanh_one():
    """Depth 0 is one neuron: y = GELU(x . w + b) * w_out. The tanh approximation is up to 4.7e-4 off
    (at z = -2.7), more than twenty times the tolerance; the fast engine's float32 erf fit is within ~5e-7."""
    z = np.linspace(-4.0, 4.0, 81)
    x = np.stack([z, np.ones_like(z)], axis=1)  # logit = z * 1 + 1 * 0, bias 0
    w_in, b_in, w_out = np.array([[1.0, 0.0]]), np.zeros(1), np.ones((1, 1))
    want = official_fff(x, w_in, b_in, w_out, 0, 1)[0][:, 0]
    tanh_gelu = 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    assert np.abs(tanh_gelu - want).max() > 20 * FFF_LAYER_VS_TORCH_ATOL
    for name, got in project_fffs(x, w_in, b_in, w_out, 0, 1).items():
        diff = np.abs(got[:, 0] - want).max()
        assert diff <= FFF_LAYER_VS_TORCH_ATOL, f"{name}: maxdiff {diff:.3g}"


def test_a_logit_of_exactly_zero_goes_left_as_in_the_training_code():
    """fff.py decides `logits > 0`: a zero logit goes to 2n + 1. (The benchmark's fff_bmm.py uses `>= 0`
    and goes right: the published weights were trained, and are served, by fff.py.) Zero rows with zero
    bias make the logit exactly 0 in any summation order: tree 0's root, tree 1's two level-1 nodes.
    With linear_out the identity each output column shows its node's GELU(logit): 0 at the ties, and
    (logits scaled to |z| < ~3, where float32 GELU has not underflowed) clearly nonzero elsewhere."""
    rng = np.random.default_rng(6)
    depth, trees, C = 2, 2, 6
    N = 2 ** (depth + 1) - 1
    w_in = rng.normal(size=(trees * N, C)) / math.sqrt(C)
    b_in = rng.normal(size=trees * N) / 4
    ties = [0, N + 1, N + 2]
    w_in[ties], b_in[ties] = 0.0, 0.0
    x = rng.normal(size=(10, C))
    w_out = np.eye(trees * N)
    want, visited, _ = official_fff(x, w_in, b_in, w_out, depth, trees)
    shown = visited.reshape(10, -1) > 0
    shown[:, ties] = False
    assert (np.abs(want[shown]) > 10 * VISIBLE).all() and not want[~shown].any()
    assert visited[:, 0, 1].all() and not visited[:, 0, 2].any()  # tree 0: root tie -> node 1
    level_1 = visited[:, 1, 1:3].argmax(axis=1) + 1  # tree 1's level-1 node (a tie), per token
    assert (visited[np.arange(10), 1, 2 * level_1 + 1] == 1).all()  # -> its left child
    right = benchmark_bmm_fff(x, w_in[:N], w_out.T[:N], depth)  # tree 0 alone, zero bias at the root
    assert (right[:, 2] != 0).all() and (right[:, 1] == 0).all()  # `>= 0` goes right instead
    for name, got in project_fffs(x, w_in, b_in, w_out, depth, trees).items():
        assert np.array_equal(np.abs(got) > VISIBLE, shown), f"{name} visits other nodes than fff.py at a zero logit"
        assert np.abs(got - want).max() <= FFF_LAYER_VS_TORCH_ATOL, name


def test_k_parallel_trees_are_consecutive_node_blocks_whose_outputs_add():
    """fff.py views the (M, K*N) logits as (M, K, N) and applies one linear_out to the flattened map:
    tree k owns rows k*N .. k*N + N - 1 of linear_in and those columns of linear_out, and the layer is
    the sum of the K single trees. The walk layout puts tree k's node n at [k, n]."""
    rng = np.random.default_rng(5)
    C, depth, trees = 12, 4, 3
    N = 2 ** (depth + 1) - 1
    x, w_in, b_in, w_out = random_fff(rng, C, C, depth, trees, tokens=16)
    blocks = [slice(k * N, (k + 1) * N) for k in range(trees)]
    want = sum(official_fff(x, w_in[b], b_in[b], w_out[:, b], depth, 1)[0] for b in blocks)
    for name, got in project_fffs(x, w_in, b_in, w_out, depth, trees).items():
        assert np.abs(got - want).max() <= FFF_LAYER_VS_TORCH_ATOL, name
    layout = walk_layout(w_in, b_in, w_out, depth, trees)
    for k, b in enumerate(blocks):
        assert np.array_equal(layout.rows_in[k], w_in[b]) and np.array_equal(layout.bias[k], b_in[b])
        assert np.array_equal(layout.rows_out[k], w_out[:, b].T)


def test_the_benchmark_layout_is_linear_out_transposed():
    """benchmark_pytorch fff_bmm.py (and the CUDA kernel) keep the output weights node-major, w2s (N, C_out):
    with zero biases and no ties it is the training module with w1s = linear_in.weight, w2s =
    linear_out.weight.T, and so the project's FFF."""
    rng = np.random.default_rng(9)
    C, C_out, depth = 16, 10, 5
    x, w_in, _, w_out = random_fff(rng, C, C_out, depth, 1, tokens=20)
    b_in = np.zeros(w_in.shape[0], np.float32)
    margin = official_fff(x, w_in, b_in, w_out, depth, 1)[2]
    assert margin > FFF_BRANCH_MARGIN  # tokens were drawn for the biased layer; this seed clears without
    want = benchmark_bmm_fff(x, w_in, w_out.T, depth)
    assert np.abs(official_fff(x, w_in, b_in, w_out, depth, 1)[0] - want).max() < 1e-12
    got = make_backend("reference").fff("ffn", x, w_in, b_in, w_out, depth, 1)
    assert np.abs(got - want).max() <= FFF_LAYER_VS_TORCH_ATOL


# 2. The crammed-bert-fff encoder.

def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def official_sinusoids(positions: int, width: int) -> np.ndarray:
    """cramming embeddings.py SinusoidalPositional.pe, in float32 as the torch code computes it."""
    position = np.arange(positions, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, width, 2).astype(np.float32) * np.float32(-math.log(10000.0) / width))
    pe = np.zeros((positions, width), np.float32)
    pe[:, 0::2], pe[:, 1::2] = np.sin(position * div_term), np.cos(position * div_term)
    return pe


def official_state(arch: dict, vocab: int, rng) -> dict[str, np.ndarray]:
    """ScriptableLMForPreTraining.state_dict() keys and shapes for a crammed-bert-fff arch, random values
    (norm gains around 1; norm_factor is the buffer torch.tensor(D).rsqrt(); decoder tied to the words)."""
    C, K, depth = arch["hidden_size"], arch["intermed_size"], arch["intermed_depth"]
    width = K * (2 ** (depth + 1) - 1)
    D = C // arch["attention"]["num_attention_heads"]
    e = "encoder.embedding."

    def draw(*shape, around=0.0):
        return (around + rng.normal(0.0, 0.3, shape)).astype(np.float32)

    state = {e + "word_embedding.weight": draw(vocab, C)}
    if arch["embedding"]["pos_embedding"] == "scaled-sinusoidal":
        state[e + "pos_embedding.scale_factor"] = rng.uniform(0.5, 2.0, (1,)).astype(np.float32)
    state[e + "norm.weight"], state[e + "norm.bias"] = draw(C, around=1.0), draw(C)
    for layer in range(arch["num_transformer_layers"]):
        p = f"encoder.layers.{layer}."
        for norm in ("norm1", "norm2"):
            state[f"{p}{norm}.weight"], state[f"{p}{norm}.bias"] = draw(C, around=1.0), draw(C)
        state[p + "attn.self_attention.query_key_value.weight"] = draw(3 * C, C)
        if arch["attention"]["qkv_bias"]:
            state[p + "attn.self_attention.query_key_value.bias"] = draw(3 * C)
        state[p + "attn.self_attention.norm_factor"] = np.array(1.0 / math.sqrt(D), np.float32)
        state[p + "attn.dense.weight"] = draw(C, C)
        if arch["use_bias"]:
            state[p + "attn.dense.bias"] = draw(C)
        state[p + "ffn.linear_in.weight"], state[p + "ffn.linear_in.bias"] = draw(width, C), draw(width)
        state[p + "ffn.linear_out.weight"] = draw(C, width)
    state["encoder.final_norm.weight"], state["encoder.final_norm.bias"] = draw(C, around=1.0), draw(C)
    state["decoder.weight"] = state[e + "word_embedding.weight"]
    return state


def official_encoder(arch: dict, state: dict, input_ids: np.ndarray, attention_mask: np.ndarray):
    """ScriptableLM.forward (float64, batch-first): L + 1 hidden states as mabert_hw reports them (the
    embeddings, each layer's residual stream, the last through final_norm) and the FFFs' smallest
    visited |logit|."""
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    C, H, eps = arch["hidden_size"], arch["attention"]["num_attention_heads"], arch["norm_eps"]
    D, (B, T) = C // H, input_ids.shape
    e = "encoder.embedding."
    x = s[e + "word_embedding.weight"][input_ids]
    kind = arch["embedding"]["pos_embedding"]
    pe = official_sinusoids(arch["embedding"]["max_seq_length"], C)[:T].astype(np.float64)
    x = x + (s[e + "pos_embedding.scale_factor"] * pe if kind == "scaled-sinusoidal" else pe)
    x = layer_norm(x, s[e + "norm.weight"], s[e + "norm.bias"], eps)
    mask_bias = (1.0 - attention_mask[:, None, None, :]) * -10000.0  # get_extended_attention_mask
    hidden, margin = [x], np.inf
    for layer in range(arch["num_transformer_layers"]):
        p = f"encoder.layers.{layer}."
        a = p + "attn.self_attention."
        h = layer_norm(x, s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        mixed = h @ s[a + "query_key_value.weight"].T + s.get(a + "query_key_value.bias", 0.0)
        mixed = mixed.reshape(B, T, H, 3 * D)  # SeqFirstSelfAttention: per head [q | k | v]
        q, k, v = mixed[..., :D], mixed[..., D:2 * D], mixed[..., 2 * D:]
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) * s[a + "norm_factor"] + mask_bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, C)
        x = x + context @ s[p + "attn.dense.weight"].T + s.get(p + "attn.dense.bias", 0.0)
        h = layer_norm(x, s[p + "norm2.weight"], s[p + "norm2.bias"], eps).reshape(B * T, C)
        y, _, layer_margin = official_fff(h, s[p + "ffn.linear_in.weight"], s[p + "ffn.linear_in.bias"],
                                          s[p + "ffn.linear_out.weight"], arch["intermed_depth"],
                                          arch["intermed_size"])
        x = x + y.reshape(B, T, C)
        hidden.append(x)
        margin = min(margin, layer_margin)
    hidden[-1] = layer_norm(x, s["encoder.final_norm.weight"], s["encoder.final_norm.bias"], eps)
    return hidden, margin


ENCODER_CASES = {
    "1x3 scaled sinusoids, no biases": {},  # crammed-bert-fff.yaml's own settings, at tiny sizes
    "2x2 plain sinusoids, every bias": {"intermed_size": 2, "intermed_depth": 2, "use_bias": True,
                                        "attention.qkv_bias": True, "embedding.pos_embedding": "sinusoidal"},
}


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_crammed_fff_encoder_is_the_official_forward(case):
    pytest.importorskip("numba")
    arch = arch_config(**{"intermed_size": 1, **ENCODER_CASES[case]})
    vocab = arch["embedding"]["vocab_size"]
    rng = np.random.default_rng(17)
    state = official_state(arch, vocab, rng)
    B, T = 3, 13
    ids = rng.integers(1, vocab, size=(B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 9:], mask[2, 4:] = 0, 0
    ids[mask == 0] = 0  # [PAD] is id 0 (embedding.pad_token_id)
    want, margin = official_encoder(arch, state, ids, mask)
    assert margin > ENCODER_BRANCH_MARGIN, f"seed gives a visited FFF logit {margin:.2g} from a tie"
    spec, weights, _ = crammed_checkpoint.load({"model_type": "crammedBERT", "arch": arch}, state, "tiny")
    assert spec.variant.norm_position == "pre" and spec.variant.ffn == "fff"
    for engine in ("reference", "fast"):
        got = forward(spec, weights, ids, make_backend(engine), mask).hidden_states
        assert len(got) == len(want) == arch["num_transformer_layers"] + 1
        for layer, (g, w) in enumerate(zip(got, want)):
            diff = np.abs(g - w).max()
            assert diff <= REFERENCE_VS_TORCH_ATOL, f"{engine}, hidden state {layer}: maxdiff {diff:.3g}"


# 3. The walk's counts.

@pytest.mark.parametrize("tokens", [5, 16, 40])
def test_walk_counts_are_the_rows_a_real_walk_touches(tokens):
    """Level l of a tree has 2^l nodes, so M tokens visit at most min(2^l, M) there. Routing token t by its
    bits (the node at level l tests bit l: w_in row = +-e_l, bias 0, x[t, l] = +-1) reaches that bound at
    every level, so the distinct rows the walk reads are exactly K * sum_l min(2^l, M). Per token and tree
    the walk does d + 1 dots of C and axpys of C_out and d comparisons; each distinct node costs its w_in
    row, its bias and its w_out column once: (C + 1 + C_out) elements."""
    depth, trees, C = 4, 2, 8
    N = 2 ** (depth + 1) - 1
    level = np.floor(np.log2(np.arange(N) + 1)).astype(int)  # level of node n
    w_in = np.zeros((trees * N, C), np.float32)
    for k in range(trees):
        w_in[k * N + np.arange(N), level] = 1.0 if k == 0 else -1.0  # tree 1 routes mirrored
    b_in = np.zeros(trees * N, np.float32)
    w_out = np.eye(trees * N, dtype=np.float32)  # C_out = K*N: output column j is node j's activation
    C_out = w_out.shape[0]
    bits = (np.arange(tokens)[:, None] >> np.arange(C)[None, :]) & 1
    x = np.where(bits == 1, 1.0, -1.0).astype(np.float32)
    _, visited, _ = official_fff(x, w_in, b_in, w_out, depth, trees)
    distinct = int(visited.any(axis=0).sum())
    assert distinct == trees * sum(min(2 ** l, tokens) for l in range(depth + 1))
    for name, got in project_fffs(x, w_in, b_in, w_out, depth, trees).items():
        assert np.array_equal(got != 0, visited.reshape(tokens, -1) > 0), f"{name} visits other nodes"

    trace = make_backend("trace", record=True)
    trace.fff("ffn", Shaped(x.shape), Shaped(w_in.shape), Shaped(b_in.shape), Shaped(w_out.shape), depth, trees)
    (op,) = trace.ops
    visits = tokens * trees * (depth + 1)
    assert fff_walk_counts(op) == {
        "node_dots": visits, "dot_macs": visits * C, "axpy_macs": visits * C_out,
        "comparisons": tokens * trees * depth, "gathered_rows": visits,
        "gathered_elements": visits * (C + 1 + C_out), "distinct_rows": distinct,
        "distinct_elements": distinct * (C + 1 + C_out)}
    counted = count_op(op, bytes_per_element=4)
    assert counted.macs == visits * (C + C_out)
    assert counted.params == trees * N * (C + 1 + C_out)
    assert counted.weight_bytes == 4 * distinct * (C + 1 + C_out)
    assert counted.activation_bytes == 4 * tokens * (C + C_out)  # x read, y written


# 4. Parameters.

def official_param_count(arch: dict, vocab: int) -> int:
    """Learned parameters of ScriptableLMForPreTraining for a crammed-bert-fff arch, module by module:
    word embedding, ScaledSinosoidal's scale_factor (the sinusoid table is a buffer), embedding norm; per
    layer norm1, norm2, query_key_value (bias with qkv_bias), attn.dense (bias with use_bias), FFF
    linear_in (always with bias) and linear_out (never); final_norm. The decoder is the word embedding
    (tied, decoder_bias False); norm_factor is a buffer."""
    C, K, depth = arch["hidden_size"], arch["intermed_size"], arch["intermed_depth"]
    width = K * (2 ** (depth + 1) - 1)
    positions = {"scaled-sinusoidal": 1, "sinusoidal": 0}[arch["embedding"]["pos_embedding"]]
    layer = (4 * C + 3 * C * C + 3 * C * arch["attention"]["qkv_bias"] + C * C + C * arch["use_bias"]
             + width * C + width + C * width)
    return vocab * C + positions + 2 * C + arch["num_transformer_layers"] * layer + 2 * C


def test_params_are_the_official_state_dicts():
    for changes in ENCODER_CASES.values():
        arch = arch_config(**{"intermed_size": 1, **changes})
        vocab = arch["embedding"]["vocab_size"]
        state = official_state(arch, vocab, np.random.default_rng(0))
        learned = sum(v.size for k, v in state.items() if not k.endswith("norm_factor") and k != "decoder.weight")
        assert learned == official_param_count(arch, vocab)
        spec, _, _ = crammed_checkpoint.load({"model_type": "crammedBERT", "arch": arch}, None, "tiny")
        assert profile_model(spec, 1, 16).total("params") == learned
    # UltraFastBERT-1x11: crammed-bert-fff.yaml with intermed_size 1, intermed_depth 11 (4095 nodes, 12
    # visited), 16 layers of C = 768, 12 heads, vocab 32768 (config/data/pile-readymade.yaml)
    arch = arch_config(**{"num_transformer_layers": 16, "hidden_size": 768, "intermed_size": 1, "intermed_depth": 11,
                          "embedding.vocab_size": 32768, "embedding.max_seq_length": 128,
                          "embedding.embedding_dim": 768, "attention.num_attention_heads": 12})
    assert official_param_count(arch, 32768) == 163_671_025
    spec, _, _ = crammed_checkpoint.load({"model_type": "crammedBERT", "arch": arch}, None, "ultrafastbert-1x11")
    assert profile_model(spec, 1, 128).total("params") == 163_671_025

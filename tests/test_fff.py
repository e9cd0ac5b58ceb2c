"""FFF (UltraFastBERT) layer: the NumPy walk, the trace and the Numba kernel against the torch
hard-path module; the visited set against a float64 walk; the whole model against HF + torch FFF."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mabert_hw.backends import make_backend
from mabert_hw.backends.trace import Shaped
from mabert_hw.fff import (
    FFF_PARAMS,
    aligned_empty,
    FFF_PREFIX,
    crammed_fff_key,
    fff_reference,
    fff_shapes,
    n_nodes,
    walk_layout,
)
from mabert_hw.inputs import random_batch
from mabert_hw.kernels.fff import (
    L2_BYTES,
    SUBTREE_BYTES,
    TASK_TOKENS,
    fff_apply,
    fff_forward,
    group_tasks,
    subtree_levels,
)
from mabert_hw.model import forward
from mabert_hw.torch_ref.fff import FFF, hf_fff_model
from mabert_hw.torch_ref.hf import hf_forward
from mabert_hw.weights import expected_shapes, random_weights
from tests.conftest import TINY_SPECS
from tests.tolerances import (
    FAST_VS_REFERENCE_ATOL,
    FAST_VS_REFERENCE_RTOL,
    FFF_BRANCH_MARGIN,
    FFF_LAYER_VS_TORCH_ATOL,
    REFERENCE_VS_TORCH_ATOL,
)

HIDDEN, OUT, TOKENS = 16, 12, 20


def _layer(depth: int, trees: int, seed: int):
    """A torch FFF with the official initialisation, its weights as NumPy, and inputs whose visited
    logits (float64) all clear FFF_BRANCH_MARGIN."""
    torch.manual_seed(seed)
    module = FFF(HIDDEN, depth, trees, OUT).eval()
    w_in, b_in, w_out = (p.detach().numpy() for p in (module.linear_in.weight, module.linear_in.bias,
                                                     module.linear_out.weight))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4 * TOKENS, HIDDEN)).astype(np.float32)
    logits = torch.from_numpy(x.astype(np.float64) @ w_in.T.astype(np.float64) + b_in).view(-1, trees, module.nodes)
    on_path = torch.gather(logits, 2, module.visited(logits)).abs().flatten(1).min(dim=1).values
    x = x[(on_path > FFF_BRANCH_MARGIN).numpy()][:TOKENS]
    assert len(x) == TOKENS
    return module, (w_in, b_in, w_out), x


def _report(got, want, atol, rtol=0.0):
    diff = np.abs(got - want)
    bad = np.argwhere(diff > atol + rtol * np.abs(want))
    first = tuple(bad[0]) if len(bad) else None
    shown = f"got {got[first]} want {want[first]}" if first else ""
    return f"maxdiff {diff.max():.3g}; first mismatch {first}: {shown}"


@pytest.mark.parametrize("trees", [1, 2, 3, 4])
def test_backends_match_torch_hard_path(trees):
    for depth in range(12):
        module, (w_in, b_in, w_out), x = _layer(depth, trees, seed=100 * trees + depth)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()  # (M, OUT)
            gathered = module.forward_gather(torch.from_numpy(x)).numpy()
        ref = make_backend("reference").fff("fff", x, w_in, b_in, w_out, depth, trees)
        fast = fff_forward(x, w_in, b_in, w_out, depth, trees)
        for label, got in (("reference", ref), ("numba", fast), ("torch gather", gathered)):
            assert np.allclose(got, want, rtol=0, atol=FFF_LAYER_VS_TORCH_ATOL), \
                f"{label} depth {depth} K {trees}: {_report(got, want, FFF_LAYER_VS_TORCH_ATOL)}"
        assert np.allclose(fast, ref, rtol=FAST_VS_REFERENCE_RTOL, atol=FAST_VS_REFERENCE_ATOL), \
            _report(fast, ref, FAST_VS_REFERENCE_ATOL, FAST_VS_REFERENCE_RTOL)
        shaped = make_backend("trace").fff("fff", Shaped(x.shape), Shaped(w_in.shape), Shaped(b_in.shape),
                                           Shaped(w_out.shape), depth, trees)
        assert shaped.shape == want.shape


@pytest.mark.parametrize("depth,trees", [(0, 1), (3, 2), (6, 3)])
def test_walk_visits_one_root_to_leaf_path_per_tree(depth, trees):
    """With linear_out = identity each output shows which nodes a token visited; the set must be
    the float64 walk: d + 1 nodes per tree, node i+1 the child of node i chosen by the logit sign."""
    _, (w_in, b_in, _), x = _layer(depth, trees, seed=7)
    width = trees * n_nodes(depth)
    y = fff_forward(x, w_in, b_in, np.eye(width, dtype=np.float32), depth, trees)  # (M, K*N)
    logits = x.astype(np.float64) @ w_in.T.astype(np.float64) + b_in  # (M, K*N)
    for t in range(len(x)):
        expected = []
        for k in range(trees):
            node = 0
            for _ in range(depth + 1):
                expected.append(k * n_nodes(depth) + node)
                node = 2 * node + (2 if logits[t, k * n_nodes(depth) + node] > 0 else 1)
        assert sorted(np.flatnonzero(y[t])) == sorted(expected)


@pytest.mark.parametrize("out_width", [OUT, HIDDEN, HIDDEN + 4])
def test_walk_gives_the_same_bits_at_every_split_level(out_width):
    """The two-pass kernel (top levels for all tokens, then the tokens grouped by subtree) keeps every
    output's FMAs and their order, so moving the split changes no bit; levels = depth + 1 is one
    pass, the plain token-major walk. Every split also matches the NumPy reference."""
    rng = np.random.default_rng(11)
    for depth, trees in [(0, 1), (3, 2), (6, 1), (9, 3)]:
        width = trees * n_nodes(depth)
        w_in = rng.normal(size=(width, HIDDEN)).astype(np.float32)
        b_in = rng.normal(size=width).astype(np.float32)
        w_out = rng.normal(size=(out_width, width)).astype(np.float32)
        x = rng.normal(size=(3 * TASK_TOKENS + 5, HIDDEN)).astype(np.float32)  # several tasks per group
        layout = walk_layout(w_in, b_in, w_out, depth, trees)
        one_pass = fff_apply(x, layout, levels=depth + 1)
        ref = fff_reference(x, w_in, b_in, w_out, depth, trees)
        assert np.allclose(one_pass, ref, rtol=FAST_VS_REFERENCE_RTOL, atol=FAST_VS_REFERENCE_ATOL), \
            _report(one_pass, ref, FAST_VS_REFERENCE_ATOL, FAST_VS_REFERENCE_RTOL)
        for levels in range(1, depth + 1):
            split = fff_apply(x, layout, levels=levels)
            assert np.array_equal(split, one_pass), f"depth {depth} levels {levels}: {_report(split, one_pass, 0)}"


def test_subtree_levels_fit_the_cache():
    assert 0 < SUBTREE_BYTES < L2_BYTES
    for row_bytes in (4 * (768 + 768), 4 * (384 + 384), 4 * (16 + 12)):
        levels = subtree_levels(row_bytes)
        assert (2 ** levels - 1) * row_bytes <= SUBTREE_BYTES < (2 ** (levels + 1) - 1) * row_bytes
    assert subtree_levels(SUBTREE_BYTES + 1) == 1  # a row larger than the budget still walks


def test_group_tasks_sort_tokens_by_node_into_bounded_tasks():
    rng = np.random.default_rng(0)
    first, width = 7, 8  # the nodes of level 3
    nodes = rng.integers(first, first + width, size=5 * TASK_TOKENS)
    nodes[nodes == first + 2] = first + 3  # one empty node
    order, starts, ends, roots = group_tasks(nodes, first, width, TASK_TOKENS)
    assert np.array_equal(order, np.argsort(nodes, kind="stable"))
    assert starts[0] == 0 and ends[-1] == len(nodes) and np.array_equal(starts[1:], ends[:-1])
    assert np.all(ends - starts <= TASK_TOKENS) and np.all(ends > starts)
    for start, end, root in zip(starts, ends, roots):
        assert np.all(nodes[order[start:end]] == root)


def test_walk_rows_are_cache_line_aligned():
    layout = walk_layout(np.ones((7, 16), np.float32), np.ones(7, np.float32), np.ones((16, 7), np.float32), 2, 1)
    y = fff_apply(np.ones((5, 16), np.float32), layout)
    assert layout.rows_in.ctypes.data % 64 == 0 and layout.rows_out.ctypes.data % 64 == 0
    assert y.ctypes.data % 64 == 0


def test_walk_writes_the_same_bits_streamed_or_not():
    """An aligned output takes non-temporal stores from a scratch row; a misaligned one (here 4 bytes
    off the line grid) the plain stores: the same sums either way. A wrong output is refused."""
    rng = np.random.default_rng(5)
    depth, trees, width = 4, 2, 2 * n_nodes(4)
    w_in = rng.normal(size=(width, HIDDEN)).astype(np.float32)
    b_in = rng.normal(size=width).astype(np.float32)
    w_out = rng.normal(size=(HIDDEN, width)).astype(np.float32)
    layout = walk_layout(w_in, b_in, w_out, depth, trees)
    x = rng.normal(size=(2 * TASK_TOKENS + 3, HIDDEN)).astype(np.float32)
    streamed = fff_apply(x, layout)
    plain = aligned_empty((x.size + 1,))[1:].reshape(x.shape)
    assert fff_apply(x, layout, out=plain) is not None and plain.ctypes.data % 64 != 0
    assert np.array_equal(plain, streamed)
    with pytest.raises(ValueError, match="out must be"):
        fff_apply(x, layout, out=np.empty((len(x), HIDDEN + 1), np.float32))


def test_walk_refuses_inputs_it_would_read_out_of_bounds_or_overwrite():
    """x wider than the trees' rows would make the dot run past w_in's rows; an out that is x itself
    would feed tree 0's output to tree 1's dots."""
    _, (w_in, b_in, w_out), x = _layer(3, 2, seed=8)
    layout = walk_layout(w_in, b_in, w_out, 3, 2)
    with pytest.raises(ValueError, match="features"):
        fff_apply(np.ones((4, HIDDEN + 16), np.float32), layout)
    w_square = np.random.default_rng(8).normal(size=(HIDDEN, w_in.shape[0])).astype(np.float32)  # C_out = C
    with pytest.raises(ValueError, match="overlap"):
        fff_apply(x, walk_layout(w_in, b_in, w_square, 3, 2), out=x)


def test_torch_fff_takes_zero_tokens():
    module = FFF(HIDDEN, 2, 2, OUT)
    empty = torch.zeros(0, HIDDEN)
    assert module(empty).shape == (0, OUT) and module.forward_gather(empty).shape == (0, OUT)


@pytest.mark.parametrize("spec", TINY_SPECS[:2], ids=lambda s: s.name)
def test_fff_model_matches_hf_with_torch_fff(spec):
    spec = spec.with_variant(ffn="fff", fff_depth=3, fff_trees=2)
    weights = random_weights(spec, seed=3, std=0.2)
    batch = random_batch(spec, batch=2, seq_len=9, seed=5)
    backend = make_backend("reference", record=True)
    ours = forward(spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
    theirs = hf_forward(hf_fff_model(spec, weights), batch)
    for layer, (got, want) in enumerate(zip(ours.hidden_states, theirs["hidden_states"])):
        assert np.allclose(got, want, atol=REFERENCE_VS_TORCH_ATOL), \
            f"layer {layer}: {_report(got, want, REFERENCE_VS_TORCH_ATOL)}"
    trace = make_backend("trace")
    forward(spec, {k: Shaped(s) for k, s in expected_shapes(spec).items()}, batch.input_ids, trace)
    assert backend.ops == trace.ops
    assert sum(op.kind == "fff" for op in trace.ops) == spec.layers


def test_crammed_bert_fff_key_set_maps_onto_expected_shapes():
    """The official FFF module's state-dict keys under crammed-bert-fff's `encoder.layers.{l}.ffn.`."""
    spec = TINY_SPECS[0].with_variant(ffn="fff", fff_depth=4, fff_trees=3)
    official = {}
    for layer in range(spec.layers):
        module = FFF(spec.hidden, 4, 3)
        official.update({f"encoder.layers.{layer}.ffn.{k}": v.numpy() for k, v in module.state_dict().items()})
    ours = {crammed_fff_key(k): v for k, v in official.items()}
    fff_keys = {k: s for k, s in expected_shapes(spec).items() if f".{FFF_PREFIX}" in k}
    assert {k: v.shape for k, v in ours.items()} == fff_keys
    assert set(FFF_PARAMS) == set(fff_shapes(spec.hidden, 4, 3))
    assert crammed_fff_key("encoder.layers.0.attn.dense.weight") is None

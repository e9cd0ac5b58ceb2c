"""Op -> cost counts. The conventions, stated once:

- A GEMM of (M, K) x (K, N) is M*N*K MACs = 2*M*N*K GEMM FLOPs. Kind `linear` is activation x
  weight (bias add counted apart as elementwise `add`); kind `matmul` is activation x activation
  (QK^T and PV), batched over every leading axis.
- Elementwise primitives are counted by name (add, mul, div, exp, sqrt, rsqrt, erf, tanh, max, cmp)
  so a hardware model can price exp differently from add. A subtraction counts as `add`. A row
  reduction over n values is n - 1 primitives (`max` for the softmax maximum, `add` for sums).
- `flops` = 2 * MACs + the number of elementwise primitives (every primitive counts as one FLOP);
  `gemm_flops` = 2 * MACs of the matrix products (kinds linear and matmul) alone, the figure torch's
  FlopCounterMode reports; an FFF walk's MACs are dots and axpys of gathered rows, not a GEMM.
- Params: elements of the parameter operands; an embedding table counts whole, unless the op says
  fewer of them are learned (attr `learned_params`: a fixed sinusoid position table holds 0, or 1
  when one learned scalar scales it; see built_ops). An MA softmax approximator at T < n tokens
  uses, and reads the weight bytes of, only the first T of its n inputs and outputs, but counts all
  of its params: the params total is the checkpoint's at any T and retention schedule. A
  shared approximator (one for all layers) counts once, at layer 0's ops, which read the most of it
  (later layers see T_l <= T tokens); the other layers' reads keep their weight bytes, at 0 params
  (cost.summary.profile_model).
- Bytes at `bytes_per_element`: activation bytes = inputs read + output written; weight bytes =
  parameter elements read, each once per op (a memory that keeps what it has fetched). So an
  embedding of n ids into a (V, C) table reads at most min(n, V) distinct rows, min(n, V) * C
  elements; the position table's ids are 0..T-1 in every sequence, so it reads min(T, P) rows;
  an FFF reads only the visited nodes' rows (fff_walk_counts). A gather (PoWER-BERT's token
  selection) reads only the rows it keeps and its index, one element per kept row, and writes the
  kept rows; a slice (the pooler's CLS row) reads the rows it keeps and writes them.
- An op kind without a rule is returned in `unknown`, never counted as zero.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from math import ceil, log2, prod

from ..backends.base import Op
from ..backends.trace import Shaped, TraceBackend
from ..model import shaped_forward
from ..spec import ModelSpec
from ..weights import expected_shapes

GEMM_KINDS = ("linear", "matmul")
APPROXIMATOR_MARK = "softmax.linear_relu_stack"  # in the op names of MA-BERT's softmax approximator
# model.embeddings' op names
POSITION_EMBEDDING = "embeddings.position_embeddings"
TOKEN_TYPE_OPS = ("embeddings.token_type_embeddings", "embeddings.add_token_type")
# encoder linears by the ModelSpec flag that says whether they add a bias (op name suffixes)
QKV_PROJECTIONS = ("attention.self.query", "attention.self.key", "attention.self.value")
DENSE_PROJECTIONS = ("attention.output.dense", "intermediate.dense", "output.dense")
# learned parameters behind a fixed sinusoid position table: none, or ScaledSinosoidal's scalar
SINUSOID_LEARNED_PARAMS = {"sinusoidal": 0, "scaled-sinusoidal": 1}


@dataclass
class OpCount:
    op: Op
    macs: int = 0
    elementwise: Counter = field(default_factory=Counter)
    params: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0

    @property
    def gemm_flops(self) -> int:
        return 2 * self.macs if self.op.kind in GEMM_KINDS else 0

    @property
    def flops(self) -> int:
        return 2 * self.macs + sum(self.elementwise.values())


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of rows, row length) when reducing over the last axis."""
    return prod(shape[:-1]), shape[-1]


def _linear(op: Op) -> tuple[int, Counter]:
    (x,), (w, *bias) = op.inputs, op.weights
    rows, k = _rows(x)
    n = w[0]
    return rows * n * k, Counter(add=rows * n if bias else 0)


def _matmul(op: Op) -> tuple[int, Counter]:
    a, _ = op.inputs
    k = a[-1]
    return prod(op.output) * k, Counter()


def _softmax(op: Op) -> tuple[int, Counter]:
    # y = exp(x - max) / sum(exp(x - max)), per row of n.
    rows, n = _rows(op.output)
    return 0, Counter(max=rows * (n - 1), add=rows * (n + n - 1), exp=rows * n, div=rows * n)


def _layernorm(op: Op) -> tuple[int, Counter]:
    # mean = sum(x) / n; var = sum((x - mean)^2) / n; y = (x - mean) * rsqrt(var + eps) * g + b
    rows, n = _rows(op.output)
    adds = (n - 1) + n + (n - 1) + 1 + n  # sum x, x - mean, sum sq, + eps, + b
    muls = 1 + n + 1 + n + n  # * 1/n, square, * 1/n, * rsqrt, * g
    return 0, Counter(add=rows * adds, mul=rows * muls, rsqrt=rows)


def _gelu(op: Op) -> tuple[int, Counter]:
    # 0.5 * x * (1 + erf(x * 1/sqrt(2)))
    n = prod(op.output)
    return 0, Counter(mul=3 * n, add=n, erf=n)


def fff_walk_counts(op: Op) -> dict[str, int]:
    """What the FFF hard-path walk does (mabert_hw/fff.py), for M tokens, K trees, depth d:
    M*K*(d+1) visited nodes, each one dot product of C (x . w_in[n]) and one axpy of C_out
    (y += a * w_out[:, n]: the output accumulation is counted, not dropped); M*K*d comparisons
    (the last level's logit chooses nothing); each visit gathers one w_in row, one bias and one
    w_out column, C + 1 + C_out elements (gathered_elements: no reuse between visits). Level l has
    2^l nodes per tree, so at most min(2^l, M) distinct ones are visited there (distinct_rows): the
    rows a memory that keeps what it has fetched reads once, never more than the tree."""
    (x,) = op.inputs
    rows, C = _rows(x)
    C_out = op.output[-1]
    depth, trees = op.attr("depth"), op.attr("trees")
    visits = rows * trees * (depth + 1)
    distinct = trees * sum(min(2 ** level, rows) for level in range(depth + 1))
    return {
        "node_dots": visits,
        "dot_macs": visits * C,
        "axpy_macs": visits * C_out,
        "comparisons": rows * trees * depth,
        "gathered_rows": visits,
        "gathered_elements": visits * (C + 1 + C_out),
        "distinct_rows": distinct,
        "distinct_elements": distinct * (C + 1 + C_out),
    }


def _fff(op: Op) -> tuple[int, Counter]:
    # per visited node: logit = dot + b (add), a = GELU(logit) (3 mul, add, erf), y += a * w_out (MACs)
    walk = fff_walk_counts(op)
    visits = walk["node_dots"]
    return walk["dot_macs"] + walk["axpy_macs"], Counter(
        add=2 * visits, mul=3 * visits, erf=visits, cmp=walk["comparisons"])


def _elementwise(primitive: str) -> Callable[[Op], tuple[int, Counter]]:
    def rule(op: Op) -> tuple[int, Counter]:
        return 0, Counter({primitive: prod(op.output)})

    return rule


def _free(op: Op) -> tuple[int, Counter]:
    return 0, Counter()


def _mask(op: Op) -> tuple[int, Counter]:
    return 0, Counter({"add" if op.attr("mode") == "additive" else "mul": prod(op.output)})


def _affine(op: Op) -> tuple[int, Counter]:
    # x * scale + shift, per channel (the read-out of a folded PowerNorm basis)
    n = prod(op.output)
    return 0, Counter(mul=n, add=n)


def _significance(op: Op) -> tuple[int, Counter]:
    # PoWER-BERT: per key k, sum the H*T probabilities it receives, subtract the H diagonal ones
    # (H*T - 1 + H adds), times 1/H (one mul); masking the padded queries and keys is a select.
    B, H, T, _ = op.inputs[0]
    return 0, Counter(add=B * T * (H * T - 1 + H), mul=B * T)


def _top_tokens(op: Op) -> tuple[int, Counter]:
    # Convention: a selection of the keep - 1 largest of T - 1 values by a bounded heap costs
    # (T - 1) * ceil(log2(keep)) comparisons (at least one each); sorting the kept indices back into
    # original order costs keep * ceil(log2(keep)) more.
    (B, T), keep = op.inputs[0], op.attr("keep")
    depth = max(1, ceil(log2(max(keep, 2))))
    return 0, Counter(cmp=B * ((T - 1) + keep) * depth)


RULES: dict[str, Callable[[Op], tuple[int, Counter]]] = {
    "linear": _linear,
    "matmul": _matmul,
    "softmax": _softmax,
    "layernorm": _layernorm,
    "gelu": _gelu,
    "relu": _elementwise("max"),
    "tanh": _elementwise("tanh"),
    "add": _elementwise("add"),
    "scale": _elementwise("mul"),
    "mask": _mask,
    "affine": _affine,
    "fff": _fff,
    "embedding": _free,  # a gather: memory traffic only
    "slice": _free,
    "significance": _significance,
    "top_tokens": _top_tokens,
    "gather": _free,  # PoWER-BERT token selection: memory traffic only
}


def count_op(op: Op, bytes_per_element: float = 4) -> OpCount:
    macs, elementwise = RULES[op.kind](op)
    params = op.attr("learned_params", sum(prod(w) for w in op.weights))
    if op.kind == "embedding":  # reads the distinct gathered rows, writes every one; the ids are not counted
        weight_elements, activation_elements = embedding_rows(op) * op.weights[0][1], prod(op.output)
    elif op.kind == "slice":  # reads only the rows it keeps, then writes them
        weight_elements, activation_elements = 0, 2 * prod(op.output)
    elif op.kind == "gather":  # (B, T, ...)[(B, K)]: reads the K kept rows and the index, writes the rows
        weight_elements, activation_elements = 0, 2 * prod(op.output) + prod(op.inputs[1])
    elif op.kind == "fff":  # reads the visited nodes' rows, each once, as a dense layer reads its weights
        weight_elements = fff_walk_counts(op)["distinct_elements"]
        activation_elements = sum(prod(s) for s in op.inputs) + prod(op.output)
    else:  # the weights as read: an approximator's first T rows, not the params it holds
        weight_elements = sum(prod(w) for w in op.weights)
        activation_elements = sum(prod(s) for s in op.inputs) + prod(op.output)
    return OpCount(
        op=op,
        macs=int(macs),
        elementwise=Counter({k: int(v) for k, v in elementwise.items() if v}),
        params=int(params),
        weight_bytes=int(weight_elements * bytes_per_element),
        activation_bytes=int(activation_elements * bytes_per_element),
    )


def embedding_rows(op: Op) -> int:
    """Distinct rows an embedding op reads from its (rows, C) table: at most one per id, at most the
    table. The position ids are 0..T-1 in each of the B sequences (model.embeddings): T distinct."""
    (ids,), table_rows = op.inputs, op.weights[0][0]
    return min(ids[-1] if op.name == POSITION_EMBEDDING else prod(ids), table_rows)


@dataclass
class Profile:
    counts: list[OpCount]
    unknown: list[Op]

    def total(self, attribute: str) -> int:
        return sum(getattr(c, attribute) for c in self.counts)

    def elementwise(self) -> Counter:
        total: Counter = Counter()
        for c in self.counts:
            total.update(c.elementwise)
        return total

    def group(self, key: Callable[[OpCount], object]) -> dict[object, list[OpCount]]:
        groups: dict[object, list[OpCount]] = defaultdict(list)
        for c in self.counts:
            groups[key(c)].append(c)
        return dict(groups)


def count_ops(ops: Iterable[Op], bytes_per_element: float = 4) -> Profile:
    counts, unknown = [], []
    for op in ops:
        if op.kind in RULES:
            counts.append(count_op(op, bytes_per_element))
        else:
            unknown.append(op)
    return Profile(counts, unknown)


def trace(spec: ModelSpec, batch: int, seq_len: int) -> list[Op]:
    """The ops the engines run in one forward pass at (batch, seq_len), from shapes alone: nothing of
    size batch x seq_len is allocated (the inputs are Shaped too), so any batch can be traced."""
    weights = {key: Shaped(shape) for key, shape in expected_shapes(spec).items()}
    backend = TraceBackend()
    ids = Shaped((batch, seq_len), "int64")  # the attention mask and token types have its shape
    shaped_forward(spec, weights, backend, ids, ids, ids)
    return backend.ops


def model_ops(spec: ModelSpec, batch: int, seq_len: int) -> list[Op]:
    """The ops of the model as built, what the profiles and comparisons count: built_ops of the trace."""
    return built_ops(spec, trace(spec, batch, seq_len))


def built_ops(spec: ModelSpec, ops: Iterable[Op]) -> list[Op]:
    """The engines' ops without what the model does not have. The engines run one code path for every
    checkpoint (model.py): a missing bias or token-type table runs as zeros and a fixed position table
    is read like a learned one, which computes the same. Counted, a linear without a bias reads none
    and adds nothing (spec.qkv_bias, spec.dense_bias), a model without token types neither gathers
    nor adds them (spec.token_types), and a sinusoid table is read but holds 0 or 1 learned
    parameters (spec.positions, SINUSOID_LEARNED_PARAMS)."""
    out = []
    for op in ops:
        if not spec.token_types and op.name in TOKEN_TYPE_OPS:
            continue
        if op.kind == "linear" and op.layer is not None and _bias_absent(spec, op.name):
            op = replace(op, weights=op.weights[:1])
        if op.name == POSITION_EMBEDDING and spec.positions in SINUSOID_LEARNED_PARAMS:
            learned = (("learned_params", SINUSOID_LEARNED_PARAMS[spec.positions]),)
            op = replace(op, attrs=tuple(sorted(op.attrs + learned)))
        if op.kind == "linear" and APPROXIMATOR_MARK in op.name:
            learned = (("learned_params", _untruncated_params(op, spec.variant.softmax_input)),)
            op = replace(op, attrs=tuple(sorted(op.attrs + learned)))
        out.append(op)
    return out


def _untruncated_params(op: Op, n: int) -> int:
    """An approximator linear's params at its full input size n (model.softmax_approximator truncates
    the first layer's (h, n) weight to (h, T), the second's (n, h) weight and (n,) bias to T rows)."""
    if op.name.endswith(".0"):  # weight (h, T) -> (h, n); its bias (h,) is whole
        weight, *bias = op.weights
        full = [(weight[0], n), *bias]
    else:  # ".2": weight (T, h) -> (n, h), bias (T,) -> (n,)
        full = [(n, *w[1:]) for w in op.weights]
    return sum(prod(w) for w in full)


def _bias_absent(spec: ModelSpec, name: str) -> bool:
    return ((not spec.qkv_bias and name.endswith(QKV_PROJECTIONS))
            or (not spec.dense_bias and name.endswith(DENSE_PROJECTIONS)))

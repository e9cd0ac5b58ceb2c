"""Training-free PoWER-BERT retention search on a labelled dev subset: accuracy against FLOPs.

Inputs are tokenised once, padded to a fixed length (the paper pads SST-2 to N = 64, and a retention
count is a count of those N slots) or, with seq_len=None, to each length-sorted batch's longest text.
Two families of schedules are scored with the same engine as inference (reference, fast, ...):
- geometric: l_j = round(N * ratio^j), ratio on a grid (one knob, monotone by construction);
- greedy: from no elimination, repeatedly apply the single-layer cut (l_j -> round(l_j * shrink),
  later layers clipped to stay non-increasing) that loses the least accuracy per FLOP saved, while
  the accuracy loss stays within the budget.
The frontier is the Pareto set (fewer FLOPs, higher accuracy) of every schedule scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from .backends import Backend
from .checkpoint import Checkpoint
from .cost.counts import count_ops, model_ops
from .errors import UserError
from .eval.tasks import accuracy, token_cut, tokenized_batches
from .inputs import Batch, check_seq_len, warn_truncated
from .model import forward
from .power import geometric_retention

# l_j = round(T r^j), from mild (r = 0.95: the last of 12 layers keeps 54 % of T) to aggressive (r = 0.5:
# one token left by layer 6 at T = 64), in steps of 0.05 down to 0.6
GEOMETRIC_RATIOS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5)
GREEDY_SHRINK = 0.75  # a cut keeps 3/4 of a count: 12 cuts take a layer from 64 tokens to 1
# Accuracies are 100 k / n in floating point: a loss of exactly the budget (say 1 of n = 100 examples, 1.0
# point) can come out a few ulp above it (59.0 - 57.99999999999999). Losses are compared rounded to this
# many decimals, far below the 100 / n of one example.
LOSS_DECIMALS = 9


@dataclass
class Scored:
    retention: tuple[int, ...] | None  # None: no elimination
    accuracy: float  # x 100
    flops: int  # whole subset, from the trace
    family: str


def encode(ck: Checkpoint, sentences: Sequence[str], seq_len: int | None, batch_size: int = 32,
           warn_cuts: str | None = None) -> list[tuple]:
    """[(row indices, Batch)]: fixed seq_len padding, or length-sorted dynamic padding (seq_len None) with
    each batch cut to token_cut: what the model's positions and an MA approximator take. warn_cuts: where a
    command's seq_len came from (e.g. "--seq-len"), to say on stderr how many texts were cut; None: silent."""
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer")
    if seq_len is not None:
        check_seq_len(ck.spec, seq_len)
    order = np.argsort([len(s) for s in sentences], kind="stable") if seq_len is None else np.arange(len(sentences))
    limit, what = (seq_len, warn_cuts) if seq_len else token_cut(ck.spec)
    batches, truncated = tokenized_batches(ck, sentences, order, limit, batch_size, seq_len)
    if warn_cuts is not None:
        warn_truncated(truncated, len(sentences), limit, what)
    return batches


def predict(ck: Checkpoint, retention, batches: list[tuple[np.ndarray, Batch]], backend: Backend) -> np.ndarray:
    if not ck.spec.num_labels:
        raise UserError(f"{ck.source} has no classification head")
    spec = ck.spec.with_variant(retention=retention)
    predictions = np.zeros(sum(len(idx) for idx, _ in batches), np.int64)
    for idx, b in batches:
        out = forward(spec, ck.weights, b.input_ids, backend, b.attention_mask, b.token_type_ids)
        predictions[idx] = np.argmax(out.logits, axis=-1)
    return predictions


def subset_flops(ck: Checkpoint, retention, batches: list[tuple[np.ndarray, Batch]]) -> int:
    spec = ck.spec.with_variant(retention=retention)
    shapes = [b.shape for _, b in batches]
    per_shape = {s: count_ops(model_ops(spec, *s)).total("flops") for s in set(shapes)}
    return int(sum(per_shape[s] for s in shapes))


class Scorer:
    """Scores schedules on one encoded subset, remembering each one scored (`scored`, in the order this
    search first asked for them). `known`: schedules scored before (a resumed search's document); one
    this search asks for is taken from there instead of scored again, under the family this search asks
    for it as, so that `scored` is what a search that scored everything itself would hold. `progress` is
    called with each schedule actually scored."""

    def __init__(self, ck: Checkpoint, labels: np.ndarray, batches, backend: Backend, progress: Callable | None = None,
                 known: Sequence[Scored] = ()):
        self.ck, self.labels, self.batches, self.backend = ck, labels, batches, backend
        self.progress = progress
        self.known: dict[tuple | None, Scored] = {s.retention: s for s in known}  # not yet asked for
        self.scored: dict[tuple | None, Scored] = {}
        self.new = 0  # schedules scored by this search, not taken from `known`

    def __call__(self, retention, family: str) -> Scored:
        key = None if retention is None else tuple(int(n) for n in retention)
        if key in self.scored:
            return self.scored[key]
        if key in self.known:  # into scored before out of known: a Ctrl-C between them loses nothing
            self.scored[key] = replace(self.known[key], family=family)
            del self.known[key]
            return self.scored[key]
        score = accuracy(predict(self.ck, key, self.batches, self.backend), self.labels)
        self.scored[key] = Scored(key, score, subset_flops(self.ck, key, self.batches), family)
        self.new += 1
        if self.progress:
            self.progress(self.scored[key])
        return self.scored[key]


def geometric_search(scorer: Scorer, seq_len: int, ratios: Sequence[float] = GEOMETRIC_RATIOS) -> list[Scored]:
    return [scorer(geometric_retention(seq_len, scorer.ck.spec.layers, r), "geometric") for r in ratios]


def greedy_search(scorer: Scorer, seq_len: int, budget_loss: float, shrink: float = GREEDY_SHRINK) -> list[Scored]:
    baseline = scorer(None, "baseline")
    current = Scored(tuple([seq_len] * scorer.ck.spec.layers), baseline.accuracy, baseline.flops, "greedy")
    path = []
    while True:
        moves = [m for m in (_cut(current.retention, j, shrink) for j in range(len(current.retention))) if m]
        scored = [scorer(m, "greedy") for m in moves]
        allowed = [s for s in scored if within_budget(baseline, s, budget_loss) and s.flops < current.flops]
        if not allowed:
            return path
        current = min(allowed, key=lambda s: (current.accuracy - s.accuracy) / (current.flops - s.flops))
        path.append(current)


def _cut(retention: tuple[int, ...], layer: int, shrink: float) -> tuple[int, ...] | None:
    new = min(retention[layer] - 1, round(retention[layer] * shrink))
    if new < 1:
        return None
    return tuple(n if j < layer else min(n, new) for j, n in enumerate(retention))


def within_budget(baseline: Scored, s: Scored, budget_loss: float) -> bool:
    """s loses at most budget_loss accuracy points against the baseline (LOSS_DECIMALS)."""
    return round(baseline.accuracy - s.accuracy, LOSS_DECIMALS) <= budget_loss


def frontier(scored: Sequence[Scored]) -> list[Scored]:
    """The schedules no other beats on both FLOPs (fewer) and accuracy (higher or equal)."""
    front, best = [], -1.0
    for s in sorted(scored, key=lambda s: (s.flops, -s.accuracy)):
        if s.accuracy > best:
            front.append(s)
            best = s.accuracy
    return front


def choose(scored: Sequence[Scored], baseline: Scored, budget_loss: float) -> Scored:
    """The cheapest schedule whose accuracy loss is within the budget (the baseline if none is)."""
    within = [s for s in scored if within_budget(baseline, s, budget_loss)]
    return min(within, key=lambda s: s.flops) if within else baseline


def as_record(s: Scored) -> dict:
    record = asdict(s)
    record["retention"] = None if s.retention is None else list(s.retention)
    return record

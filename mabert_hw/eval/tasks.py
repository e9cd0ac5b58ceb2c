"""Evaluation tasks on files from the GLUE / WikiText distributions (loaders take a path).

STS-B: sentence pairs scored 0..5; metric Spearman x 100 of cosine(mean-pooled vectors) vs gold.
SST-2: `sentence<TAB>label`; metric accuracy x 100 of a classifier's argmax.
The TSVs are read by inputs.read_tsv (quoting off: stray quotes in STS-B dev break default CSV parsing).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import Backend
from ..checkpoint import Checkpoint
from ..errors import UserError
from ..inputs import SPECIAL_TOKENS, Batch, read_tsv, tokenize_cut, warn_truncated
from ..model import forward
from ..spec import ModelSpec

TASK_FILES = {"stsb": "glue/STS-B/dev.tsv", "sst2": "glue/SST-2/dev.tsv"}
DEV_FILE = "dev.tsv"  # a task's own folder holds it
SCORE_RANGE = (0.0, 5.0)  # STS-B gold similarity
MAX_TOKENS = 128  # texts are cut to at most this many tokens (the official MA-BERT n)


@dataclass
class PairTask:
    first: list[str]
    second: list[str]
    scores: np.ndarray  # (N,) gold similarity 0..5


@dataclass
class ClassificationTask:
    sentences: list[str]
    labels: np.ndarray  # (N,) int


def resolve(path: str | Path, task: str) -> Path:
    """A task file, or a folder holding it: a data root (at the standard GLUE place) or the task's own folder."""
    file = task_file(path, task)
    if Path(path).is_dir() and not file.is_file():
        raise UserError(f"no {task} data in {path}: it holds neither {TASK_FILES[task]} (a data root) nor "
                        f"{DEV_FILE} (the task's folder)")
    if not file.is_file():
        raise UserError(f"no {task} data at {file}")
    return file


def task_file(path: str | Path, task: str) -> Path:
    """The file `resolve` reads for `path`, found or not: in a folder the standard GLUE place under it, else
    its own dev.tsv (--data glue/STS-B) when that is a file."""
    path = Path(path)
    if not path.is_dir():
        return path
    standard, own = path / TASK_FILES[task], path / DEV_FILE
    return own if not standard.is_file() and own.is_file() else standard


def _rows(path: Path, limit: int | None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and up to `limit` data rows, each with its line number; blank lines are skipped."""
    header, rows = read_tsv(path)
    return header, list(itertools.islice(rows, limit))


def _require_examples(path: Path, rows: list) -> None:
    if not rows:
        raise UserError(f"no examples in {path}")


def _field(path: Path, line: int, row: list[str], column: int, name: str) -> str:
    if column >= len(row):
        raise UserError(f"{path}, line {line}: no {name}: expected at least {column + 1} tab-separated fields, "
                        f"got {len(row)}")
    return row[column]


def _score(path: Path, line: int, text: str) -> float:
    """A gold similarity in SCORE_RANGE: 'nan' and 'inf' parse as floats but are no score, and one outside the
    range is a column mixed up or a file on another scale."""
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise UserError(f"{path}, line {line}: score {text!r} is not a finite number")
    low, high = SCORE_RANGE
    if not low <= score <= high:
        raise UserError(f"{path}, line {line}: score {text!r} is outside the STS-B range {low:g} to {high:g}")
    return score


def _sentence(path: Path, line: int, row: list[str], column: int, name: str) -> str:
    """A text that is not blank: a blank one would be scored as [CLS] [SEP] alone."""
    text = _field(path, line, row, column, name)
    if not text.strip():
        raise UserError(f"{path}, line {line}: {name} is blank")
    return text


def _label(path: Path, line: int, text: str) -> int:
    if text.strip() not in ("0", "1"):
        raise UserError(f"{path}, line {line}: label {text!r} is not 0 or 1")
    return int(text)


def load_stsb(path: str | Path, limit: int | None = None) -> PairTask:
    file = resolve(path, "stsb")
    header, rows = _rows(file, limit)
    try:
        i1, i2, js = header.index("sentence1"), header.index("sentence2"), header.index("score")
    except ValueError:
        raise UserError(f"{file}: not an STS-B file (header {header[:4]}...)") from None
    _require_examples(file, rows)
    return PairTask([_sentence(file, n, r, i1, "sentence1") for n, r in rows],
                    [_sentence(file, n, r, i2, "sentence2") for n, r in rows],
                    np.array([_score(file, n, _field(file, n, r, js, "score")) for n, r in rows]))


def load_sst2(path: str | Path, limit: int | None = None) -> ClassificationTask:
    file = resolve(path, "sst2")
    header, rows = _rows(file, limit)
    if header[:2] != ["sentence", "label"]:
        raise UserError(f"{file}: not an SST-2 file (header {header})")
    _require_examples(file, rows)
    return ClassificationTask([_sentence(file, n, r, 0, "sentence").strip() for n, r in rows],
                              np.array([_label(file, n, _field(file, n, r, 1, "label")) for n, r in rows]))


def token_limit(spec: ModelSpec, max_len: int = MAX_TOKENS) -> int:
    """token_cut's count."""
    return token_cut(spec, max_len)[0]


def token_cut(spec: ModelSpec, max_len: int = MAX_TOKENS) -> tuple[int, str]:
    """The most tokens a text keeps, and what sets it: max_len, and no more than the model's positions or, on
    MA-BERT, the softmax approximator's n inputs (a longer batch would be refused by the forward pass). A limit
    below [CLS] + [SEP] is a UserError: the tokenizer cannot cut a text shorter than them."""
    limits = {"the model's positions": spec.max_positions, "the cut of the texts": max_len}  # a tie names the model
    if spec.variant.softmax == "mlp":
        limits["the softmax approximator's inputs"] = spec.variant.softmax_input
    what, limit = min(limits.items(), key=lambda item: item[1])
    if limit < SPECIAL_TOKENS:
        raise UserError(f"{spec.name} takes texts of at most {limit} tokens ({what}): no room for [CLS] and "
                        f"[SEP], which need {SPECIAL_TOKENS}")
    return limit, what


def length_batches(ck: Checkpoint, texts: Sequence[str], batch_size: int = 32,
                   max_len: int = MAX_TOKENS, warn_cuts: bool = False) -> list[tuple[np.ndarray, Batch]]:
    """[(text indices, Batch)]: texts sorted by length in batches of batch_size, each padded to its
    longest text (truncated to token_cut(spec, max_len) tokens; with warn_cuts, how many is said on stderr,
    for the texts a command evaluates, not those it calibrates on): the batches `run_batches` runs."""
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer")
    limit, what = token_cut(ck.spec, max_len)
    batches, truncated = tokenized_batches(ck, texts, np.argsort([len(t) for t in texts], kind="stable"), limit,
                                           batch_size)
    if warn_cuts:
        warn_truncated(truncated, len(texts), limit, what)
    return batches


def tokenized_batches(ck: Checkpoint, texts: Sequence[str], order: np.ndarray, limit: int, batch_size: int,
                      seq_len: int | None = None) -> tuple[list[tuple[np.ndarray, Batch]], int]:
    """[(text indices, Batch)] of the texts in `order`, batch_size at a time, none longer than `limit` tokens
    (padded to seq_len, else to each batch's longest: inputs.tokenize_cut), and how many texts were cut."""
    batches, truncated = [], 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch, cut = tokenize_cut(ck.tokenizer_dir, [texts[i] for i in idx], limit, seq_len)
        batches.append((idx, batch))
        truncated += cut
    return batches, truncated


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Per cent of predicted labels equal to the true ones."""
    return 100.0 * float((predictions == labels).mean())


def run_batches(ck: Checkpoint, texts: Sequence[str], backend: Backend,
                batch_size: int = 32, max_len: int = MAX_TOKENS,
                progress: Callable | None = None, warn_cuts: bool = False) -> list:
    """Forward every text in batches of similar length; results back in input order.

    Returns, per text, (last hidden state (T_i, C) of its real tokens, logits or None); under PoWER-BERT
    retention the real tokens the last layer kept.
    """
    weights = ck.require_weights("evaluation")
    batches = length_batches(ck, texts, batch_size, max_len, warn_cuts)
    results: list = [None] * len(texts)
    for idx, batch in progress(batches) if progress else batches:
        out = forward(ck.spec, weights, batch.input_ids, backend, batch.attention_mask, batch.token_type_ids)
        real = np.asarray(out.token_mask) > 0  # (B, T_L)
        for row, i in enumerate(idx):
            logits = None if out.logits is None else np.asarray(out.logits[row])
            results[i] = (np.asarray(out.last_hidden_state[row])[real[row]], logits)
    return results


def mean_pooled(results: list) -> np.ndarray:
    return np.stack([hidden.mean(axis=0) for hidden, _ in results])  # (N, C)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def stsb_spearman(ck: Checkpoint, task: PairTask, backend: Backend, **options) -> float:
    """Spearman x 100 between cosine(mean pooling) and the gold scores."""
    from scipy.stats import spearmanr

    _require_ranks(task.scores, "gold scores")
    vectors = mean_pooled(run_batches(ck, task.first + task.second, backend, **options))
    n = len(task.first)
    similarities = cosine(vectors[:n], vectors[n:])
    _require_ranks(similarities, "cosine similarities")
    return 100.0 * float(spearmanr(similarities, task.scores).statistic)


def _require_ranks(values: np.ndarray, what: str) -> None:
    """Spearman is undefined (nan) for fewer than 2 pairs or a constant side."""
    if len(values) < 2:
        raise UserError(f"Spearman needs at least 2 sentence pairs, got {len(values)}")
    if np.all(values == values[0]):
        raise UserError(f"Spearman is undefined: all {len(values)} {what} are equal")


def require_sst2_classifier(ck: Checkpoint, command: str = "SST-2 accuracy") -> None:
    """SST-2 labels are 0/1, predicted as the argmax of a two-output head. Any other head would be scored
    without a word: a one-output (regression) head argmaxes to 0 on every text, scoring the share of
    negatives; a wider head predicts labels SST-2 does not have."""
    if not ck.spec.num_labels:
        raise UserError(f"{ck.source} has no classification head: {command} needs a classifier")
    if ck.spec.num_labels != 2:
        raise UserError(f"{ck.source} has a {ck.spec.num_labels}-output head: {command} needs a two-class "
                        "classifier (SST-2 labels are 0 and 1)")


def sst2_accuracy(ck: Checkpoint, task: ClassificationTask, backend: Backend, **options) -> float:
    require_sst2_classifier(ck)
    results = run_batches(ck, task.sentences, backend, **options)
    predictions = np.array([int(np.argmax(logits)) for _, logits in results])
    return accuracy(predictions, task.labels)

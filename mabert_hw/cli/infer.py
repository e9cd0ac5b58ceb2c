"""`mabert-hw infer`: reference-backend inference on texts."""

from __future__ import annotations

import json

import numpy as np

from .. import checkpoint
from ..backends import make_backend
from ..errors import UserError
from ..eval.tasks import token_limit
from ..inputs import tokenize_cut, warn_truncated
from ..model import forward
from ..report.tables import text_table
from .common import add_checkpoint

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")  # HF's names
MULTI_LABEL_THRESHOLD = 0.5  # a label applies when its sigmoid probability exceeds one half


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run the NumPy reference on texts: sentence vectors, class probabilities or regression scores",
        description="Tokenise the texts, run the reference backend and print, per text, the pooled "
        "sentence vector (its norm and first values) or, for a classifier, what its problem_type makes of "
        "the logits as HF's loss does: softmax probabilities (single label), sigmoid per label (multi-label) or "
        "the raw scores (regression, and any one-output head without a problem_type). A label is shown by its "
        "name in config.json's id2label (HF's LABEL_i without one) and its output index (label_id).",
    )
    add_checkpoint(parser)
    parser.add_argument("--text", action="append", required=True, help="a text (repeat for several)")
    parser.add_argument("--pooling", choices=("cls", "mean"),
                        help="sentence vector: mean over real tokens or the [CLS] row (default mean); "
                             "not for a classifier, whose output is its head's")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    parser.set_defaults(run=run)


def sentence_vectors(last_hidden: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "cls":
        return last_hidden[:, 0]
    m = attention_mask[:, :, None].astype(last_hidden.dtype)  # (B, T, 1)
    return (last_hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def run(args) -> int:
    ck = checkpoint.load(args.ckpt)
    weights = ck.require_weights("infer")
    if ck.spec.num_labels and args.pooling:  # the head reads the pooler's [CLS] row: nothing to choose
        raise UserError(f"--pooling applies to sentence vectors; {ck.source} is a classifier "
                        f"({ck.spec.num_labels} outputs from its pooled [CLS] row)")
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt)")
    longest = token_limit(ck.spec, ck.spec.max_positions)  # MA-BERT: also the approximator's n inputs
    batch, truncated = tokenize_cut(ck.tokenizer_dir, args.text, longest)
    warn_truncated(truncated, len(args.text), longest)
    out = forward(ck.spec, weights, batch.input_ids, make_backend("reference"),
                  batch.attention_mask, batch.token_type_ids)
    if out.logits is not None:
        config = checkpoint_config(args.ckpt)
        problem = problem_type(config, ck.spec.num_labels)
        records = classifier_records(args.text, out.logits, problem, label_names(config, ck.spec.num_labels))
    else:
        records = vector_records(args.text, sentence_vectors(out.last_hidden_state, batch.attention_mask,
                                                             args.pooling or "mean"))
    print(json.dumps(records, indent=2) if args.format == "json" else text_table(shortened(records)))
    return 0


TABLE_TEXT_CHARS = 60  # a table row stays on one line of a wide terminal; json keeps the whole text


def shortened(records: list[dict]) -> list[dict]:
    """The records with each text cut to TABLE_TEXT_CHARS characters (an ellipsis marking the cut)."""
    def cut(text: str) -> str:
        return text if len(text) <= TABLE_TEXT_CHARS else text[: TABLE_TEXT_CHARS - 1] + "\u2026"

    return [{**r, "text": cut(r["text"])} for r in records]


def vector_records(texts: list[str], vectors: np.ndarray) -> list[dict]:
    return [{"text": text, "dim": int(v.size), "norm": round(float(np.linalg.norm(v)), 6),
             "first_values": [round(float(x), 5) for x in v[:4]]} for text, v in zip(texts, vectors)]


def checkpoint_config(source: str) -> dict:
    """The config.json of a checkpoint directory ({} for any other source): problem_type is not in the spec."""
    directory = checkpoint.source_path(source)
    path = directory / "config.json"
    return checkpoint.read_config(path) if directory.is_dir() and path.is_file() else {}


def problem_type(config: dict, num_labels: int) -> str:
    """The rule BertForSequenceClassification's loss follows: the config's problem_type when given, else
    regression for one output and single-label classification for several. (HF's text-classification
    pipeline would put a sigmoid on a one-output head without problem_type; the raw score loses nothing.)"""
    declared = config.get("problem_type")
    if declared is None:
        return "regression" if num_labels == 1 else "single_label_classification"
    if declared not in PROBLEM_TYPES:
        raise UserError(f"unknown problem_type {declared!r} in config.json (known: {', '.join(PROBLEM_TYPES)})")
    return declared


def label_names(config: dict, num_labels: int) -> list[str]:
    """The name of each output, as HF's config resolves it: id2label (keys are output indices as strings),
    else LABEL_0, LABEL_1, ..."""
    id2label = config.get("id2label")
    if id2label is None:
        return [f"LABEL_{i}" for i in range(num_labels)]
    try:
        names = {int(key): str(name) for key, name in id2label.items()}
    except (AttributeError, ValueError):
        raise UserError(f"config 'id2label' must map output indices to labels, got {id2label!r:.60}") from None
    missing = [i for i in range(num_labels) if i not in names]
    if missing:
        raise UserError(f"config 'id2label' names no label for output {missing[0]} (the head has {num_labels})")
    return [names[i] for i in range(num_labels)]


def classifier_records(texts: list[str], logits: np.ndarray, problem: str, names: list[str]) -> list[dict]:
    """Per text: raw scores (regression), sigmoid probabilities and the labels above one half (multi-label),
    or softmax probabilities and the argmax label (single label); labels by name (`names`) and output index."""
    from scipy.special import expit, softmax

    if problem == "regression":
        return [{"text": text, "scores": rounded(row)} for text, row in zip(texts, logits)]
    if problem == "multi_label_classification":
        probs = expit(logits)
        chosen = [np.flatnonzero(p > MULTI_LABEL_THRESHOLD).tolist() for p in probs]
        return [{"text": text, "probabilities": rounded(p), "labels": [names[i] for i in ids], "label_ids": ids}
                for text, p, ids in zip(texts, probs, chosen)]
    probs = softmax(logits, axis=-1)
    return [{"text": text, "probabilities": rounded(p), "label": names[int(p.argmax())], "label_id": int(p.argmax())}
            for text, p in zip(texts, probs)]


def rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]

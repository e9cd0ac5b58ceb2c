"""`mabert-hw infer`: reference-backend inference on texts."""

from __future__ import annotations

import json
import sys

import numpy as np

from .. import checkpoint
from ..backends import make_backend
from ..errors import UserError
from ..inputs import tokenize
from ..model import forward
from ..report.tables import text_table
from .common import add_checkpoint


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run the NumPy reference on texts: sentence vectors or class probabilities",
        description="Tokenise the texts, run the reference backend and print, per text, the pooled "
        "sentence vector (its norm and first values) or, for a classifier, the class probabilities.",
    )
    add_checkpoint(parser)
    parser.add_argument("--text", action="append", required=True, help="a text (repeat for several)")
    parser.add_argument("--pooling", choices=("cls", "mean"), default="mean",
                        help="sentence vector: mean over real tokens or the [CLS] row (default mean)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(run=run)


def sentence_vectors(last_hidden: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "cls":
        return last_hidden[:, 0]
    m = attention_mask[:, :, None].astype(last_hidden.dtype)  # (B, T, 1)
    return (last_hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def run(args) -> int:
    ck = checkpoint.load(args.ckpt)
    weights = ck.require_weights("infer")
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt)")
    batch = tokenize(ck.tokenizer_dir, args.text)
    longest = ck.spec.max_positions
    if batch.shape[1] > longest:
        truncated = int((batch.attention_mask.sum(axis=1) > longest).sum())
        print(f"mabert-hw: warning: {truncated} of {len(args.text)} texts truncated to the model's {longest} tokens",
              file=sys.stderr)
        batch = tokenize(ck.tokenizer_dir, args.text, longest)
    out = forward(ck.spec, weights, batch.input_ids, make_backend("reference"),
                  batch.attention_mask, batch.token_type_ids)
    records = []
    if out.logits is not None:
        z = out.logits - out.logits.max(axis=-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        for text, p in zip(args.text, probs):
            records.append({"text": text, "probabilities": [round(float(v), 6) for v in p],
                            "label": int(p.argmax())})
    else:
        vectors = sentence_vectors(out.last_hidden_state, batch.attention_mask, args.pooling)
        for text, v in zip(args.text, vectors):
            records.append({"text": text, "dim": int(v.size), "norm": round(float(np.linalg.norm(v)), 6),
                            "first_values": [round(float(x), 5) for x in v[:4]]})
    print(json.dumps(records, indent=2) if args.format == "json" else text_table(records))
    return 0

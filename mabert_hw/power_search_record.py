"""The `power-search --out` document, saved as the search goes, and read back to resume a search.

The search rewrites its document (whole, write_text_whole) after every schedule it scores, marked
`"interrupted": true` until the search ends, so a killed search (Ctrl-C, SIGTERM, SIGKILL, a crash) loses
at most the schedule under way. `--resume` hands the search the schedules the document holds
(power_search.Scorer's `known`): a schedule the search asks for is taken from there instead of scored,
and the greedy path is a function of the scores, so the resumed search scores only what it lacks and
writes the decision a search that scored everything itself would write: `scored`, the frontier and the
chosen schedule are those of the schedules it asks for only. The earlier document's others (another
budget's greedy path, another method's schedules) are paid-for work: they are kept apart, in
`scored_not_asked`, which is outside every decision and which the next --resume reads back with `scored`.

A schedule's score depends on the model (weights, spec, tokenizer), the examples scored, the padded
length, the engine (with the fixed engine's calibration) and the batch size: `scores_depend_on` records
them, and a resumed search must match every one. The budget and the method do not change a score, only
which schedules are asked for and which is chosen, so they may differ.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .atomic import write_text_whole
from .checkpoint import Checkpoint
from .errors import UserError
from .power_search import Scored, as_record, frontier


def scores_depend_on(ck: Checkpoint, sentences: Sequence[str], labels: np.ndarray, seq_len: int, engine: str,
                     calibration: Path | None, batch_size: int) -> dict:
    """Everything a schedule's accuracy and FLOPs depend on besides the schedule, as digests and settings."""
    examples = hashlib.sha256()
    for sentence, label in zip(sentences, labels):
        examples.update(f"{sentence}\t{int(label)}\n".encode())
    return {"model": ck.hasher().hexdigest(), "examples_sha256": examples.hexdigest(), "examples": len(labels),
            "seq_len": seq_len, "engine": engine, "calibration": calibration.name if calibration else None,
            "batch_size": batch_size}


def document(fields: dict, scored: Iterable[Scored], chosen: Scored | None, not_asked: Iterable[Scored] = ()) -> dict:
    """The --out document: `fields` (the run's settings), the baseline, every schedule this search asked for
    (`scored`) and their frontier, and the schedules of a resumed document it did not ask for (`not_asked`);
    with `chosen` None, a search not finished (marked interrupted, no "retention": `eval --retention`
    refuses it)."""
    scored = list(scored)
    baseline = next(s for s in scored if s.retention is None)  # the search scores it first
    if chosen:
        result = {"retention": as_record(chosen)["retention"], "accuracy": chosen.accuracy, "flops": chosen.flops}
    else:
        result = {"interrupted": True}
    return {**fields, **result, "baseline_accuracy": baseline.accuracy, "baseline_flops": baseline.flops,
            "frontier": [as_record(s) for s in frontier(scored)], "scored": [as_record(s) for s in scored],
            "scored_not_asked": [as_record(s) for s in not_asked]}


def save(path: Path, doc: dict) -> None:
    """Replace `path` with `doc`, whole: a kill during the write leaves the previous document."""
    write_text_whole(path, json.dumps(doc, indent=2) + "\n")


def _read(path: Path) -> dict | None:
    """The JSON object in `path`; None when it is not one (another kind of file)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def refuse_overwriting(path: Path) -> None:
    """Before a search started over writes `path`: it may replace a finished search's document, or an empty
    file, and nothing else. An interrupted search's scores are continued with --resume, and any other file
    (a checkpoint's weights, a sweep's run record) is not the search's to replace."""
    if path.is_file() and path.stat().st_size:
        then = "choose another --out (a new search replaces only a finished search's document)"
        if _search_document(path, then).get("interrupted") is True:
            raise UserError(f"{path} holds an interrupted power-search's scores: pass --resume to continue it, or "
                            "choose another --out")


def _search_document(path: Path, then: str) -> dict:
    """The power-search document in `path`; any other file is refused, saying `then` (how to go on)."""
    doc = _read(path) or {}
    not_asked = doc.get("scored_not_asked", [])  # none in a document written before it existed
    if not (isinstance(doc.get("scored"), list) and isinstance(not_asked, list)):
        raise UserError(f"{path} is not a power-search --out document: {then}")
    return doc


def resumed_scores(path: Path, depends_on: dict, layers: int) -> list[Scored]:
    """The schedules scored in the document at `path`, asked for or not (none when there is no file, or an
    empty one), after checking that they were scored as this search would score them."""
    if not path.exists() or not path.stat().st_size:
        return []
    doc = _search_document(path, "choose another --out to start a search")
    recorded = doc.get("scores_depend_on")
    if not isinstance(recorded, dict):
        raise UserError(f"{path} does not record what its scores depend on (a document from before --resume "
                        "existed): run the search without --resume, into another --out")
    differences = [f"{k}: {recorded.get(k)!r} there, {v!r} now" for k, v in depends_on.items() if recorded.get(k) != v]
    if differences:
        raise UserError(f"{path} was scored with other settings ({'; '.join(differences)}): resume with the same "
                        "checkpoint, data, --limit, --seq-len, --engine and --batch-size, or choose another --out")
    scored = [_scored(record, layers, path) for record in [*doc["scored"], *doc.get("scored_not_asked", [])]]
    if not any(s.retention is None for s in scored):
        raise UserError(f"{path} holds no baseline score: choose another --out to start a search")
    return scored


def _scored(record, layers: int, path: Path) -> Scored:
    """One entry of a document's `scored` or `scored_not_asked`, checked: a hand-edited or damaged file is
    refused in one line."""
    try:
        retention, accuracy, flops, family = (record[k] for k in ("retention", "accuracy", "flops", "family"))
        counts_ok = retention is None or (isinstance(retention, list) and len(retention) == layers and all(
            type(n) is int and n >= 1 for n in retention))
        if not (counts_ok and type(accuracy) in (int, float) and math.isfinite(accuracy) and type(flops) is int
                and isinstance(family, str)):
            raise TypeError
    except (TypeError, KeyError):
        raise UserError(f"{path}: a scored entry is not a power-search score: {record!r}") from None
    return Scored(None if retention is None else tuple(retention), float(accuracy), flops, family)

"""Outputs that would overwrite the command's own inputs (a --data TSV, a --grid, a checkpoint's files) are
refused before the work: the inputs are the files the loaders open, found as they find them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

INPUT_FLAGS = ("data", "grid", "config", "baseline", "retention", "texts", "hw")  # CKPT / --teacher: checkpoints
CHECKPOINT_FLAGS = ("ckpt", "teacher")
OUTPUT_FILE_FLAGS = ("output", "out", "plot")  # convert's --out is a directory: it matches no input file
CONFIG_FILES = ("config.json", "model_config.json")  # HF / MA / crammedBERT, cramming's


def refuse_outputs_over_inputs(args: argparse.Namespace) -> None:
    """A UserError when an output file of `args` is one of its inputs, whatever the paths' spelling."""
    inputs = {}
    for flag in INPUT_FLAGS:
        for value in _values(getattr(args, flag, None)):
            inputs.update({path: value for path in _data_files(Path(value), getattr(args, "task", None))})
    for flag in CHECKPOINT_FLAGS:
        for value in _values(getattr(args, flag, None)):
            inputs.update({path: value for path in _checkpoint_files(value)})
    for flag in OUTPUT_FILE_FLAGS:
        for value in _values(getattr(args, flag, None)):
            target = _resolved(Path(value))
            if target is not None and target in inputs:
                raise UserError(f"--{flag} {value} is an input of this command ({inputs[target]}): it would be "
                                "overwritten; choose another file")


def _values(value) -> list[str]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]


def _resolved(path: Path) -> Path | None:
    """The file a path leads to; None for one that cannot be resolved (a symlink loop), which no input is."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None


def _existing(paths) -> set[Path]:
    return {r for r in map(_resolved, paths) if r is not None and r.is_file()}


def _data_files(path: Path, task: str | None) -> set[Path]:
    """A data file, or in a data root or a task's folder the task's dev file and the train split calibration reads."""
    if path.is_dir() and task is not None:
        from ..eval.tasks import task_file

        dev = task_file(path, task)
        return _existing([dev, dev.parent / "train.tsv"])
    return _existing([path, path.parent / "train.tsv"] if path.suffix == ".tsv" else [path])


def _checkpoint_files(source: str) -> set[Path]:
    """The files `checkpoint.load` may read for `source`: a directory's configs, weights (shards included)
    and tokenizer files; a config.json alone; an MA-BERT .pt file and the tokenizer files beside it."""
    from .. import checkpoint
    from ..inputs import TOKENIZER_FILES

    path = checkpoint.source_path(source)  # a preset name is no path: nothing to keep
    if path.is_dir():
        names = CONFIG_FILES + checkpoint.WEIGHT_FILES + TOKENIZER_FILES
        shards = [f for pattern in checkpoint.UNREAD_WEIGHT_PATTERNS for f in path.glob(pattern)]
        return _existing([*(path / name for name in names), *shards])
    if path.suffix in checkpoint.OFFICIAL_MA_SUFFIXES:
        return _existing([path, *(path.parent / name for name in TOKENIZER_FILES)])
    return _existing([path])

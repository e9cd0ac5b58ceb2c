"""Model inputs: tokenised text (HF `tokenizers`) or seeded random ids, as (B, T) int64 arrays."""

from __future__ import annotations

import csv
import io
import os
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .errors import UserError, error_summary
from .spec import ModelSpec

SAMPLE_TEXTS = (
    "A man is playing a guitar on the stage.",
    "The quick brown fox jumps over the lazy dog.",
    "Matrix arithmetic only: no softmax, no GELU, no LayerNorm at inference.",
    "Short one.",
)


# The evaluation data (GLUE STS-B / SST-2, WikiText-2) is never inside the repository: by default it is
# ../shared/data beside a clone (this file is <clone>/mabert_hw/inputs.py), or wherever MABERT_HW_DATA
# points. The tests and the analysis scripts' --data start from here; the CLI commands take --data.
DATA_DIR = Path(os.environ.get("MABERT_HW_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")  # what load_tokenizer reads

SPECIAL_TOKENS = 2  # [CLS] and [SEP]: every tokenised text holds them


@dataclass
class Batch:
    input_ids: np.ndarray  # (B, T) int64
    attention_mask: np.ndarray  # (B, T) int64, 1 = real token, 0 = padding
    token_type_ids: np.ndarray  # (B, T) int64

    @property
    def shape(self) -> tuple[int, int]:
        return self.input_ids.shape


def load_tokenizer(directory: Path):
    """tokenizer.json, else vocab.txt (WordPiece); a file `tokenizers` cannot load is a UserError naming it."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    path = directory / "tokenizer.json"
    if path.exists():
        load = partial(Tokenizer.from_file, str(path))
    else:
        path = directory / "vocab.txt"
        load = partial(BertWordPieceTokenizer, str(path), **word_piece_options(directory))
    try:
        return load()
    except Exception as error:  # a bare Exception for bad JSON or UTF-8, TypeError for a vocab without [SEP]
        raise UserError(f"{path}: not a tokenizer file ({error_summary(error)})") from None


# tokenizer_config.json key -> (BertWordPieceTokenizer option, BertTokenizer's default); a None default
# (strip_accents) means "follow lowercase", so None is a value the key may also hold.
WORD_PIECE_KEYS = {
    "do_lower_case": ("lowercase", True),
    "tokenize_chinese_chars": ("handle_chinese_chars", True),
    "strip_accents": ("strip_accents", None),
}


def word_piece_options(directory: Path) -> dict:
    """A vocab.txt tokenizer's normalisation, read as HF's BertTokenizer reads it: from tokenizer_config.json
    only (transformers ignores these keys in config.json), with BertTokenizer's defaults for absent keys."""
    from .checkpoint import read_config

    path = directory / "tokenizer_config.json"
    config = read_config(path) if path.exists() else {}
    options = {}
    for key, (option, default) in WORD_PIECE_KEYS.items():
        value = config.get(key, default)
        if not isinstance(value, bool) and not (value is None and default is None):
            raise UserError(f"{path}: {key} must be true or false, got {value!r}")
        options[option] = value
    return options


def tokenize(directory: Path, texts: list[str] | tuple[str, ...], seq_len: int | None = None) -> Batch:
    """Tokenise with [CLS]/[SEP]; pad to the longest text, or pad/truncate to seq_len."""
    return _batch(_encode(directory, texts, seq_len))


def _encode(directory: Path, texts: list[str] | tuple[str, ...], width: int | None) -> list:
    """The tokenizer's Encodings of `texts`: padded to the longest, or cut and padded to `width`. The
    tokenizer file's own padding and truncation settings are replaced, not added to."""
    if not texts:
        raise UserError("no texts to tokenise")
    tokenizer = load_tokenizer(directory)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if width:
        tokenizer.enable_truncation(max_length=width)
        tokenizer.enable_padding(length=width)
    else:
        tokenizer.enable_padding()
    return tokenizer.encode_batch(list(texts))


def _batch(encodings: list) -> Batch:
    return Batch(
        np.array([e.ids for e in encodings], np.int64),
        np.array([e.attention_mask for e in encodings], np.int64),
        np.array([e.type_ids for e in encodings], np.int64),
    )


def tokenize_within(directory: Path, texts: list[str] | tuple[str, ...], limit: int,
                    seq_len: int | None = None) -> Batch:
    """tokenize_cut's batch."""
    return tokenize_cut(directory, texts, limit, seq_len)[0]


def tokenize_cut(directory: Path, texts: list[str] | tuple[str, ...], limit: int,
                 seq_len: int | None = None) -> tuple[Batch, int]:
    """The texts with [CLS]/[SEP], none longer than `limit` tokens: padded to seq_len (cut to it, and to
    limit), or to the longest text (so a batch of short texts stays narrow); and how many texts were cut (for
    warn_truncated). A batch of short texts is tokenised once; a batch with a text past `limit`, twice."""
    if seq_len is not None:  # one pass: a cut text's Encoding holds the rest in `overflowing`
        encodings = _encode(directory, texts, min(seq_len, limit))
        return _batch(encodings), sum(1 for e in encodings if e.overflowing)
    whole = _encode(directory, texts, None)
    cut = sum(1 for e in whole if sum(e.attention_mask) > limit)
    return _batch(whole if not cut else _encode(directory, texts, limit)), cut


def warn_truncated(truncated: int, total: int, limit: int, reason: str | None = None) -> None:
    """The warning of a command that cut `truncated` of its `total` texts to `limit` tokens: the model's, or
    those `reason` names."""
    if truncated:
        cut = f"the model's {limit} tokens" if reason is None else f"{limit} tokens ({reason})"
        print(f"mabert-hw: warning: {truncated} of {total} texts truncated to {cut}", file=sys.stderr)


def check_positions(spec: ModelSpec, seq_len: int) -> None:
    if seq_len > spec.max_positions:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {spec.max_positions} positions: "
                        f"use --seq-len {spec.max_positions} or less")  # seq_len may be a default the user never typed


def check_seq_len(spec: ModelSpec, seq_len: int) -> None:
    """A fixed length to pad/truncate tokenised text to: room for [CLS] and [SEP], within the positions."""
    if seq_len < SPECIAL_TOKENS:
        raise UserError(f"--seq-len {seq_len} leaves no room for [CLS] and [SEP]: give at least {SPECIAL_TOKENS}")
    check_positions(spec, seq_len)


def read_utf8(path: str | Path) -> str:
    """A text file's contents, without the byte-order mark some editors (Notepad, Excel) put first; an
    unreadable or non-UTF-8 file is a UserError naming the file (and line)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}, line {_line_of(error)}: not UTF-8 text ({error.reason})") from None


def _line_of(error: UnicodeDecodeError) -> int:
    """The line of the undecodable byte (error.object is the data decoded, after any byte-order mark)."""
    return error.object.count(b"\n", 0, error.start) + 1


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML file's tables; an unreadable, non-UTF-8 (TOML is UTF-8, and tomllib takes no byte-order mark)
    or malformed file is a one-line UserError "cannot read <what> <path>: ...", with the line of a bad byte
    or of bad syntax."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"cannot read {what} {path}: not UTF-8 text (line {_line_of(error)}: {error.reason})") from None
    except tomllib.TOMLDecodeError as error:  # its message names the line and column
        raise UserError(f"cannot read {what} {path}: invalid TOML ({error})") from None


def read_tsv(path: str | Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A TSV as GLUE writes it (tabs, quoting off: stray quotes in STS-B dev break default CSV quoting):
    its header, and its non-blank data rows, each with its line number. A field over csv's limit (128 Ki
    characters, far beyond the 128 tokens a text keeps) is a UserError naming the line: such a line is
    no GLUE text but, say, a whole document on one line."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(_checked_rows(path, reader), None)
    if header is None:
        raise UserError(f"{path} is empty: expected a header line")
    return header, ((reader.line_num, row) for row in _checked_rows(path, reader) if row)


def _checked_rows(path: str | Path, reader) -> Iterator[list[str]]:
    """The reader's rows; a parse error (with quoting off: a field over the limit) as a UserError."""
    try:
        yield from reader
    except csv.Error as error:
        raise UserError(f"{path}, line {reader.line_num}: not a line of tab-separated texts ({error})") from None


def read_texts(path: str | Path) -> list[str]:
    texts = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
    if not texts:
        raise UserError(f"{path} holds no text (one text per line expected)")
    return texts


def random_batch(spec: ModelSpec, batch: int, seq_len: int, seed: int = 0, padded: bool = True) -> Batch:
    """Random ids; with `padded`, every row but the first ends in padding of random length."""
    if batch < 1 or seq_len < 1:
        raise UserError(f"batch and seq-len must be positive, got {batch} x {seq_len}")
    check_positions(spec, seq_len)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.vocab_size, (batch, seq_len), dtype=np.int64)
    types = rng.integers(0, spec.type_vocab_size, (batch, seq_len), dtype=np.int64)
    lengths = np.full(batch, seq_len)
    if padded and seq_len > 1:
        lengths[1:] = rng.integers(1, seq_len + 1, batch - 1)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    return Batch(ids * mask, mask, types * mask)


def tsv_texts(path: Path) -> list[str]:
    """The sentence columns of a GLUE TSV; a row without them is an error."""
    header, rows = read_tsv(path)
    columns = [i for i, h in enumerate(header) if h in ("sentence", "sentence1", "sentence2")]
    if not columns:
        raise UserError(f"{path}: no sentence column in header {header[:4]}")
    texts = []
    for line, row in rows:
        if len(row) <= columns[-1]:
            raise UserError(f"{path}, line {line}: {len(row)} of the header's {len(header)} tab-separated fields")
        texts += [row[i].strip() for i in columns if row[i].strip()]
    if not texts:
        raise UserError(f"{path} holds no text under its header")
    return texts


def data_texts(path: str) -> list[str]:
    """A GLUE .tsv gives its sentence columns, as in `convert`: read line by line, its header and label
    columns would be measured as texts."""
    return tsv_texts(Path(path)) if Path(path).suffix == ".tsv" else read_texts(path)

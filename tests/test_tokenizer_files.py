"""Tokenizer files: a WordPiece vocab.txt gives its line numbers as ids; a tokenizer file that `tokenizers`
cannot load (cut short, not UTF-8, no [SEP]) is a one-line user error, in `check` too, not a traceback."""

from __future__ import annotations

import json

import pytest

from mabert_hw.cli import main
from mabert_hw.errors import UserError
from mabert_hw.inputs import tokenize

from .helpers import error_line


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]


def test_a_word_piece_vocabulary_tokenizes_to_its_line_numbers(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    batch = tokenize(tmp_path, ["hello world", "world"])
    assert batch.input_ids.tolist() == [[2, 4, 5, 3], [2, 5, 3, 0]]  # [CLS] ... [SEP] [PAD]: vocab line numbers
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("name,data", [
    ("tokenizer.json", b'{"version": "1.0", "trunc'),  # cut short
    ("vocab.txt", b"\xff\xfe\x00not utf-8"),
    ("vocab.txt", "\n".join(v for v in VOCAB if v != "[SEP]").encode()),  # no [SEP]
])
def test_a_tokenizer_file_that_cannot_be_loaded_is_a_user_error(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=f"{tmp_path / name}: not a tokenizer file"):
        tokenize(tmp_path, ["hello world"])


def test_check_with_a_broken_tokenizer_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert main(["check", str(tmp_path)]) == 2
    assert error_line(capsys).startswith(f"mabert-hw: error: {tmp_path / 'tokenizer.json'}: not a tokenizer file")

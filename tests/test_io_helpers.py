"""The shared I/O helpers: tokenize_within (inputs.py)."""

from __future__ import annotations

from mabert_hw.inputs import tokenize, tokenize_within


# --- tokenize_within -----------------------------------------------------------------------------------------

def test_tokenize_within_cuts_only_a_batch_wider_than_the_limit(minilm):
    texts = ["Short one.", "The quick brown fox jumps over the lazy dog, and then over the lazy dog again."]
    whole = tokenize(minilm.tokenizer_dir, texts)
    assert tokenize_within(minilm.tokenizer_dir, texts, whole.shape[1]).input_ids.tolist() == whole.input_ids.tolist()
    cut = tokenize_within(minilm.tokenizer_dir, texts, 8)
    assert cut.shape == (2, 8) and cut.input_ids.tolist() == tokenize(minilm.tokenizer_dir, texts, 8).input_ids.tolist()
    assert tokenize_within(minilm.tokenizer_dir, texts, 64, 32).shape == (2, 32)  # a fixed length within the limit

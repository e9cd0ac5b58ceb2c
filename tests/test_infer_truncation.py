"""`infer` on inputs the other infer tests miss, checked against independent implementations (HF's own
BertTokenizer, the torch MA-BERT module)."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import BertTokenizer

from mabert_hw.cli import main
from mabert_hw.spec import VARIANTS, ModelSpec
from mabert_hw.torch_ref.export import save_ma_dir
from mabert_hw.torch_ref.ma_bert import MABertModel

from .tolerances import FOLDED_VS_UNFOLDED_ATOL

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "movie", "very", "long", "one"]
N = 8  # the approximator's n inputs, far below the model's positions


def test_infer_truncates_long_texts_to_the_ma_approximator_input(tmp_path, capsys):
    """A text longer than MA-BERT's n = 8 inputs (but within the 64 positions) is truncated to n tokens,
    as `eval` does, instead of refused with advice to truncate that infer gives no way to follow."""
    spec = ModelSpec("tiny-ma", vocab_size=len(WORDS), hidden=24, layers=2, heads=3, intermediate=40,
                     max_positions=64).with_variant(**{**VARIANTS["ma"].__dict__, "softmax_input": N,
                                                       "softmax_hidden": 6})
    torch.manual_seed(0)
    model = MABertModel(spec).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    save_ma_dir(model, tmp_path / "ma", tmp_path)
    text = "a very very long good movie , a very long bad one"
    assert main(["infer", str(tmp_path / "ma"), "--text", text, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "truncated to the model's 8 tokens" in err
    encoded = BertTokenizer(str(tmp_path / "vocab.txt"))([text], truncation=True, max_length=N, return_tensors="pt")
    with torch.no_grad():
        hidden = model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])["hidden_states"][-1]
    expected = hidden.mean(dim=1)[0].numpy()  # no padding: the mean over all N tokens
    # the folded float32 engine vs the unfolded torch module (printed to 5 and 6 decimals)
    record = json.loads(out)[0]
    np.testing.assert_allclose(record["first_values"], expected[:4], atol=FOLDED_VS_UNFOLDED_ATOL, rtol=0)
    np.testing.assert_allclose(record["norm"], np.linalg.norm(expected), atol=FOLDED_VS_UNFOLDED_ATOL, rtol=0)

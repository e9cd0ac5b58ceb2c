"""`check`, `infer` and the input path against HF's own loading: from_pretrained on the checkpoint
directory, HF's BertTokenizer on its vocab.txt, HF's classifier logits. Every checkpoint here is written
by transformers itself (save_pretrained of a BertConfig), never by our hf_config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification,
                          BertModel, BertTokenizer)

from mabert_hw.backends import make_backend
from mabert_hw.errors import UserError
from mabert_hw.inputs import tokenize
from mabert_hw.model import forward
from mabert_hw.weights import random_weights

from .conftest import TINY_SPECS
from .helpers import run_cli
from .tolerances import INFER_ATOL, REFERENCE_VS_TORCH_ATOL

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "Hello", "world", "World", "héllo", "wörld",
         "wo", "##rld", "good", "bad", "movie", "你", "好", "你好", "the", "a"]
TEXTS = ["Hello World", "héllo Wörld good", "你好 world the", "a bad movie", "Hello hello HELLO"]


def tiny_config(**changes) -> BertConfig:
    """A BertConfig written by transformers, not by our hf_config; eager attention, no dropout."""
    options = dict(vocab_size=len(WORDS), hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                   intermediate_size=40, max_position_embeddings=32, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertConfig(**(options | changes))


def save_model(model_class, directory, vocab: bool = True, **config_changes):
    """A seeded model with weights large enough (std 0.2; LayerNorms left at 1, 0) that its outputs differ
    clearly between texts."""
    torch.manual_seed(0)
    model = model_class(tiny_config(**config_changes))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    if vocab:
        (directory / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return model


@torch.no_grad()
def hf_logits(directory, texts) -> np.ndarray:
    """HF end to end: its tokenizer on the directory's vocab.txt, its from_pretrained model."""
    encoded = BertTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="pt")
    model = BertForSequenceClassification.from_pretrained(directory, attn_implementation="eager").eval()
    return model(**encoded).logits.numpy()


def infer_json(capsys, directory, texts) -> list[dict]:
    code, out, err = run_cli(capsys, "infer", directory, *[a for t in texts for a in ("--text", t)],
                             "--format", "json")
    assert code == 0, err
    return json.loads(out)


# `check` loads a checkpoint directory with transformers' from_pretrained.

CHECKPOINTS = [
    (BertModel, {"hidden_act": "relu", "layer_norm_eps": 1e-5, "type_vocab_size": 3}),
    (BertForMaskedLM, {"layer_norm_eps": 1e-7}),
    (BertForPreTraining, {"type_vocab_size": 1}),
    (BertForSequenceClassification, {"num_labels": 3, "hidden_act": "relu"}),
]


@pytest.mark.parametrize("model_class,changes", CHECKPOINTS, ids=lambda v: getattr(v, "__name__", ""))
def test_check_agrees_with_transformers_loading(tmp_path, capsys, model_class, changes):
    save_model(model_class, tmp_path, vocab=False, **changes)
    code, out, err = run_cli(capsys, "check", tmp_path, "--batch", "3", "--seq-len", "9")
    assert code == 0 and "OK" in out, out + err
    assert f"from_pretrained({tmp_path})" in out and "Traceback" not in err


def test_decoder_configs_are_refused(tmp_path, capsys):
    """is_decoder makes HF apply a causal mask, which the reference does not (before: check said OK)."""
    save_model(BertModel, tmp_path, vocab=False, is_decoder=True)
    code, out, err = run_cli(capsys, "check", tmp_path, "--batch", "2", "--seq-len", "8")
    assert code == 2 and err == "mabert-hw: error: config sets is_decoder: BERT decoders are not supported " \
        "(encoders only)\n"


def test_check_refuses_a_checkpoint_transformers_cannot_read_whole(tmp_path, capsys):
    """A training checkpoint ({"state_dict": ..., "epoch": ...}) loads here, but from_pretrained would run
    random weights in its place: no independent side, so a one-line error instead of a FAIL."""
    model = save_model(BertModel, tmp_path, vocab=False)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "pytorch_model.bin")
    code, out, err = run_cli(capsys, "check", tmp_path, "--batch", "2", "--seq-len", "8")
    assert code == 2 and "from_pretrained leaves" in err and "uninitialised" in err and err.count("\n") == 1


# float64 on both sides, so long padded inputs pass and the tolerance stays tight.

def test_check_minilm_long_padded_input(minilm, tmp_path, capsys):
    """A short text padded to 512 tokens: float32 HF alone is 2.1e-4 from float64 on its padding rows, which
    failed the old float32 atol of 1e-4; in float64 both sides agree to ~1e-13."""
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world\n")
    code, out, _ = run_cli(capsys, "check", "minilm", "--texts", texts, "--seq-len", "512", "--batch", "1")
    assert code == 0 and "OK" in out and "atol 1e-09" in out


def test_check_texts_from_a_header_only_tsv_names_the_file(minilm, tmp_path, capsys):
    """Was "no texts to tokenise", naming no file."""
    data = tmp_path / "header-only.tsv"
    data.write_text("sentence\tlabel\n")
    code, _, err = run_cli(capsys, "check", "minilm", "--texts", data)
    assert code == 2 and err == f"mabert-hw: error: {data} holds no text under its header\n"


# `infer` reads a classifier's logits as its problem_type says, compared with HF's logits.

def test_infer_regression_prints_raw_scores(tmp_path, capsys):
    save_model(BertForSequenceClassification, tmp_path, num_labels=1)
    records = infer_json(capsys, tmp_path, TEXTS)
    expected = hf_logits(tmp_path, TEXTS)
    assert all("probabilities" not in r for r in records)
    np.testing.assert_allclose([r["scores"] for r in records], expected, atol=INFER_ATOL, rtol=0)
    assert np.ptp(expected) > 0.1  # the texts get clearly different scores: no constant passes


NAMES = {0: "negative", 1: "neutral", 2: "positive"}


def test_infer_multi_label_prints_sigmoids(tmp_path, capsys):
    """The labels printed are id2label's names of the outputs whose HF sigmoid exceeds one half (the test took
    the expected names from infer's own label_ids, and passed as well with no sigmoid above one half)."""
    model = save_model(BertForSequenceClassification, tmp_path, num_labels=3, problem_type="multi_label_classification",
                       id2label=NAMES, label2id={v: k for k, v in NAMES.items()})
    with torch.no_grad():  # seeded logits -0.8 to 0.1: label 0 above one half for every text, 2 for none
        model.classifier.bias += torch.tensor([1.0, 0.0, -1.0])
    model.save_pretrained(tmp_path)
    records = infer_json(capsys, tmp_path, TEXTS)
    expected = torch.sigmoid(torch.from_numpy(hf_logits(tmp_path, TEXTS))).numpy()
    np.testing.assert_allclose([r["probabilities"] for r in records], expected, atol=INFER_ATOL, rtol=0)
    above = expected > 0.5
    assert above.any(axis=1).all() and not above.all(axis=1).any()  # every text: some labels, not all
    assert len({tuple(row) for row in above}) > 1  # the texts get different labels: no constant passes
    assert np.abs(expected - 0.5).min() > 100 * INFER_ATOL  # none so near one half that rounding decides
    id2label = json.loads((tmp_path / "config.json").read_text())["id2label"]
    assert [r["labels"] for r in records] == [[id2label[str(i)] for i in np.flatnonzero(row)] for row in above]
    assert [r["label_ids"] for r in records] == [np.flatnonzero(row).tolist() for row in above]
    assert np.abs(expected.sum(axis=1) - 1.0).max() > 0.1  # sigmoids, not a softmax


def test_infer_names_the_label_by_id2label(tmp_path, capsys):
    """The label was its output index alone (`label 0`), whatever config.json's id2label called it."""
    save_model(BertForSequenceClassification, tmp_path, num_labels=3, id2label=NAMES,
               label2id={v: k for k, v in NAMES.items()})
    records = infer_json(capsys, tmp_path, TEXTS)
    expected = hf_logits(tmp_path, TEXTS).argmax(axis=1).tolist()
    assert [(r["label"], r["label_id"]) for r in records] == [(NAMES[i], i) for i in expected]
    assert len(set(expected)) > 1  # the texts get different labels: no constant passes
    code, out, _ = run_cli(capsys, "infer", tmp_path, *[a for t in TEXTS for a in ("--text", t)])
    assert code == 0 and [line.split()[-2:] for line in out.splitlines()[2:]] == [[NAMES[i], str(i)] for i in expected]


def test_multi_label_records_name_the_labels_above_one_half():
    from mabert_hw.cli.infer import classifier_records

    logits = np.array([[2.0, -2.0, 1.0], [-1.0, -1.0, -1.0]])
    records = classifier_records(["a", "b"], logits, "multi_label_classification", ["x", "y", "z"])
    assert [(r["labels"], r["label_ids"]) for r in records] == [(["x", "z"], [0, 2]), ([], [])]


def test_id2label_without_a_label_for_an_output_is_one_line():
    from mabert_hw.cli.infer import label_names

    assert label_names({}, 2) == ["LABEL_0", "LABEL_1"]
    with pytest.raises(UserError, match="config 'id2label' names no label for output 1"):
        label_names({"id2label": {"0": "a", "2": "c"}}, 2)
    with pytest.raises(UserError, match="config 'id2label' must map output indices to labels"):
        label_names({"id2label": {"first": "a"}}, 1)


def test_infer_explicit_regression_with_several_outputs(tmp_path, capsys):
    save_model(BertForSequenceClassification, tmp_path, num_labels=2, problem_type="regression")
    records = infer_json(capsys, tmp_path, TEXTS[:2])
    np.testing.assert_allclose([r["scores"] for r in records], hf_logits(tmp_path, TEXTS[:2]),
                               atol=INFER_ATOL, rtol=0)


def test_infer_unknown_problem_type_is_one_line(tmp_path, capsys):
    save_model(BertForSequenceClassification, tmp_path, num_labels=2)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"problem_type": "ranking"}))
    code, _, err = run_cli(capsys, "infer", tmp_path, "--text", "good movie")
    assert code == 2 and "unknown problem_type 'ranking'" in err and err.count("\n") == 1


# ids outside the embedding tables are refused, as HF refuses them.

@pytest.mark.parametrize("ids,types,message", [
    ([[2, 97, 3]], None, "token id 97 is outside the model's vocab_size"),
    ([[2, -1, 3]], None, "token id -1 is outside the model's vocab_size"),
    ([[2, 5, 3]], [[0, 2, 0]], "token type 2 is outside the model's type_vocab_size"),
    ([[2, 5, 3]], [[0, -1, 0]], "token type -1 is outside the model's type_vocab_size"),
], ids=["too-big", "negative", "type-too-big", "type-negative"])
def test_forward_refuses_ids_outside_the_tables(ids, types, message):
    spec = TINY_SPECS[0]  # vocab 97, 2 token types
    weights = random_weights(spec, seed=1)
    ids = np.array(ids, np.int64)
    types = None if types is None else np.array(types, np.int64)
    with pytest.raises(UserError, match=message):
        forward(spec, weights, ids, make_backend("reference"), None, types)
    model = BertModel(BertConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=1,
                                 num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                                 max_position_embeddings=spec.max_positions)).eval()
    with pytest.raises(IndexError):  # HF refuses the same input
        model(input_ids=torch.from_numpy(ids), token_type_ids=None if types is None else torch.from_numpy(types))


def test_forward_accepts_the_last_ids():
    """The last row of each table is used, and is the right row: the output is HF's on the same weights."""
    from mabert_hw.inputs import Batch
    from mabert_hw.torch_ref.hf import hf_forward, hf_model

    spec = TINY_SPECS[1]  # vocab 50, 3 token types
    weights = random_weights(spec, seed=1, std=0.2)  # rows far enough apart that a neighbouring row shows
    ids = np.array([[0, spec.vocab_size - 1, spec.vocab_size - 2], [spec.vocab_size - 1, 1, 0]], np.int64)
    types = np.array([[0, spec.type_vocab_size - 1, spec.type_vocab_size - 2], [spec.type_vocab_size - 1, 0, 1]],
                     np.int64)
    ours = forward(spec, weights, ids, make_backend("reference"), None, types)
    with torch.no_grad():
        theirs = hf_forward(hf_model(spec, weights), Batch(ids, np.ones_like(ids), types))
    assert np.abs(ours.last_hidden_state - theirs["hidden_states"][-1]).max() <= REFERENCE_VS_TORCH_ATOL
    assert np.abs(ours.hidden_states[0] - theirs["hidden_states"][0]).max() <= REFERENCE_VS_TORCH_ATOL


@pytest.mark.parametrize("command", ["infer", "check"])
def test_tokenizer_bigger_than_the_model_is_one_line(tmp_path, capsys, command):
    save_model(BertModel, tmp_path, vocab_size=8)
    argv = ["--text", "good movie"] if command == "infer" else ["--seq-len", "6"]
    code, _, err = run_cli(capsys, command, tmp_path, *argv)
    assert code == 2 and "is outside the model's vocab_size (ids 0..7)" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# a vocab.txt tokenizer normalises as HF's BertTokenizer does.

TOKENIZER_CONFIGS = [
    None,
    {"do_lower_case": False},
    {"do_lower_case": True, "strip_accents": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": False, "tokenize_chinese_chars": False},
]


@pytest.mark.parametrize("config", TOKENIZER_CONFIGS, ids=lambda c: json.dumps(c))
def test_vocab_txt_tokenizer_matches_bert_tokenizer(tmp_path, config):
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "BertTokenizer"}))
    ours = tokenize(tmp_path, TEXTS)
    theirs = BertTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])


def test_do_lower_case_in_config_json_is_ignored_as_hf_ignores_it(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tiny_config().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"do_lower_case": False}))
    theirs = BertTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(tokenize(tmp_path, TEXTS).input_ids, theirs["input_ids"])


def test_bad_tokenizer_config_value_is_a_user_error(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "no"}))
    with pytest.raises(UserError, match="do_lower_case must be true or false, got 'no'"):
        tokenize(tmp_path, TEXTS)


def test_reference_logits_match_hf_on_tokenised_text(tmp_path):
    """The whole infer path below the CLI (our tokenizer, loader and forward) against HF's, unrounded."""
    from mabert_hw import checkpoint

    save_model(BertForSequenceClassification, tmp_path, num_labels=2)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ck = checkpoint.load(tmp_path)
    batch = tokenize(ck.tokenizer_dir, TEXTS)
    ours = forward(ck.spec, ck.weights, batch.input_ids, make_backend("reference"), batch.attention_mask,
                   batch.token_type_ids)
    np.testing.assert_allclose(ours.logits, hf_logits(tmp_path, TEXTS), atol=REFERENCE_VS_TORCH_ATOL, rtol=0)


def test_check_compares_the_pooler_of_a_pretraining_checkpoint(tmp_path, capsys):
    """bert-base-uncased's layout: pre-training weights (pooler included) under a config that names
    BertForMaskedLM. The reference computes the pooler, so the HF side must have it too, not the
    pooler-less body of the masked-LM class."""
    save_model(BertForPreTraining, tmp_path, vocab=False)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    code, out, err = run_cli(capsys, "check", tmp_path, "--batch", "2", "--seq-len", "8")
    assert code == 0 and any(line.split()[:1] == ["pooler"] for line in out.splitlines()), out + err


def test_infer_pooling_on_a_classifier_is_refused_in_one_line(tmp_path, capsys):
    from transformers import BertForSequenceClassification

    save_model(BertForSequenceClassification, tmp_path, num_labels=3)
    capsys.readouterr()  # transformers' "Writing model shards" bar
    code, out, err = run_cli(capsys, "infer", tmp_path, "--text", TEXTS[0], "--pooling", "cls")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--pooling" in err and "classifier" in err

"""`mabert-hw eval` (and `power-search --out`) on a tiny random classifier and an untrained MA conversion:
the row records batch size and padding, texts are cut to what the model takes (positions, the approximator's
n), and --retention CONFIG.json pads to the length the search used."""

from __future__ import annotations

import json

import pytest

from mabert_hw import checkpoint
from mabert_hw.cli import main
from mabert_hw.eval.tasks import length_batches
from mabert_hw.power_search import encode

from .conftest import TINY_TEACHER
from .helpers import LONG_TEXT
from .test_cli_inputs_eval import STSB_HEADER


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\nlovely \t1\n"
                    "it never finds its footing \t0\nwarm , witty and wise \t1\n")
    return str(path)


def eval_row(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


# batch size and padding rule are part of an (MA) eval result

def test_eval_row_records_batch_size_and_padding(classifier, sst2_file, capsys):
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--batch-size", "2")
    assert (row["batch_size"], row["padding"]) == (2, "batch-longest")
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--seq-len", "12")
    assert (row["batch_size"], row["padding"]) == (32, "fixed-12")


def test_eval_help_says_ma_results_depend_on_padding(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MA-BERT results depend on padding" in text and "--batch-size" in text


# texts are cut to min(128, positions, the approximator's n)

def test_dynamic_batches_are_cut_to_the_approximator_input(ma_narrow):
    ck = checkpoint.load(ma_narrow)
    texts = [LONG_TEXT, "short"]
    assert max(b.shape[1] for _, b in length_batches(ck, texts)) == 16
    assert max(b.shape[1] for _, b in encode(ck, texts, None)) == 16
    assert max(b.shape[1] for _, b in encode(ck, texts, 48)) == 48  # a fixed length is the user's choice


def test_dynamic_batches_are_cut_to_the_positions(teacher_dir):
    ck = checkpoint.load(teacher_dir)
    assert max(b.shape[1] for _, b in length_batches(ck, [LONG_TEXT])) == TINY_TEACHER.max_positions


def test_eval_stsb_on_an_approximator_narrower_than_128(ma_narrow, tmp_path, capsys):
    """The Spearman is torch's: the MA module on HF's tokenizer cutting every text to n = 16 tokens, all texts in
    one batch padded to the longest (16, as eval's one batch of 16 texts), mean pooling over the real tokens."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    from scipy.stats import spearmanr
    from transformers import BertTokenizer

    from mabert_hw.torch_ref.ma_bert import load_official

    data = tmp_path / "stsb.tsv"
    rows = [("a man plays a guitar", LONG_TEXT, "1.0"), ("a dog runs", "a dog is running", "4.5"),
            ("the sky is blue", "stocks fell sharply today", "0.2"),
            ("a woman slices an onion", "a man cuts a leek", "2.6"),
            ("two cats sleep on a sofa", "a cat is sleeping", "3.1"),
            ("the market rallied", "the stock market rose", "4.0"),
            ("a child reads a book", "rain fell all day in the valley below the hills", "0.5"),
            ("a plane is taking off", "an airplane takes off from the runway", "4.8")]  # 8 pairs: 3 rank little
    data.write_text(STSB_HEADER + "".join(f"0\tmain\tf\t2012\t1\tnone\tnone\t{a}\t{b}\t{s}\n" for a, b, s in rows))
    row = eval_row(capsys, ma_narrow, "--task", "stsb", "--data", data)
    assert row["examples"] == len(rows) and row["padding"] == "batch-longest"

    first, second, gold = [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]
    tokenizer = BertTokenizer.from_pretrained(ma_narrow)  # on the checkpoint's vocab.txt
    encoded = tokenizer(first + second, truncation=True, max_length=16, padding="longest", return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 16  # LONG_TEXT is cut to the approximator's n
    model = load_official(checkpoint.load(ma_narrow).spec, load_file(str(ma_narrow / "model.safetensors")))
    with torch.no_grad():
        hidden = model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])["hidden_states"][-1]
    real = encoded["attention_mask"][..., None].to(hidden.dtype)
    vectors = ((hidden * real).sum(1) / real.sum(1)).double().numpy()
    n = len(rows)
    norms = np.linalg.norm(vectors, axis=1)
    cosines = (vectors[:n] * vectors[n:]).sum(1) / (norms[:n] * norms[n:])
    assert np.diff(np.sort(cosines)).min() > 1e-5  # ranks that float32 rounding (~1e-7 here) cannot swap
    theirs = 100.0 * spearmanr(cosines, gold).statistic
    assert row["spearman"] == round(theirs, 2)


def test_eval_retention_config_defaults_to_its_searched_length(classifier, sst2_file, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"retention": [6, 3], "seq_len": 8}))
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--retention", config)
    assert (row["seq_len"], row["padding"], row["retention"]) == (8, "fixed-8", "6,3")
    row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--retention", config, "--seq-len", "12")
    assert row["seq_len"] == 12


def test_eval_refuses_a_schedule_that_eliminates_nothing(classifier, sst2_file, capsys):
    """Without --seq-len each batch is padded to its longest text, cut to 64 tokens (the model's positions),
    and a layer acts only where it keeps fewer tokens than are present: 100,100 was accepted and reported
    beside a result it never changed. A schedule that cuts at some layer still runs."""
    assert main(["eval", str(classifier), "--task", "sst2", "--data", sst2_file, "--retention", "100,64"]) == 2
    err = capsys.readouterr().err
    assert "retention 100,64 keeps at least 64 tokens at every layer, and texts are cut to 64 here" in err
    plain = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file)
    for schedule in ("100,2", "64,1"):
        row = eval_row(capsys, classifier, "--task", "sst2", "--data", sst2_file, "--retention", schedule)
        assert row["retention"] == schedule and row["examples"] == plain["examples"]


def test_power_search_out_is_checked_before_the_search(classifier, sst2_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["power-search", str(classifier), "--task", "sst2", "--data", sst2_file, "--method", "geometric",
              "--seq-len", "16", "--out", str(tmp_path / "missing" / "c.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "schedules scored" not in err


def test_eval_help_says_seq_len_is_sst2_only(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--seq-len SEQ_LEN SST-2 only (STS-B pads each batch to its longest)" in " ".join(
        capsys.readouterr().out.split())


def test_eval_warns_when_a_retention_config_was_searched_elsewhere(classifier, sst2_file, tmp_path, capsys):
    """A schedule searched on another checkpoint, task or length was applied without a word."""
    digest = checkpoint.load(classifier).hasher().hexdigest()
    config = tmp_path / "config.json"

    def warnings(searched: dict, *argv) -> list[str]:
        config.write_text(json.dumps({"checkpoint": "ckpt", "task": "sst2", "seq_len": 8, "retention": [6, 3],
                                      "scores_depend_on": {"model": digest}, **searched}))
        assert main(["eval", str(classifier), "--retention", str(config), *map(str, argv)]) == 0
        return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]

    sst2 = ["--task", "sst2", "--data", sst2_file]
    assert warnings({}, *sst2) == []
    assert warnings({}, *sst2, "--seq-len", 12) == [
        f"mabert-hw: warning: {config} was searched at --seq-len 8, this run pads to 12"]
    assert warnings({"checkpoint": "other", "scores_depend_on": {"model": "0123456789abcdef"}}, *sst2) == [
        f"mabert-hw: warning: {config} was searched on another model (other, digest 0123456789abcdef), not "
        f"{classifier}"]
    assert warnings({"scores_depend_on": {"model": digest, "engine": "reference"}}, *sst2, "--engine", "fast") == [
        f"mabert-hw: warning: {config} was searched on the reference engine, this run uses fast"]
    assert warnings({"scores_depend_on": {"model": digest, "engine": "fast"}}, *sst2, "--engine", "fast") == []
    stsb = tmp_path / "stsb.tsv"
    stsb.write_text(STSB_HEADER + "".join(f"0\tmain\tf\t2012\t1\tnone\tnone\t{a}\t{b}\t{s}\n" for a, b, s in [
        ("a man plays a guitar", "a man sings", "1.0"), ("a dog runs", "a dog is running", "4.5"),
        ("the sky is blue", "stocks fell sharply today", "0.2")]))
    assert warnings({}, "--task", "stsb", "--data", stsb) == [
        f"mabert-hw: warning: {config} was searched on sst2, this run evaluates stsb",
        f"mabert-hw: warning: {config} was searched at --seq-len 8, this run pads each batch to its longest text"]

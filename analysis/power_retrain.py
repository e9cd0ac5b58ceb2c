"""Retrain the SST-2 classifier under fixed PoWER-BERT schedules (hard extract, as the paper's last
step does), then score each on the full dev set with the fast engine -> reports/power_bert/retrain.json.

Training-free schedules that remove many tokens lose accuracy (reports/power_bert/README.md); the
paper fine-tunes the model with the chosen schedule before measuring. So that the extra training
itself is not counted as a PoWER gain, the baseline gets the same: first the classifier is trained on
without elimination for --steps (the new baseline), then each schedule's model is trained from that
baseline for --steps with the schedule's hard extract in the forward. Training: AdamW (--lr, default 2e-5) on
sentence-like SST-2 training texts that the first fine-tuning did not see, every input padded to
N = 64. Weights go to ~/.cache/mabert-hw/power-retrained/<name>.npz, the name a schedule (or "baseline")
and a digest of the starting model (weights, spec, tokenizer files), data and training settings (what is
there is not retrained).

    OPENBLAS_NUM_THREADS=1 python analysis/power_retrain.py 38,23,14,8,5,3 36,20,20,15,11,1 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from power_sst2 import BERT_LR, ROOT, training_stream
from tqdm import tqdm

from mabert_hw import checkpoint
from mabert_hw.atomic import write_text_whole
from mabert_hw.backends import make_backend
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.cli.common import output_file, positive_float, positive_int, run_script
from mabert_hw.eval.tasks import accuracy, load_sst2
from mabert_hw.inputs import DATA_DIR
from mabert_hw.power import parse_retention
from mabert_hw.power_search import encode, predict, subset_flops
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.torch_ref.power_bert import PowerBert, train

CACHE = CACHE_ROOT / "power-retrained"


def cache_name(ck, retention, args) -> str:
    """The cache file stem of ck trained on with `retention`: the schedule (or "baseline"), then a digest of
    all the training depends on, so that another checkpoint, data or settings are trained, not read back
    from another run's file. A schedule starts from the retrained baseline: its weights carry the chain."""
    digest = ck.hasher()  # the weights, spec and tokenizer files
    digest.update(repr((str(args.data.resolve()), args.steps, args.lr, args.batch, args.seq_len)).encode())
    return f"{'baseline' if retention is None else '-'.join(map(str, retention))}-{digest.hexdigest()}"


def retrained(ck, retention, args, classifier) -> tuple[checkpoint.Checkpoint, dict]:
    """ck trained on with `retention` (None: no elimination), from the cache when done, and its record; the
    training texts are those the fine-tuning of `classifier` did not see (its metrics.json says which)."""
    name = cache_name(ck, retention, args)
    weights_file, record_file = CACHE / f"{name}.npz", CACHE / f"{name}.json"
    if not record_file.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        keep_all = (args.seq_len,) * ck.spec.layers  # hard extract that keeps every token: no elimination
        model = PowerBert(hf_model(ck.spec, ck.weights), retention or keep_all, mode="hard")
        started = time.perf_counter()
        losses = train(model, training_stream(args.data, classifier, args.seq_len, args.batch), args.steps, lr=args.lr,
                       progress=lambda r: tqdm(r, desc=f"retrain {name}"))
        state = {k: v.detach().numpy() for k, v in model.hf.state_dict().items()}
        np.savez(weights_file, **checkpoint.check_weights(ck.spec, checkpoint.strip_prefixes(state)))
        write_text_whole(record_file, json.dumps({"steps": args.steps, "batch": args.batch, "lr": args.lr,
                                           "seconds": time.perf_counter() - started, "losses": losses}))
    with np.load(weights_file) as stored:
        weights = checkpoint.check_weights(ck.spec, dict(stored))
    return checkpoint.Checkpoint(ck.spec, weights, f"{ck.source} (retrained {name})", ck.tokenizer_dir), \
        json.loads(record_file.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("schedules", nargs="+", help="retention configurations, L1,..,LL")
    parser.add_argument("--ckpt", default=str(CACHE_ROOT / "minilm-sst2"))
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--lr", type=positive_float, default=BERT_LR)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--seq-len", type=positive_int, default=64)
    parser.add_argument("--out", type=output_file, default=str(ROOT / "reports" / "power_bert" / "retrain.json"))
    return run_script(parser, run, argv)


def run(args) -> int:
    torch.set_num_threads(args.threads)
    ck = checkpoint.load(args.ckpt)
    schedules = [parse_retention(text, ck.spec.layers, args.seq_len) for text in args.schedules]  # before training
    backend = make_backend("fast", threads=args.threads)
    dev = load_sst2(args.data)
    full = encode(ck, dev.sentences, args.seq_len)

    def dev_accuracy(model_ck, retention) -> float:
        return accuracy(predict(model_ck, retention, full, backend), dev.labels)

    original = dev_accuracy(ck, None)
    base_ck, base_record = retrained(ck, None, args, ck)
    baseline = dev_accuracy(base_ck, None)
    print(f"SST-2 dev: fine-tuned classifier {original:.2f}, trained on for {base_record['steps']} steps {baseline:.2f}")
    rows = []
    for retention in schedules:
        model_ck, record = retrained(base_ck, retention, args, ck)
        rows.append({"retention": list(retention), "dev_accuracy_before": dev_accuracy(base_ck, retention),
                     "dev_accuracy_retrained": dev_accuracy(model_ck, retention),
                     "flops_ratio": subset_flops(ck, None, full) / subset_flops(ck, retention, full),
                     "steps": record["steps"], "batch": record["batch"], "train_seconds": record["seconds"]})
        print(json.dumps(rows[-1]))
    result = {"classifier_dev_accuracy": original, "baseline_dev_accuracy": baseline,
              "baseline_training": {k: base_record[k] for k in ("steps", "batch", "lr", "seconds")},
              "seq_len": args.seq_len, "threads": args.threads,
              "load_average_1min_at_end": os.getloadavg()[0], "rows": rows}
    write_text_whole(args.out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune all-MiniLM-L6-v2 as a BertForSequenceClassification on SST-2, on CPU, within a budget.

Writes a plain HF directory (config.json, model.safetensors, tokenizer files) that `mabert-hw` loads
like any checkpoint, to ~/.cache/mabert-hw/minilm-sst2/ (outside the repo, never committed), plus
train_state.pt (optimizer, step, elapsed time) so an interrupted run resumes where it stopped, and
metrics.json (SST-2 dev accuracy measured in torch at the end).

Budget: one pass over the first --train-limit shuffled training phrases (default: all 67,349, one
epoch), batches of --batch padded to their longest member (at most --max-len tokens), AdamW with
linear warm-up/decay, word embeddings frozen (they are most of the parameters and the optimizer's
time), --threads CPU threads. Training stops early, saving, once --budget-min minutes of compute are
spent. One epoch on 2 threads of a quiet 2-core AVX-512 machine: 24 min, SST-2 dev 88.65%.

    nohup python analysis/finetune_sst2.py --threads 2 > ~/.cache/mabert-hw/finetune_sst2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

from mabert_hw.atomic import atomic_path, write_text_whole
from mabert_hw.cache import CACHE_ROOT
from mabert_hw.checkpoint import minilm_dir
from mabert_hw.cli.common import non_negative_float, positive_float, positive_int, run_script
from mabert_hw.eval.tasks import load_sst2
from mabert_hw.inputs import DATA_DIR
from mabert_hw.interrupts import stopped_status

DEFAULT_OUT = CACHE_ROOT / "minilm-sst2"
TRAIN_PHRASES = 67349  # SST-2 train.tsv (GLUE): labelled phrases
STATE_FILE = "train_state.pt"
WEIGHT_DECAY = 0.01  # AdamW, google-research/bert's fine-tuning weight_decay_rate (optimization.py), as in
# mabert_hw.torch_ref.train.TrainConfig
DEV_BATCH = 64  # dev sentences per forward when scoring: chosen, not tuned (sets the speed, not the scores)
# dev is scored at this many times the training --max-len, so that a short training cut does not cut dev
# sentences too: chosen, not tuned (at the default 64 nothing is cut: SST-2 dev's longest text is 55 tokens)
DEV_LEN_FACTOR = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="data root holding glue/SST-2/{train,dev}.tsv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model folder (default {DEFAULT_OUT})")
    parser.add_argument("--train-limit", type=positive_int, default=TRAIN_PHRASES,
                        help=f"training phrases used (default: all {TRAIN_PHRASES})")
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--max-len", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=1e-4)
    parser.add_argument("--warmup", type=fraction, default=0.06, help="fraction of steps (0 to 1)")
    parser.add_argument("--budget-min", type=positive_float, default=40.0, help="compute minutes before stopping")
    parser.add_argument("--save-every", type=positive_int, default=200, help="steps between checkpoints")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return value


def batches(tokenizer, sentences: list[str], labels: np.ndarray, order: np.ndarray, batch: int, max_len: int):
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        encoded = tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt")
        yield encoded, torch.as_tensor(labels[idx])


def save(model, tokenizer, optimizer, scheduler, out: Path, step: int, elapsed: float) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with atomic_path(out / STATE_FILE) as temporary:  # a Ctrl-C during the save keeps the previous state whole
        torch.save({"step": step, "elapsed": elapsed, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()}, temporary)


@torch.no_grad()
def dev_accuracy(model, tokenizer, task, max_len: int) -> float:
    model.eval()
    order = np.arange(len(task.sentences))
    correct = 0
    for encoded, labels in batches(tokenizer, task.sentences, task.labels, order, DEV_BATCH, max_len * DEV_LEN_FACTOR):
        correct += int((model(**encoded).logits.argmax(-1) == labels).sum())
    return 100.0 * correct / len(task.sentences)


def main(argv: list[str] | None = None) -> int:
    return run_script(make_parser(), run, argv)


def run(args) -> int:
    train = load_sst2(args.data / "glue/SST-2/train.tsv")  # both files before any work or folder
    dev = load_sst2(args.data / "glue/SST-2/dev.tsv")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    resuming = (args.out / STATE_FILE).exists()
    source = args.out if resuming else minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=2)

    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # 30522 x 384: most of the update cost
    order = np.random.default_rng(args.seed).permutation(len(train.sentences))[:args.train_limit]
    total_steps = -(-len(order) // args.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=WEIGHT_DECAY)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup * total_steps), total_steps)
    step, elapsed = 0, 0.0
    if resuming:
        state = torch.load(args.out / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed = state["step"], state["elapsed"]

    model.train()
    started = time.perf_counter() - elapsed
    progress = tqdm(total=total_steps, initial=step, desc="fine-tune SST-2", mininterval=10)
    stream = batches(tokenizer, train.sentences, train.labels, order[step * args.batch:], args.batch, args.max_len)
    try:
        for encoded, labels in stream:
            if elapsed > 60 * args.budget_min:  # before the step: a rerun of a finished run trains no more
                print(f"budget of {args.budget_min} min spent at step {step}/{total_steps}")
                break
            loss = model(**encoded, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            elapsed = time.perf_counter() - started
            if step % args.save_every == 0:
                save(model, tokenizer, optimizer, scheduler, args.out, step, elapsed)
    except KeyboardInterrupt as stop:  # the steps since the last save are kept: a rerun resumes from here
        save(model, tokenizer, optimizer, scheduler, args.out, step, elapsed)
        print(f"interrupted at step {step}/{total_steps}; saved to {args.out}: run again to resume", file=sys.stderr)
        return stopped_status(stop)
    finally:
        progress.close()
    save(model, tokenizer, optimizer, scheduler, args.out, step, elapsed)

    accuracy = dev_accuracy(model, tokenizer, dev, args.max_len)
    metrics = {"sst2_dev_accuracy": accuracy, "steps": step, "planned_steps": total_steps,
               "train_phrases_seen": min(step * args.batch, len(order)), "batch": args.batch,
               "max_len": args.max_len, "lr": args.lr, "train_minutes": elapsed / 60, "threads": args.threads,
               "seed": args.seed}  # the shuffle whose first train_phrases_seen phrases it trained on (power_sst2.py)
    write_text_whole(args.out / "metrics.json", json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

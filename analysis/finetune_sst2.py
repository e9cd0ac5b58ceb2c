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
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

from mabert_hw.cache import CACHE_ROOT
from mabert_hw.checkpoint import minilm_dir
from mabert_hw.eval.tasks import load_sst2
from mabert_hw.inputs import DATA_DIR

DEFAULT_OUT = CACHE_ROOT / "minilm-sst2"
STATE_FILE = "train_state.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-limit", type=int, default=67349, help="training phrases used (of 67349)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of steps")
    parser.add_argument("--budget-min", type=float, default=40.0, help="compute minutes before stopping")
    parser.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def batches(tokenizer, sentences: list[str], labels: np.ndarray, order: np.ndarray, batch: int, max_len: int):
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        encoded = tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt")
        yield encoded, torch.as_tensor(labels[idx])


def save(model, tokenizer, optimizer, scheduler, out: Path, step: int, elapsed: float) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    torch.save({"step": step, "elapsed": elapsed, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, out / STATE_FILE)


@torch.no_grad()
def dev_accuracy(model, tokenizer, data: Path, max_len: int) -> float:
    model.eval()
    task = load_sst2(data)
    order = np.arange(len(task.sentences))
    correct = 0
    for encoded, labels in batches(tokenizer, task.sentences, task.labels, order, 64, max_len * 2):
        correct += int((model(**encoded).logits.argmax(-1) == labels).sum())
    return 100.0 * correct / len(task.sentences)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    resuming = (args.out / STATE_FILE).exists()
    source = args.out if resuming else minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=2)

    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # 30522 x 384: most of the update cost
    train = load_sst2(args.data / "glue/SST-2/train.tsv")
    order = np.random.default_rng(args.seed).permutation(len(train.sentences))[:args.train_limit]
    total_steps = -(-len(order) // args.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
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
    for encoded, labels in stream:
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
        if elapsed > 60 * args.budget_min:
            print(f"budget of {args.budget_min} min spent at step {step}/{total_steps}")
            break
    progress.close()
    save(model, tokenizer, optimizer, scheduler, args.out, step, elapsed)

    accuracy = dev_accuracy(model, tokenizer, args.data, args.max_len)
    metrics = {"sst2_dev_accuracy": accuracy, "steps": step, "planned_steps": total_steps,
               "train_phrases_seen": min(step * args.batch, len(order)), "batch": args.batch,
               "max_len": args.max_len, "lr": args.lr, "train_minutes": elapsed / 60, "threads": args.threads}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

"""`mabert-hw convert`: baseline BERT -> MA-BERT (ReLU FFN, PowerNorm, softmax approximator), then
approximator pre-fit and knowledge transfer from the frozen baseline (torch_ref/train.py)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from .. import checkpoint
from ..errors import UserError
from ..spec import VARIANTS
from .common import add_checkpoint, positive_int

CACHE = Path.home() / ".cache" / "mabert-hw"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="make an MA-BERT from a baseline BERT by knowledge transfer (CPU-sized)",
        description="GELU -> ReLU, LayerNorm -> PowerNorm, softmax -> Linear(n->h)-ReLU-Linear(h->n); fit each "
        "approximator to the teacher's attention rows, then train the student against the frozen teacher "
        "(MA-BERT loss: t=15, alpha=0.9, beta=1, gamma=100) with AdamW and warm-up on text files. "
        "Writes a checkpoint directory that `mabert-hw` and torch_ref load; --resume continues a run.",
    )
    add_checkpoint(parser)
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--data", nargs="+", required=True,
                        help="text files: one text per line (WikiText .raw/.txt) or GLUE .tsv (sentence columns)")
    parser.add_argument("--softmax-input", type=positive_int, default=128, help="approximator n (default 128)")
    parser.add_argument("--softmax-hidden", type=positive_int, default=128, help="approximator h (default 128)")
    parser.add_argument("--share-softmax", action="store_true", help="one approximator for all layers")
    parser.add_argument("--only", choices=("relu", "powernorm", "approximator"),
                        help="single-technique ablation instead of the full MA conversion")
    parser.add_argument("--steps", type=int, default=1000, help="knowledge-transfer steps (default 1000; 0 = none)")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--max-len", type=positive_int, default=64, help="max tokens per text (default 64)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--prefit-steps", type=int, default=300, help="approximator pre-fit steps (0 = skip)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget of the knowledge transfer")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def read_corpus(paths: list[str]) -> list[str]:
    texts: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"no such data file: {name}")
        if path.suffix == ".tsv":
            with open(path, encoding="utf-8", newline="") as f:
                header, *rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            columns = [i for i, h in enumerate(header) if h in ("sentence", "sentence1", "sentence2")]
            if not columns:
                raise UserError(f"{name}: no sentence column in header {header[:4]}")
            texts += [r[i].strip() for r in rows for i in columns if i < len(r) and r[i].strip()]
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            texts += [s.strip() for s in lines if s.strip() and not s.strip().startswith("=")]
    if not texts:
        raise UserError("the data files hold no text")
    return texts


def target_variant(args):
    ma = replace(VARIANTS["ma"], softmax_input=args.softmax_input, softmax_hidden=args.softmax_hidden,
                 share_softmax=args.share_softmax)
    base = replace(ma, softmax="exact", ffn_activation="gelu", norm="layernorm", mask="additive")
    return {None: ma, "relu": replace(base, ffn_activation="relu"), "powernorm": replace(base, norm="powernorm"),
            "approximator": replace(base, softmax="mlp", mask="multiplicative")}[args.only]


def run(args) -> int:
    try:
        from tqdm import tqdm

        from ..torch_ref import train
        from ..torch_ref.export import save_ma_dir
    except ImportError as error:
        raise UserError(f"`convert` needs torch and tqdm ({error.name} is not installed)") from None
    ck = checkpoint.load(args.ckpt)
    weights = ck.require_weights("convert")
    if not ck.spec.variant.is_baseline:
        raise UserError(f"{ck.source} is not a baseline BERT (variant {ck.spec.variant.describe()})")
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt)")
    if args.max_len > args.softmax_input:
        raise UserError(f"--max-len {args.max_len} exceeds --softmax-input {args.softmax_input}")
    texts = read_corpus(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = train.TrainConfig(steps=args.steps, batch=args.batch, max_len=args.max_len, lr=args.lr,
                            prefit_steps=args.prefit_steps, checkpoint_every=args.checkpoint_every, seed=args.seed,
                            max_minutes=args.max_minutes)
    variant = target_variant(args)
    teacher = train.teacher_module(ck.spec, weights)
    student = train.student_module(ck.spec, weights, variant, args.seed)
    side = train.batches(ck.tokenizer_dir, texts, cfg.batch, cfg.max_len, args.seed + 1)
    report = {"teacher": args.ckpt, "texts": len(texts), "variant": variant.describe(), "config": cfg.__dict__}
    state_path = out / "train_state.pt"
    if args.resume and state_path.exists() and (out / "config.json").exists():  # keep the first stage's record
        earlier = json.loads((out / "config.json").read_text()).get("conversion", {})
        report.update({k: earlier[k] for k in ("prefit_mse",) if k in earlier})
    if not (args.resume and state_path.exists()):
        if variant.softmax == "mlp" and cfg.prefit_steps:
            losses = train.prefit_approximators(student, teacher, side, cfg, lambda r: tqdm(r, desc="pre-fit"))
            report["prefit_mse"] = losses
            print(f"approximator pre-fit MSE per approximator: {[f'{x:.2e}' for x in losses]}")
        train.calibrate_powernorm(student, side)
    if cfg.steps:
        stream = train.batches(ck.tokenizer_dir, texts, cfg.batch, cfg.max_len, args.seed)
        history = train.knowledge_transfer(student, teacher, stream, cfg, state_path, args.resume,
                                           lambda r, **kw: tqdm(r, desc="knowledge transfer", **kw), tqdm.write)
        report["final_loss"] = history[-1] if history else None
        (out / "history.json").write_text(json.dumps(history))
    save_ma_dir(student.eval(), out, ck.tokenizer_dir, {"conversion": report})
    print(f"wrote {out} ({variant.describe()})")
    return 0

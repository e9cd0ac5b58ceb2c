"""`mabert-hw convert`: baseline BERT -> MA-BERT (ReLU FFN, PowerNorm, softmax approximator), then
approximator pre-fit and knowledge transfer from the frozen baseline (torch_ref/train.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from .. import checkpoint
from ..errors import UserError
from ..inputs import SPECIAL_TOKENS, read_utf8, tsv_texts
from ..interrupts import signal_status, stopped_status
from ..spec import PRESETS, VARIANTS
from ..weights import weights_digest
from .common import (add_checkpoint, int_between, non_negative_float, non_negative_int, output_dir,
                     positive_float, positive_int, seed_int)
from .infer import checkpoint_config

SHAPING_FLAGS = ("--softmax-input", "--softmax-hidden", "--share-softmax", "--only")  # a resumed run must repeat them
# The teacher config's keys that say what the classifier head's outputs mean (`infer` reads problem_type:
# sigmoid per label or softmax over labels); the student keeps the head, so its config keeps them.
HEAD_KEYS = ("problem_type", "id2label", "label2id", "num_labels")


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
    parser.add_argument("--out", required=True, help="output checkpoint directory (created if missing)")
    parser.add_argument("--data", nargs="+", required=True,
                        help="text files: one text per line (WikiText .raw/.txt) or GLUE .tsv (sentence columns)")
    parser.add_argument("--softmax-input", type=positive_int, default=128, help="approximator n (default %(default)s)")
    parser.add_argument("--softmax-hidden", type=positive_int, default=128,
                        help="approximator h (default %(default)s)")
    parser.add_argument("--share-softmax", action="store_true", help="one approximator for all layers")
    parser.add_argument("--only", choices=("relu", "powernorm", "approximator"),
                        help="single-technique ablation instead of the full MA conversion")
    parser.add_argument("--steps", type=non_negative_int, default=1000,
                        help="knowledge-transfer steps (default %(default)s; 0 = none); with --resume, the "
                        "total including the steps the earlier run made (so not fewer than those)")
    parser.add_argument("--batch", type=positive_int, default=16, help="texts per batch (default %(default)s)")
    parser.add_argument("--max-len", type=int_between(SPECIAL_TOKENS, why="room for [CLS] and [SEP]"), default=64,
                        help="max tokens per text (default %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=1e-4,
                        help="peak AdamW learning rate of the knowledge transfer (default %(default)s)")
    parser.add_argument("--prefit-steps", type=non_negative_int, default=300,
                        help="approximator pre-fit steps (default %(default)s; 0 = skip)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=200,
                        help="save OUT/train_state.pt for --resume every this many knowledge-transfer steps "
                        "(default %(default)s), and when Ctrl-C or SIGTERM stops the run (after the step under way)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the knowledge transfer from OUT/train_state.pt: the flags that shape the model "
                        f"({', '.join(SHAPING_FLAGS)}) must match the first run's; the pre-fit and PowerNorm "
                        "calibration are skipped (the saved weights hold them) and the learning rate is the first "
                        "run's (a new --lr is ignored); without that file the run starts over")
    parser.add_argument("--max-minutes", type=non_negative_float,
                        help="wall-clock budget of the knowledge transfer: stop and save when it is spent")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default %(default)s)")
    parser.set_defaults(run=run)


def read_corpus(paths: list[str]) -> list[str]:
    texts: list[str] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            raise UserError(f"--data {name} is a directory: give its text or TSV files")
        if not path.is_file():
            raise UserError(f"no such data file: {name}")
        if path.suffix == ".tsv":
            texts += tsv_texts(path)  # which refuses a TSV without text
            continue
        # WikiText headings (" = Title = ") are not texts
        found = [s.strip() for s in read_utf8(path).splitlines() if s.strip() and not s.strip().startswith("=")]
        if not found:
            raise UserError(f"{name} holds no text")
        texts += found
    return texts


def shaping_flags(args) -> dict:
    return dict(zip(SHAPING_FLAGS, (args.softmax_input, args.softmax_hidden, args.share_softmax, args.only)))


def check_same_shape(state_path: Path, first: dict, now: dict) -> None:
    """A resumed run must build the model the saved state was trained as."""
    differ = [f"{flag} {first[flag] or 'not given'} (this run: {now[flag] or 'not given'})"
              for flag in now if flag in first and first[flag] != now[flag]]
    if differ:
        raise UserError(f"{state_path} was written with other model-shaping flags: {', '.join(differ)}; "
                        "repeat the first run's flags, or pick another --out to start over")


def conversion_record(config: dict) -> dict:
    """What `convert` recorded in a config.json it wrote; {} where there is none, or where a hand edit left
    something other than a JSON object under "conversion"."""
    record = config.get("conversion")
    return record if isinstance(record, dict) else {}


def resumed_record(state: dict, state_path: Path, config_path: Path, record: dict) -> dict:
    """The saved run's record (in `state`, read from state_path) with this run's flags, after checking they
    shape the same model from the same teacher, by its weights' digest (a record from before digests were kept
    cannot be checked for it). A state from before records were kept has none: its flags cannot be checked
    (said on stderr), and its pre-fit MSE is read from the config.json the earlier run wrote, when there is one."""
    from ..torch_ref import train

    saved = train.saved_record(state)
    if saved.get("teacher_weights", record["teacher_weights"]) != record["teacher_weights"]:
        raise UserError(f"{state_path} was trained from another teacher (weights digest {saved['teacher_weights']}, "
                        f"CKPT's {record['teacher_weights']}): resume with that teacher, or choose another --out to "
                        "start over")
    if "flags" in saved:
        check_same_shape(state_path, saved["flags"], record["flags"])
    else:
        print(f"mabert-hw: warning: {state_path} records no flags (an older run): cannot check that "
              f"{', '.join(SHAPING_FLAGS)} match it", file=sys.stderr)
    if "prefit_mse" not in saved and config_path.exists():
        earlier = conversion_record(checkpoint.read_config(config_path))
        saved = saved | {k: earlier[k] for k in ("prefit_mse",) if k in earlier}
    return saved | record


def refuse_fewer_steps(state: dict, state_path: Path, steps: int) -> None:
    """With --resume, --steps counts the saved run's steps too: fewer than it made would write its model again
    under a config.json whose "steps" is below its "steps_run"."""
    done = state["step"]
    if steps < done:
        raise UserError(f"{state_path} has made {done} knowledge-transfer steps, more than --steps {steps} (with "
                        f"--resume, the total): give --steps {done} or more, or choose another --out to start over")


def saved_lr(state: dict, state_path: Path) -> float:
    """The peak learning rate of a saved knowledge-transfer state: its scheduler's base rate, which the
    resumed optimizer and scheduler restore whatever this run's --lr says."""
    try:
        return float(state["scheduler"]["base_lrs"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(f"{state_path} records no learning rate: delete it, or choose another --out to start over") \
            from None


def teacher_record(ckpt: str) -> str:
    """The teacher as config.json names it for `softmax-error` to load from any directory: a preset or
    the minilm alias as given, a path made absolute."""
    return ckpt if ckpt in PRESETS or ckpt == checkpoint.MINILM_ALIAS else str(Path(ckpt).resolve())


def head_meaning(ckpt: str) -> dict:
    """The teacher config's HEAD_KEYS that it holds."""
    config = checkpoint_config(ckpt)
    return {key: config[key] for key in HEAD_KEYS if key in config}


def target_variant(args):
    ma = replace(VARIANTS["ma"], softmax_input=args.softmax_input, softmax_hidden=args.softmax_hidden,
                 share_softmax=args.share_softmax)
    base = replace(ma, softmax="exact", ffn_activation="gelu", norm="layernorm", mask="additive")
    return {None: ma, "relu": replace(base, ffn_activation="relu"), "powernorm": replace(base, norm="powernorm"),
            "approximator": replace(base, softmax="mlp", mask="multiplicative")}[args.only]


def check_max_len(args) -> None:
    """--max-len must fit the approximator, when the student has one (not under --only relu / powernorm); that
    it holds [CLS] and [SEP] (the tokenizer cannot cut below them) is checked as the flag is parsed."""
    if target_variant(args).softmax == "mlp" and args.max_len > args.softmax_input:
        raise UserError(f"--max-len {args.max_len} exceeds --softmax-input {args.softmax_input}")


def refuse_overwriting_state(state_path: Path, resume: bool) -> None:
    """A run without --resume would start over and save its first state over the earlier run's."""
    if state_path.exists() and not resume:
        raise UserError(f"{state_path} holds an earlier run's knowledge-transfer state: pass --resume to continue "
                        "it, or choose another --out to start over")


def refuse_overwriting_model(out: Path) -> None:
    """The result is written as OUT/config.json + model.safetensors: an --out that holds another model (the
    teacher's own directory, say) would lose it. A config.json that `convert` wrote records its conversion."""
    config = out / "config.json"
    if not config.exists():
        return
    try:
        ours = "conversion" in json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        ours = False
    if not ours:
        raise UserError(f"{out} holds a model that `convert` did not write ({config}): choose another --out")


def run(args) -> int:
    check_max_len(args)
    with output_dir(args.out) as out:
        return convert_into(out, args)


def convert_into(out: Path, args) -> int:
    try:
        from tqdm import tqdm

        from ..torch_ref import train
        from ..torch_ref.export import save_ma_dir
    except ImportError as error:
        raise UserError(f"`convert` needs torch and tqdm ({error.name} is not installed)") from None
    state_path = out / "train_state.pt"
    refuse_overwriting_state(state_path, args.resume)
    refuse_overwriting_model(out)
    resuming = args.resume and state_path.exists()
    texts = read_corpus(args.data)
    ck = checkpoint.load(args.ckpt)
    weights = ck.require_weights("convert")
    if not ck.spec.variant.is_baseline:
        raise UserError(f"{ck.source} is not a baseline BERT (variant {ck.spec.variant.describe()})")
    if ck.tokenizer_dir is None:
        raise UserError(f"{ck.source} has no tokenizer (tokenizer.json or vocab.txt)")
    if args.max_len > ck.spec.max_positions:
        raise UserError(f"--max-len {args.max_len} exceeds the teacher's {ck.spec.max_positions} positions")
    record = {"flags": shaping_flags(args), "teacher_weights": weights_digest(weights)}
    lr = args.lr
    if resuming:
        state = train.read_state(state_path)
        record = resumed_record(state, state_path, out / "config.json", record)
        refuse_fewer_steps(state, state_path, args.steps)
        lr = saved_lr(state, state_path)
    if lr != args.lr:
        print(f"mabert-hw: note: the resumed run keeps the first run's learning rate {lr:g} (--lr {args.lr:g} "
              "is not used)", file=sys.stderr)
    cfg = train.TrainConfig(steps=args.steps, batch=args.batch, max_len=args.max_len, lr=lr,
                            prefit_steps=args.prefit_steps, checkpoint_every=args.checkpoint_every, seed=args.seed,
                            max_minutes=args.max_minutes)
    variant = target_variant(args)
    teacher = train.teacher_module(ck.spec, weights)
    student = train.student_module(ck.spec, weights, variant, args.seed)
    side = train.batches(ck.tokenizer_dir, texts, cfg.batch, cfg.max_len, args.seed + 1)
    report = {"teacher": teacher_record(args.ckpt), "texts": len(texts), "variant": variant.describe(),
              "config": cfg.__dict__}
    if not resuming:
        if variant.softmax == "mlp" and cfg.prefit_steps:
            losses = train.prefit_approximators(student, teacher, side, cfg, lambda r: tqdm(r, desc="pre-fit"))
            record["prefit_mse"] = losses
            print(f"approximator pre-fit MSE per approximator: {[f'{x:.2e}' for x in losses]}")
        train.calibrate_powernorm(student, side)
    if "prefit_mse" in record:  # from this run, or kept in the state by the run this one resumes
        report["prefit_mse"] = record["prefit_mse"]
    if cfg.steps or resuming:  # resuming loads the saved student, even with no steps left to run
        stream = train.batches(ck.tokenizer_dir, texts, cfg.batch, cfg.max_len, args.seed)
        try:
            history = train.knowledge_transfer(student, teacher, stream, cfg, state_path, resuming,
                                               lambda r, **kw: tqdm(r, desc="knowledge transfer", **kw), tqdm.write,
                                               record)
        except train.Interrupted as error:
            print(f"mabert-hw: interrupted after step {error.step} of {cfg.steps}; {state_path} holds that step: "
                  "run the same command with --resume to continue", file=sys.stderr)
            return signal_status(error.signum)
        except KeyboardInterrupt as stop:  # a second signal: the step under way is dropped
            if not state_path.exists():
                raise  # nothing to resume from: an --out this run made is removed
            print(f"mabert-hw: interrupted in the middle of a step; {state_path} holds the last step saved before it: "
                  "run the same command with --resume to continue", file=sys.stderr)
            return stopped_status(stop)
        except train.Diverged as error:
            kept = f"{state_path} keeps the last state saved before it" if state_path.exists() else "nothing was saved"
            raise UserError(f"training diverged at step {error.step} (loss {error.loss}); {kept}. Start again with "
                            f"a lower --lr than {cfg.lr:g} (a resumed run keeps the saved learning rate)") from None
        report["final_loss"] = history[-1] if history else None
        report["steps_run"] = history[-1]["step"] if history else 0  # under config.steps: --max-minutes stopped it
        (out / "history.json").write_text(json.dumps(history))
    save_ma_dir(student.eval(), out, ck.tokenizer_dir, {**head_meaning(args.ckpt), "conversion": report})
    print(f"wrote {out} ({variant.describe()})")
    return 0

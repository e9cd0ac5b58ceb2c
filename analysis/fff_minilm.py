"""FFF MiniLM: replace each FFN of all-MiniLM-L6-v2 by a fast feed-forward tree trained by
layer-wise distillation on real hidden states; STS-B dev Spearman and whole-model speed vs depth.

Distillation data: the input to every layer's FFN (the post-attention LayerNorm output) and the
dense FFN's output (before the residual add), both from the real model (HF torch, eager) on the
real tokens of STS-B *train* sentences and WikiText-2 valid lines; STS-B dev is only evaluated.
Each layer's FFF (depth d, K trees, no output bias, the official layer) is trained on its own with
MSE to the dense FFN output, hard path (FFF.forward_gather: gradients reach the visited nodes only,
as in the official training). Evaluation: the FFF model in our engine (fast backend with the Numba
FFF kernel, or the reference backend), mean pooling, cosine, Spearman x 100 (eval.tasks).
With --kd-minutes, each distilled model then gets a short end-to-end knowledge transfer: the whole
FFF model (HF BertModel with FFF blocks, hard path) learns the dense model's hidden states
(embeddings and every layer's output, MSE over real tokens) on the same texts, and is evaluated
again as its own row.

    python analysis/fff_minilm.py --depths 1,3,5,7 --minutes 25     # -> reports/fff/
    python analysis/fff_minilm.py --depths 5 --minutes 6 --kd-minutes 12 --out reports/fff/kd
    python analysis/fff_minilm.py --depths 5,11 --timing-only       # -> reports/fff/timing.json

results.json, results.csv and stsb_vs_depth.png are rewritten together after every row, from the same
rows (results.json marked "interrupted": true until the run ends), so an earlier run's files never
stay beside this run's; Ctrl-C or SIGTERM stops the run with the finished rows (without timings) in
all three. The three are renamed into place once all are written: a failed or interrupted save leaves
the previous three (only a kill between the renames, back to back, could mix two saves).

Data (--data, default ../shared/data): glue/STS-B/train.tsv and dev.tsv, wikitext-2/wiki.valid.raw.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mabert_hw import checkpoint
from mabert_hw.atomic import atomic_path, write_text_whole
from mabert_hw.backends import make_backend
from mabert_hw.bench.timing import time_calls
from mabert_hw.checkpoint import Checkpoint
from mabert_hw.cli.common import (interruptible, non_negative_float, non_negative_int, output_file,
                                  positive_float, positive_int, run_script, script_description, script_output_dir)
from mabert_hw.errors import MissingPackage, UserError
from mabert_hw.eval.tasks import load_stsb, stsb_spearman
from mabert_hw.fff import FFF_PREFIX, n_nodes
from mabert_hw.interrupts import stopped_status
from mabert_hw.inputs import DATA_DIR, random_batch, tokenize
from mabert_hw.machine import memory_bytes
from mabert_hw.model import forward
from mabert_hw.report.tables import csv_table
from mabert_hw.torch_ref.fff import FFF, hf_fff_model
from mabert_hw.torch_ref.hf import hf_model
from mabert_hw.weights import layer_prefix

DATA_FILES = ("glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", "wikitext-2/wiki.valid.raw")  # all that is read
OUT = Path(__file__).resolve().parents[1] / "reports" / "fff"
RESULTS = ("results.json", "results.csv", "stsb_vs_depth.png")  # what the study writes to --out
TIMING = "timing.json"  # what --timing-only writes
# The distillation's settings were chosen, not tuned: no sweep of them is recorded (git history, reports/fff),
# and each is unchanged since the script's first commit (9ef8a7e).
WIKI_MIN_CHARS = 40  # WikiText lines this short are list items, table labels and verse (107 of the valid split's
# 1,841 non-heading lines), not running text: skipped
TEXT_MAX_CHARS = 600  # longer texts dropped, keeping the hidden-state batches short (the longest kept text is 193
# tokens; every text here would fit the 512 positions: the dropped WikiText paragraphs take 104-467)
HELD_OUT_ONE_IN = 10  # one in 10 of each layer's token rows held out for the relative MSE
DISTIL_LR = 3e-3  # Adam, constant rate
DISTIL_BATCH = 512  # token rows per Adam step


def check_data(data: Path) -> None:
    """Every data file is there, before minutes of distillation that would end at the first one missing."""
    missing = [name for name in DATA_FILES if not (data / name).is_file()]
    if missing:
        raise UserError(f"no {missing[0]} under --data {data}")


def training_texts(data: Path, limit: int) -> list[str]:
    train = load_stsb(data / "glue" / "STS-B" / "train.tsv")
    wiki = [line.strip() for line in (data / "wikitext-2" / "wiki.valid.raw").read_text().splitlines()
            if len(line.strip()) > WIKI_MIN_CHARS and not line.strip().startswith("=")]
    texts = [t for pair in zip(train.first, train.second) for t in pair] + wiki
    return sorted((t for t in texts[:limit] if len(t) < TEXT_MAX_CHARS), key=len)  # batches of similar length


@torch.no_grad()
def ffn_pairs(ck: Checkpoint, texts: list[str], batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (FFN input, dense FFN output) rows of every real token: (tokens, C) each."""
    model = hf_model(ck.spec, ck.weights)
    inputs: list[list[torch.Tensor]] = [[] for _ in range(ck.spec.layers)]
    outputs: list[list[torch.Tensor]] = [[] for _ in range(ck.spec.layers)]
    keep = {}
    for layer, module in enumerate(model.encoder.layer):
        module.intermediate.register_forward_hook(
            lambda m, args, out, layer=layer: inputs[layer].append(args[0][keep["mask"]]))
        module.output.dense.register_forward_hook(
            lambda m, args, out, layer=layer: outputs[layer].append(out[keep["mask"]]))
    with tqdm(range(0, len(texts), batch_size), desc="hidden states") as starts:  # closed on Ctrl-C too
        for start in starts:
            batch = tokenize(ck.tokenizer_dir, texts[start:start + batch_size])  # < TEXT_MAX_CHARS: < 512 tokens
            keep["mask"] = torch.from_numpy(batch.attention_mask.astype(bool))
            model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
                  token_type_ids=torch.from_numpy(batch.token_type_ids))
    return [(torch.cat(i), torch.cat(o)) for i, o in zip(inputs, outputs)]


def distill(x: torch.Tensor, y: torch.Tensor, depth: int, trees: int, seconds: float,
            seed: int) -> tuple[FFF, float, int]:
    """Train one FFF on (x, y) for `seconds`; returns it, held-out relative MSE, and its steps."""
    torch.manual_seed(seed)
    shuffled = torch.randperm(len(x))  # the rows come in text-length order: a plain slice would hold out short texts
    held = max(len(x) // HELD_OUT_ONE_IN, 1)
    xt, yt, xv, yv = x[shuffled[held:]], y[shuffled[held:]], x[shuffled[:held]], y[shuffled[:held]]
    module = FFF(x.shape[1], depth, trees)
    optimiser = torch.optim.Adam(module.parameters(), lr=DISTIL_LR)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        idx = torch.randint(0, len(xt), (DISTIL_BATCH,))
        loss = torch.nn.functional.mse_loss(module.forward_gather(xt[idx]), yt[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    with torch.no_grad():
        rel = float(((module.forward_gather(xv) - yv) ** 2).mean() / (yv ** 2).mean())
    return module, rel, steps


def fff_checkpoint(ck: Checkpoint, modules: list[FFF], depth: int, trees: int) -> Checkpoint:
    spec = ck.spec.with_variant(ffn="fff", fff_depth=depth, fff_trees=trees)
    dense_ffn = re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.dense\.")  # not attention.output
    weights = {k: v for k, v in ck.weights.items() if not dense_ffn.match(k)}
    for layer, module in enumerate(modules):
        for key, value in module.state_dict().items():
            weights[layer_prefix(layer) + FFF_PREFIX + key] = value.detach().numpy().astype(np.float32)
    return Checkpoint(spec, weights, f"{ck.source}+fff{trees}x{depth}", ck.tokenizer_dir)


KD_BATCH = 32  # texts per knowledge-transfer step
KD_LR = 1e-4  # AdamW, decayed linearly to 0 over the time budget


def hidden_states(model: torch.nn.Module, batch) -> tuple[torch.Tensor, ...]:
    """Embeddings and every layer's output, (B, T, C) each."""
    return model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
                 token_type_ids=torch.from_numpy(batch.token_type_ids), output_hidden_states=True).hidden_states


def end_to_end_kd(ck: Checkpoint, student_ck: Checkpoint, texts: list[str], seconds: float,
                  seed: int) -> tuple[Checkpoint, int, float]:
    """Every weight of the FFF model trained for `seconds` to reproduce the dense model's hidden
    states over real tokens; returns the trained checkpoint, its steps and the last loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = hf_model(ck.spec, ck.weights)
    student = hf_fff_model(student_ck.spec, student_ck.weights)  # eval mode: no dropout, as the engine
    optimiser = torch.optim.AdamW(student.parameters(), lr=KD_LR)
    batch_size = min(KD_BATCH, len(texts))  # a small --texts: every text in each step
    start, steps, loss = time.perf_counter(), 0, float("nan")
    with tqdm(desc="knowledge transfer", unit="step") as bar:
        while (elapsed := time.perf_counter() - start) < seconds:
            for group in optimiser.param_groups:
                group["lr"] = KD_LR * (1 - elapsed / seconds)
            picked = [texts[i] for i in rng.choice(len(texts), batch_size, replace=False)]
            batch = tokenize(ck.tokenizer_dir, picked)
            mask = torch.from_numpy(batch.attention_mask.astype(np.float32))[..., None]  # (B, T, 1)
            with torch.no_grad():
                targets = hidden_states(teacher, batch)
            outputs = hidden_states(student, batch)
            per_state = [((o - t) ** 2 * mask).sum() / (mask.sum() * o.shape[-1]) for o, t in zip(outputs, targets)]
            total = torch.stack(per_state).mean()
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            steps, loss = steps + 1, total.item()  # float(total) warns: total requires grad
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}")
    trained = {key.replace(".intermediate.", f".{FFF_PREFIX}"): value.detach().numpy().astype(np.float32)
               for key, value in student.state_dict().items()}
    missing = set(student_ck.weights) - set(trained)
    if missing:
        raise ValueError(f"knowledge transfer lost weights: {sorted(missing)[:5]}")
    weights = {key: trained[key] for key in student_ck.weights}
    return Checkpoint(student_ck.spec, weights, student_ck.source + "+kd", student_ck.tokenizer_dir), steps, loss


def engine():
    """The fast backend (its `fff` runs the Numba tree walk) when numba is there, else the reference."""
    try:
        return "fast", make_backend("fast")
    except MissingPackage:  # make_backend's error for an absent or unloadable numba, as bench's engines catch it
        return "reference", make_backend("reference")


def whole_model_ms(cks: dict[str, Checkpoint], backend, rounds: int = 5) -> dict[str, float]:
    """Median ms of one forward at batch 8 x 128 tokens: one warm-up call per model (compiles, warms), then
    `rounds` interleaved rounds (bench.timing.time_calls)."""
    batch = random_batch(next(iter(cks.values())).spec, 8, 128, seed=0, padded=False)

    def call(ck: Checkpoint):
        return lambda: np.asarray(forward(ck.spec, ck.weights, batch.input_ids, backend, batch.attention_mask,
                                          batch.token_type_ids).last_hidden_state)

    times = time_calls({name: call(ck) for name, ck in cks.items()}, rounds, warmup=1).wall
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def timing_only(ck: Checkpoint, depths: list[int], trees: int, out: Path) -> int:
    torch.manual_seed(0)
    models = {"dense": ck}
    for depth in depths:
        modules = [FFF(ck.spec.hidden, depth, trees) for _ in range(ck.spec.layers)]
        models[f"fff {trees}x{depth}"] = fff_checkpoint(ck, modules, depth, trees)
    backend_name, backend = engine()
    load_before = os.getloadavg()
    speed = whole_model_ms(models, backend)
    result = {"backend": backend_name, "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
              "forward_ms_8x128": speed, "speedup_vs_dense": {name: speed["dense"] / ms for name, ms in speed.items()}}
    write_text_whole(out / TIMING, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def draw(rows: list[dict], temporary: Path, path: Path) -> None:
    """The STS-B-vs-depth chart of `rows` into `temporary` (atomic_path's, for `path`): drawn under a name
    that keeps path's suffix, as matplotlib picks the format by it."""
    from mabert_hw.report.fff_plots import spearman_vs_depth

    drawn = temporary.with_name(temporary.name + path.suffix)
    try:
        spearman_vs_depth(rows, drawn)
        drawn.replace(temporary)
    except UserError as error:  # save_figure's, naming the file drawn
        raise UserError(str(error).replace(str(drawn), str(path))) from None
    finally:
        drawn.unlink(missing_ok=True)


def save(out: Path, args, backend_name: str, rows: list[dict], finished: bool) -> None:
    """results.json, results.csv and the plot from the same rows, all three or none: each is written under
    a temporary name, and the three are renamed over the old ones only once all are written (a full disk or
    Ctrl-C mid-save leaves the previous three). results.json records the settings that made the rows, and
    is marked interrupted until the run has finished every row and timed them."""
    settings = {"depths": args.depths, "trees": args.trees, "texts": args.texts, "minutes": args.minutes,
                "kd_minutes": args.kd_minutes}
    document = {"backend": backend_name, **({} if finished else {"interrupted": True}), "settings": settings,
                "rows": rows}
    json_path, csv_path, plot_path = (out / name for name in RESULTS)
    try:
        with ExitStack() as stack:  # leaving it renames the plot, then results.csv, then results.json
            stack.enter_context(atomic_path(json_path)).write_text(json.dumps(document, indent=2))
            stack.enter_context(atomic_path(csv_path)).write_text(csv_table(rows))
            draw(rows, stack.enter_context(atomic_path(plot_path)), plot_path)
    except OSError as error:
        raise UserError(f"cannot write the results to {out}: {error.strerror or error}") from None


def said_interrupted(prog: str, out: Path, rows: list[dict], stage: str, stop: KeyboardInterrupt) -> int:
    """Say what the interrupted run left in `out`, and exit as a process stopped by the signal of `stop`."""
    if rows:
        names = ", ".join(row["model"] for row in rows)
        kept = (f"{out} holds the {len(rows)} finished rows ({names}), without timings, in results.json "
                f"(marked interrupted), results.csv and stsb_vs_depth.png")
    else:
        kept = f"no row was finished: {out} is as it was (any results files there are an earlier run's)"
    print(f"{prog}: interrupted while {stage}; {kept}", file=sys.stderr)
    return stopped_status(stop)


def depth_list(text: str) -> list[int]:
    """--depths: distinct tree depths >= 0 (a repeated one would overwrite its model, and its row
    would get another model's timing)."""
    depths = [non_negative_int(d) for d in text.split(",")]
    if len(set(depths)) != len(depths):
        raise argparse.ArgumentTypeError(f"repeated depth in {text!r}")
    return depths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=script_description(__doc__))
    parser.add_argument("--depths", type=depth_list, default="1,3,5,7", help="comma-separated tree depths")
    parser.add_argument("--trees", type=positive_int, default=1, help="parallel trees K per layer")
    parser.add_argument("--texts", type=positive_int, default=3000,
                        help="training texts (STS-B train, then WikiText)")
    parser.add_argument("--minutes", type=positive_float, default=25.0,
                        help="training budget over all depths and layers")
    parser.add_argument("--kd-minutes", type=non_negative_float, default=0.0,
                        help="end-to-end knowledge transfer per depth after the layer-wise fit (default 0: none)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help=f"data root holding {', '.join(DATA_FILES)} "
                        "(default ../shared/data; --timing-only reads none)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--timing-only", action="store_true",
                        help="only time the whole model, FFF blocks at their random initialisation (the walk's "
                             "cost does not depend on trained weights): timing.json")
    return run_script(parser, lambda args: run(args, parser), argv)


def check_memory(parser: argparse.ArgumentParser, spec, depths: list[int], trees: int) -> None:
    """Every depth's FFF model is kept for the timing at the end (--timing-only builds them all at once):
    depths or --trees whose FFF weights alone exceed the machine's memory are refused before the work,
    which would otherwise end in an allocation failure (or the OOM killer) minutes in."""
    need = 4 * spec.layers * trees * (2 * spec.hidden + 1) * sum(n_nodes(d) for d in depths)  # float32
    have = memory_bytes()
    if need > have:
        parser.error(f"argument --depths: depths {','.join(map(str, depths))} with --trees {trees}: the FFF weights "
                     f"alone take {need / 2**30:.3g} GiB, more than this machine's {have / 2**30:.3g} GiB of memory")


def check_out(parser: argparse.ArgumentParser, out: Path, names: tuple[str, ...]) -> None:
    """--out made, and each file the run writes there creatable (not a directory, a folder that takes new
    files), before the work: a bad --out exits as a bad flag does, not after minutes of training."""
    script_output_dir(parser, out)
    for name in names:
        try:
            output_file(str(out / name))
        except argparse.ArgumentTypeError as error:
            parser.error(f"argument --out: {error}")


def run(args, parser: argparse.ArgumentParser) -> int:
    if not args.timing_only:
        check_data(args.data)
    ck = checkpoint.load("minilm")
    check_memory(parser, ck.spec, args.depths, args.trees)
    check_out(parser, args.out, (TIMING,) if args.timing_only else RESULTS)
    torch.set_num_threads(2)
    if args.timing_only:
        return interruptible(parser.prog, lambda: timing_only(ck, args.depths, args.trees, args.out),
                             f"{args.out / TIMING} is as it was")
    return study(args, ck, parser.prog)


def study(args, ck: Checkpoint, prog: str) -> int:
    """The distillation study. Each row, once finished, is saved with all before it (save), and Ctrl-C or
    SIGTERM stops the run with those rows in results.json, results.csv and the plot."""
    backend_name, backend = engine()
    rows: list[dict] = []
    models: dict[str, Checkpoint] = {}  # in the order of rows: the timing pairs them

    def finished(name: str, model: Checkpoint, row: dict) -> None:
        models[name] = model
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        save(args.out, args, backend_name, rows, finished=False)

    stage = "reading the hidden states"
    try:
        texts = training_texts(args.data, args.texts)
        pairs = ffn_pairs(ck, texts)
        print(f"{len(pairs[0][0])} real tokens per layer", file=sys.stderr, flush=True)
        dev = load_stsb(args.data)
        stage = "scoring the dense model"
        finished("dense", ck, {"model": "dense (all-MiniLM-L6-v2)", "depth": None, "trees": None,
                               "stsb_spearman": stsb_spearman(ck, dev, backend), "mean_rel_mse": 0.0,
                               "train_steps_per_layer": 0})
        stage = "scoring the no-FFN control"
        zero = [FFF(ck.spec.hidden, 0, args.trees) for _ in range(ck.spec.layers)]
        for module in zero:  # the control: every FFN block outputs 0, each layer is LN(x + attention) alone
            torch.nn.init.zeros_(module.linear_out.weight)
        control = fff_checkpoint(ck, zero, 0, args.trees)
        finished("no FFN (control)", control, {"model": "no FFN (control)", "depth": None, "trees": None,
                                               "stsb_spearman": stsb_spearman(control, dev, backend),
                                               "mean_rel_mse": 1.0, "train_steps_per_layer": 0})
        seconds = 60 * args.minutes / (len(args.depths) * ck.spec.layers)
        for depth in args.depths:
            name = f"fff {args.trees}x{depth}"
            stage = f"distilling {name}"
            with tqdm(pairs, desc=f"distil depth {depth}") as layers:  # closed on Ctrl-C too
                trained = [distill(x, y, depth, args.trees, seconds, seed=layer)
                           for layer, (x, y) in enumerate(layers)]
            fck = fff_checkpoint(ck, [m for m, _, _ in trained], depth, args.trees)
            stage = f"scoring {name}"
            finished(name, fck, {"model": name, "depth": depth, "trees": args.trees,
                                 "stsb_spearman": stsb_spearman(fck, dev, backend),
                                 "mean_rel_mse": float(np.mean([rel for _, rel, _ in trained])),
                                 "train_steps_per_layer": int(np.mean([s for _, _, s in trained]))})
            if args.kd_minutes > 0:
                stage = f"knowledge transfer of {name}"
                kck, kd_steps, kd_loss = end_to_end_kd(ck, fck, texts, 60 * args.kd_minutes, seed=depth)
                finished(f"{name} + kd", kck, {**rows[-1], "model": f"{name} + kd",
                                               "stsb_spearman": stsb_spearman(kck, dev, backend),
                                               "kd_steps": kd_steps, "kd_final_loss": kd_loss})
        stage = "timing the models"
        speed = whole_model_ms(models, backend)
        timed = [{**row, "forward_ms_8x128": speed[name], "speedup_vs_dense": speed["dense"] / speed[name]}
                 for row, name in zip(rows, models)]
        stage = "saving the results"
        save(args.out, args, backend_name, timed, finished=True)
    except KeyboardInterrupt as stop:
        if rows:  # again: the interruption may have come between a row and its save, or cut the save short
            save(args.out, args, backend_name, rows, finished=False)
        return said_interrupted(prog, args.out, rows, stage, stop)
    print(json.dumps(timed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Baseline BERT -> MA-BERT: approximator pre-fit, then knowledge transfer from the frozen teacher.

Stage 1 (cheap): each layer's approximator alone is fitted to that layer's real attention rows:
input = the teacher's scaled scores times the 0/1 mask, zero-padded to n; target = the teacher's
softmax row (0 at padded keys); loss = MSE over the T real columns (the extra outputs are dropped).
Stage 2: knowledge transfer (MA-BERT paper), student = teacher weights with the MA variant:
    L = a CE(z_s / t, softmax(z_t / t)) + (1 - a) L_task + b [sum_i MSE(H_s^i, H_t^i) + g sum_i MSE(A_s^i, A_t^i)]
with t = 15, a = 0.9, b = 1, g = 100; H^i: embeddings + every layer's output, over real tokens;
A^i: attention probabilities vs approximator outputs over real query rows. Text corpora carry no
labels, so L_task is absent; the logit term exists only when the model has a classifier.
AdamW with linear warm-up and linear decay. Unlike the official recipe, whose student keeps BERT's 0.1
hidden and attention dropout (its attention maps are compared after dropout), the student here has no
dropout: MABertModel has none, and the step is then a function of the saved state and the seeded data
alone, which is what lets a resumed run repeat an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..errors import UserError, error_summary
from ..inputs import Batch, tokenize_within
from ..interrupts import interrupt_for
from ..spec import ModelSpec, Variant
from ..weights import Weights
from .ma_bert import POWERNORM_BUFFERS, MABertModel, PowerNorm, load_official

TEMPERATURE, ALPHA, BETA, GAMMA = 15.0, 0.9, 1.0, 100.0  # MA-BERT paper's knowledge-transfer loss
# The approximator pre-fit's settings: chosen, not tuned (no sweep is recorded; unchanged since 7654840 added them)
PREFIT_LR = 1e-3  # Adam, constant: torch.optim.Adam's default rate
PREFIT_ROWS = 4096  # attention rows drawn (with replacement) per pre-fit step; as many as there are, when fewer


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 16
    max_len: int = 64
    lr: float = 1e-4
    warmup: float = 0.1  # fraction of steps; with weight_decay, google-research/bert's fine-tuning defaults
    weight_decay: float = 0.01  # (run_classifier.py warmup_proportion, optimization.py weight_decay_rate)
    prefit_steps: int = 300
    prefit_batches: int = 8  # 8 x 16 texts x 64 tokens x 12 heads: ~98k real attention rows per layer
    checkpoint_every: int = 200
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget for the knowledge transfer: stop and save


class Diverged(FloatingPointError):
    """The knowledge-transfer loss stopped being finite; the state saved before that step is left as it was."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}")
        self.step, self.loss = step, loss


class Interrupted(Exception):
    """SIGINT or SIGTERM (`signum`) stopped the knowledge transfer; the state after its last whole step is
    saved."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted after step {step}")
        self.step, self.signum = step, signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_requests():
    """A list that SIGINT / SIGTERM append to while the block runs, for the loop to read between steps: a
    step cut in the middle would leave the optimizer stepped without its history. A second signal
    interrupts at once. Signal handlers can only be set from the main thread; elsewhere the list stays
    empty and signals act as before."""
    requested: list[int] = []

    def request(signum, frame):
        if requested:
            raise interrupt_for(signum)
        requested.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:  # set inside the try: a signal right after one is set still finds every handler restored
        for s in STOP_SIGNALS:
            signal.signal(s, request)
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def teacher_module(spec: ModelSpec, weights: Weights) -> MABertModel:
    """The baseline as our torch module (same names as HF BertModel; checked against HF in tests)."""
    return load_official(spec, weights)


def student_module(teacher_spec: ModelSpec, weights: Weights, variant: Variant, seed: int) -> MABertModel:
    """Teacher weights in the MA architecture: norms keep weight/bias, approximators start random."""
    torch.manual_seed(seed)
    spec = replace(teacher_spec, variant=variant)
    student = MABertModel(spec)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    missing, unexpected = student.load_state_dict(state, strict=False)
    expected_new = (*POWERNORM_BUFFERS, "linear_relu_stack")  # a LayerNorm teacher has neither
    bad = [k for k in missing if not any(s in k for s in expected_new)]
    if bad or unexpected:
        raise ValueError(f"teacher and student differ: missing {bad}, unexpected {unexpected}")
    return student


def batches(tokenizer_dir: Path, texts: list[str], size: int, max_len: int, seed: int) -> Iterator[Batch]:
    """Endless random batches of texts, each padded to its longest text (at most max_len tokens)."""
    rng = np.random.default_rng(seed)
    while True:
        chosen = [texts[i] for i in rng.integers(0, len(texts), size)]
        yield tokenize_within(tokenizer_dir, chosen, max_len)


def as_torch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.token_type_ids))


@torch.no_grad()
def attention_rows(teacher: MABertModel, batch: Batch, layer: int, n: int):
    """(scores * mask zero-padded to n, teacher probs padded to n, column mask) for real query rows."""
    ids, mask, types = as_torch(batch)
    out = teacher(ids, mask, types, keep_scores=True)
    scores, probs = out["scores"][layer], out["attentions"][layer]  # (B, H, T, T)
    B, H, T, _ = scores.shape
    rows = mask.bool()[:, None, :, None].expand(B, H, T, 1).reshape(-1)  # real queries
    m = mask[:, None, None, :].to(scores.dtype)
    x = F.pad(scores * m, (0, n - T)).reshape(-1, n)[rows]
    y = F.pad(probs, (0, n - T)).reshape(-1, n)[rows]
    cols = torch.zeros(n, dtype=scores.dtype)
    cols[:T] = 1
    return x, y, cols.expand_as(x)


def prefit_approximators(student: MABertModel, teacher: MABertModel, stream: Iterator[Batch],
                         cfg: TrainConfig, progress=None) -> list[float]:
    """Stage 1: fit each approximator to real rows. Returns the final masked MSE per approximator."""
    v = student.spec.variant
    data = [next(stream) for _ in range(cfg.prefit_batches)]
    layers = list(range(student.spec.layers))
    groups = [layers] if v.share_softmax else [[i] for i in layers]
    losses = []
    for group in groups:
        parts = [attention_rows(teacher, b, i, v.softmax_input) for b in data for i in group]
        x, y, cols = (torch.cat([p[j] for p in parts]) for j in range(3))
        approximator = student.encoder.layer[group[0]].attention.self.softmax.linear_relu_stack
        optimizer = torch.optim.Adam(approximator.parameters(), lr=PREFIT_LR)
        generator = torch.Generator().manual_seed(cfg.seed)
        loss = torch.tensor(float("nan"))
        for _ in progress(range(cfg.prefit_steps)) if progress else range(cfg.prefit_steps):
            pick = torch.randint(0, x.shape[0], (min(PREFIT_ROWS, x.shape[0]),), generator=generator)
            loss = (((approximator(x[pick]) - y[pick]) ** 2) * cols[pick]).sum() / cols[pick].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def calibrate_powernorm(student: MABertModel, stream: Iterator[Batch], steps: int = 20) -> None:
    """Run training-mode forwards so every running_phi tracks real batch statistics."""
    if not any(isinstance(m, PowerNorm) for m in student.modules()):
        return
    student.train()
    for _ in range(steps):
        student(*as_torch(next(stream)))


def kd_loss(student_out: dict, teacher_out: dict, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    m = mask[..., None].to(torch.float32)  # (B, T, 1)
    tokens = m.sum()
    hidden = sum(((hs - ht) ** 2 * m).sum() / (tokens * hs.shape[-1])
                 for hs, ht in zip(student_out["hidden_states"], teacher_out["hidden_states"]))
    rows = mask[:, None, :, None].to(torch.float32)  # (B, 1, T, 1): real query rows
    attention = sum(((a_s - a_t) ** 2 * rows).sum() / (rows.sum() * a_s.shape[1] * a_s.shape[-1])
                    for a_s, a_t in zip(student_out["attentions"], teacher_out["attentions"]))
    loss = BETA * (hidden + GAMMA * attention)
    parts = {"hidden": hidden.item(), "attention": attention.item()}
    if student_out["logits"] is not None:
        soft = F.softmax(teacher_out["logits"] / TEMPERATURE, dim=-1)
        ce = -(soft * F.log_softmax(student_out["logits"] / TEMPERATURE, dim=-1)).sum(-1).mean()
        loss = loss + ALPHA * ce
        parts["soft_ce"] = ce.item()
    return loss, parts


def make_optimizer(student: MABertModel, cfg: TrainConfig):
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * cfg.steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        return (step + 1) / warm if step < warm else max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def knowledge_transfer(student: MABertModel, teacher: MABertModel, stream: Iterator[Batch], cfg: TrainConfig,
                       state_path: Path, resume: bool, progress=None, log=print, record: dict | None = None
                       ) -> list[dict]:
    """Stage 2, with a resumable state file written every cfg.checkpoint_every steps; `record` (the caller's
    facts about the run, read back by saved_record) is kept in that file."""
    optimizer, scheduler = make_optimizer(student, cfg)
    start, history = 0, []
    if resume and state_path.exists():
        saved = read_state(state_path)
        try:
            student.load_state_dict(saved["student"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:  # RuntimeError: size mismatch of a tensor
            raise UserError(f"{state_path} holds another model's training state ({error_summary(error)}): resume "
                            "with the first run's teacher, or choose another --out to start over") from None
        start, history = saved["step"], saved["history"]
        for _ in range(start):  # the data stream is seeded: skip what was consumed
            next(stream)
        log(f"resumed at step {start}")
    teacher.eval()
    started, out_of_time, stopped = time.monotonic(), False, []
    with stop_requests() as requested:
        steps = steps_until(start, cfg.steps, stopped)
        for step in progress(steps, initial=start, total=cfg.steps) if progress else steps:
            _step(student, teacher, next(stream), optimizer, scheduler, step, history)
            out_of_time = cfg.max_minutes is not None and time.monotonic() - started > 60 * cfg.max_minutes
            # read once, so that a stop always follows its save; a signal after this stops the run a step later
            stopping = bool(requested) or out_of_time
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stopping:
                save_state(state_path, student, optimizer, scheduler, history, record)
                parts = {k: v for k, v in history[-1].items() if k not in ("step", "loss")}
                log(f"step {step + 1}: loss {history[-1]['loss']:.4f} {parts}")
            if stopping:
                stopped.append(True)
    if requested:  # the loop ended after a step whose state is saved
        raise Interrupted(history[-1]["step"], requested[0])
    if out_of_time:
        log(f"stopped after {cfg.max_minutes} minutes at step {history[-1]['step']} of {cfg.steps}")
    return history


def steps_until(start: int, end: int, stopped: list) -> Iterator[int]:
    """The step indices start .. end - 1, ending early once `stopped` is not empty after a step. The loop
    over them ends by running out, not by break or raise: a progress bar (tqdm) counts a step when the
    loop asks for the next one, so one left by break showed a step fewer than had run."""
    for step in range(start, end):
        yield step
        if stopped:
            return


def _step(student: MABertModel, teacher: MABertModel, batch: Batch, optimizer, scheduler, step: int,
          history: list[dict]) -> None:
    """One knowledge-transfer step on `batch`, its loss appended to history."""
    ids, mask, types = as_torch(batch)
    with torch.no_grad():
        teacher_out = teacher(ids, mask, types)
    student.train()
    loss, parts = kd_loss(student(ids, mask, types), teacher_out, mask)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    value = loss.item()
    history.append({"step": step + 1, "loss": value, **parts})
    if not math.isfinite(value):
        raise Diverged(step + 1, value)


def save_state(state_path: Path, student: MABertModel, optimizer, scheduler, history: list[dict],
               record: dict | None) -> None:
    """The resumable state after history[-1]'s step, written whole (atomic_path: an interrupted save leaves
    the previous state)."""
    with atomic_path(state_path) as temporary:
        torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": history[-1]["step"], "history": history,
                    "record": record or {}}, temporary)


STATE_KEYS = ("student", "optimizer", "scheduler", "step", "history")  # what save_state writes (and "record")


def read_state(state_path: Path) -> dict:
    """A knowledge-transfer state file as save_state wrote it; a truncated, foreign or corrupted file is a
    one-line UserError (torch.load raises RuntimeError, pickle's errors, EOFError ... on such files)."""
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # noqa: BLE001 - unpickling a damaged file can raise nearly anything
        raise UserError(f"cannot read {state_path} as a training state ({error_summary(error)}): delete it, or choose "
                        "another --out to start over") from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise UserError(f"{state_path} is not a training state that `convert` wrote: delete it, or choose another "
                        "--out to start over")
    return state


def saved_record(state: dict) -> dict:
    """The `record` kept in a knowledge-transfer state (read_state; {} for files written before records existed)."""
    record = state.get("record", {})
    return record if isinstance(record, dict) else {}

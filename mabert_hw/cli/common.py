"""Argument types and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import write_text_whole
from ..errors import UserError
from ..interrupts import sigterm_interrupts, stopped_status


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def int_between(least: int, most: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer least..most (most None: no upper bound). why: what the bound is for,
    said in the error, e.g. "room for [CLS] and [SEP]"."""
    bounds = f"of at least {least}" if most is None else f"in {least}..{most}"
    reason = f" ({why})" if why else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}{reason}, got {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}{reason}, got {value}")
        return value

    parse.__name__ = f"integer {bounds}"  # argparse names the type by it in some messages
    return parse


def name_list(choices, what: str) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names (spaces around them ignored), each one of `choices` and named
    once; `what` names one ("variant")."""
    shown = ", ".join(choices)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"no {what} named in {text!r}; {what}s: {shown}")
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; {what}s: {shown}")
        repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if repeated is not None:
            raise argparse.ArgumentTypeError(f"{repeated!r} named twice")
        return names

    parse.__name__ = f"{what} list"
    return parse


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


SEED_LIMIT = 2**64 - 1  # torch.manual_seed takes seeds below 2^64; a run may use seed + 1 too


def seed_int(text: str) -> int:
    """A random seed: 0 <= seed < SEED_LIMIT (numpy.random.default_rng refuses negative seeds, torch larger ones)."""
    value = non_negative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed below {SEED_LIMIT}, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero."""
    value = finite_float(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def run_script(parser: argparse.ArgumentParser, run, argv: list[str] | None) -> int:
    """An analysis script's main: run(parsed args), a UserError (bad checkpoint, data or schedule) printed
    in one line with exit 2, as the mabert-hw commands report it. SIGTERM is taken as Ctrl-C (cli.main's
    rule): a script that keeps its finished work on Ctrl-C keeps it on SIGTERM; a stop it does not handle
    is said in one line, with exit stopped_status (130, or 143 for SIGTERM)."""
    args = parser.parse_args(argv)
    try:
        with sigterm_interrupts():
            return run(args)
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return stopped_status(stop)


def script_description(doc: str) -> str:
    """An analysis script's --help description: its docstring's first paragraph (its first line alone
    stopped mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def script_output_dir(parser: argparse.ArgumentParser, path: Path) -> Path:
    """make_output_dir for an analysis script's --out, before its work (which writes only at the end): a
    folder that cannot be made exits as a bad flag does, not after minutes of measuring."""
    try:
        return make_output_dir(str(path))
    except UserError as error:
        parser.error(f"argument --out: {error}")


def make_output_dir(text: str) -> Path:
    """Create the output directory before the work starts, so a bad path does not cost the run."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UserError(f"{text} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create directory {text}: {error.strerror}") from None
    return path


@contextmanager
def output_dir(text: str) -> Iterator[Path]:
    """make_output_dir(text) for the run in the with-block. The directories it creates are removed again
    when the block fails while they are still empty: a failed run used to leave an empty --out behind."""
    created = missing_prefixes(text)
    out = make_output_dir(text)
    try:
        yield out
    except BaseException:  # Ctrl-C included: before its first saved state, a run leaves nothing in OUT
        remove_empty(created)
        raise


def missing_prefixes(text: str) -> list[Path]:
    """The directories that mkdir(parents=True) of `text` may create, deepest first: each prefix of the
    path as written, with ".." taken textually ("missing/../out" makes "missing" and "out", never touches
    an existing "out"), kept where nothing exists yet."""
    written = Path(text).absolute()
    prefixes = {Path(os.path.normpath(p)) for p in (written, *written.parents)}
    return sorted((p for p in prefixes if not p.exists()), key=lambda p: len(p.parts), reverse=True)


def remove_empty(directories: list[Path]) -> None:
    """rmdir each, deepest first; rmdir removes only an empty directory, so one holding files stays (and so
    do the directories above it)."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # not empty, or not there
            continue


def interruptible(prog: str, work: Callable[[], int | None], kept: str | Callable[[], str]) -> int:
    """work() (its status, 0 for None); Ctrl-C, or SIGTERM under run_script, said in one line,
    `PROG: interrupted; KEPT`, exit stopped_status (130, or 143 for SIGTERM). kept says what the outputs
    hold: a callable is asked after the stop, for work whose outputs change as it goes."""
    try:
        return work() or 0
    except KeyboardInterrupt as stop:
        print(f"{prog}: interrupted; {kept() if callable(kept) else kept}", file=sys.stderr)
        return stopped_status(stop)


# --output names that mean this process's own streams ("-" as in most Unix tools): written to the stream, so
# that a file the stream was redirected to is appended to, not replaced
STANDARD_STREAMS = {"-": "stdout", "/dev/stdout": "stdout", "/dev/stderr": "stderr", "/dev/fd/1": "stdout",
                    "/dev/fd/2": "stderr", "/proc/self/fd/1": "stdout", "/proc/self/fd/2": "stderr"}


def output_file(text: str) -> str:
    """A file path to write later: checked before the work starts, so a typo does not cost the run."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty: give a file name")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(missing_directory(path.parent))
    try:
        target = path.resolve()  # a symlink is written through: its target's directory must exist too
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python < 3.13)
        raise argparse.ArgumentTypeError(f"cannot resolve {text}: {error}") from None
    if text in STANDARD_STREAMS:
        return text
    if not target.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text} leads to {target}, whose directory does not exist")
    if not target.exists() or target.is_file():  # a device or FIFO is written in place, not replaced
        _probe_directory(text, target.parent)
    return text


def missing_directory(directory: Path) -> str:
    """Why `directory`, which is not a directory, cannot hold a file: a file on its path, or nothing."""
    existing = next((part for part in (directory, *directory.parents) if part.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is not a directory"
    return f"no such directory: {directory}"


def _probe_directory(text: str, directory: Path) -> None:
    """Whether a file can be created in `directory`, as the output's temporary will be (atomic.atomic_path):
    a read-only directory or file system, or /proc, refuses it. Tried with a file removed at once."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".mabert-hw-probe-"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {text}: no new file can be made in {directory} "
                                         f"({error.strerror or error})") from None


PLOT_FORMATS = (".png", ".svg", ".pdf", ".eps", ".ps", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")  # matplotlib's
# Agg / vector writers, picked by the suffix


def plot_file(text: str) -> str:
    """output_file for a chart, whose suffix names one of matplotlib's formats (without one, matplotlib
    would write FILE.png, not the file named)."""
    output_file(text)
    if Path(text).suffix.lower() not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"{text}: name the chart's format by its suffix ({', '.join(PLOT_FORMATS)})")
    return text


def add_output(parser: argparse.ArgumentParser, what: str = "write to FILE instead of standard output") -> None:
    parser.add_argument("--output", metavar="FILE", type=output_file, help=what)


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", metavar="CKPT", help="preset name, 'minilm', checkpoint directory (HF, MA-BERT, "
                        "crammed), MA-BERT .pt / .pth / .bin file or config.json (see mabert-hw --help)")


def emit(text: str, output: str | None) -> None:
    """Print, or write to OUTPUT (the file is written whole, so an interrupted run leaves none)."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    text = text if text.endswith("\n") else text + "\n"
    stream = STANDARD_STREAMS.get(output)
    if stream is not None:
        getattr(sys, stream).write(text)
        return
    if Path(output).exists() and not Path(output).is_file():  # a device or pipe (/dev/null, a FIFO): in place
        try:
            Path(output).write_text(text)
        except OSError as error:
            raise UserError(f"cannot write {output}: {error.strerror or error}") from None
    else:
        write_text_whole(output, text)  # through a symlink: the link stays, its target is written
    print(f"wrote {output}", file=sys.stderr)


def check_configs_for_model(configs, where: str, spec) -> None:
    """Check quantization configs (read from `where`) against the model's ops before any work: a rule
    that matches no op gets a warning (most likely a typo in a name glob, which would otherwise leave
    the result silently equal to the config without the rule); per-group weights whose group size does
    not divide a linear's inputs are refused."""
    from dataclasses import replace

    from ..cost.counts import trace
    from ..quant.config import group_misfits, unmatched_rules

    # Traced where every weight is whole: an MA approximator's first linear takes the first T columns of
    # its stored W_1 (h, n), and the fixed backend groups the stored n columns (FixedBackend.truncate), so
    # the trace runs T = n tokens (positions widened to n if need be) with no PoWER elimination, which
    # would shorten later layers' rows. Other models: two tokens (no weight of theirs depends on T).
    variant = spec.variant
    if variant.softmax == "mlp":
        whole = replace(spec.with_variant(retention=None), max_positions=max(spec.max_positions, variant.softmax_input))
        ops = trace(whole, 1, variant.softmax_input)
    else:
        ops = trace(spec, 1, 2)
    warned = set()
    for config in configs:
        for op in ops:
            config.settings(op.name, op.kind)  # refuses settings that no op of that kind can run with
        for rule in unmatched_rules(config, [(op.name, op.kind) for op in ops]):
            if rule not in warned:
                warned.add(rule)
                print(f"mabert-hw: warning: {where} {rule} matches no op of {spec.name}", file=sys.stderr)
        misfits = group_misfits(config, ops)
        if misfits:
            more = f" (and {len(misfits) - 1} more ops)" if len(misfits) > 1 else ""
            raise UserError(f"{where}: {misfits[0]}{more}")


def task_data_help(*tasks: str) -> str:
    """--data's help for commands that evaluate `tasks` (eval.tasks names): what eval.tasks.task_file accepts,
    with the GLUE folder of each task."""
    from ..eval.tasks import TASK_FILES

    folders = [str(Path(TASK_FILES[task]).parent) for task in tasks]  # glue/SST-2, glue/STS-B
    if len(tasks) == 1:
        return (f"the {Path(folders[0]).name} dev TSV, the folder holding it ({folders[0]}), or a data root "
                f"(holding {TASK_FILES[tasks[0]]})")
    return (f"the task's dev TSV, the folder holding it ({' or '.join(folders)}), or a data root (holding "
            f"glue/<TASK>/dev.tsv)")


def add_task_engine(parser) -> None:
    """--engine of the commands that evaluate a task (task_calibration and task_backend build it)."""
    from ..backends import BACKENDS

    parser.add_argument("--engine", choices=[b for b in BACKENDS if b != "trace"], default="reference",
                        help="the engine to run (default reference); fixed: the default int8 quantization "
                        "config, calibrated first on the task's train split (beside the dev file, else the data "
                        "itself) and cached")


def task_calibration(engine: str, ck, task: str, data: str) -> Path | None:
    """The fixed engine's calibration for evaluating `ck` on `task` (None for the other engines): every op's
    activation ranges under the default QuantConfig, calibrated on the task's calibration texts (the train
    split beside the dev file when there is one, as `sweep` does), computed once and cached. The file's
    name holds a digest of all the ranges depend on."""
    if engine != "fixed":
        return None
    from ..cache import CACHE_ROOT
    from ..eval.sweep import calibration_source, prepare_calibration
    from ..eval.tasks import resolve

    file = resolve(data, task)
    path = prepare_calibration(ck, task, file, CACHE_ROOT)
    print(f"fixed engine: the default quantization config, calibrated on {calibration_source(file)} "
          f"(cached in {path})", file=sys.stderr)
    return path


def task_backend(engine: str, calibration: Path | None):
    """make_backend(engine) for evaluating a task; the fixed engine runs with `calibration` (task_calibration)."""
    from ..backends import make_backend

    if engine != "fixed":
        return make_backend(engine)
    from ..quant.calibrate import Calibration

    return make_backend("fixed", calibration=Calibration.load(calibration))

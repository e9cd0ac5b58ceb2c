"""`mabert-hw` command line: parse, call the library, print. One module per subcommand."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from ..errors import UserError
from ..interrupts import sigterm_interrupts, stopped_status
from .overwrite import refuse_outputs_over_inputs

# Each module defines register(subparsers), which adds its parser and sets `run`.
COMMANDS = ("profile", "check", "infer", "bench", "bench_ffn", "convert", "softmax_error", "compare", "eval",
            "power_search", "quant_error", "sweep")


# The checkpoint forms mabert_hw.checkpoint.load accepts (README.md says the same)
CHECKPOINT_FORMS = (
    "a preset (bert-base-uncased, bert-large-uncased, minilm-l6: architecture only); 'minilm' (the packaged "
    "all-MiniLM-L6-v2 weights and tokenizer); a HF BERT checkpoint directory (config.json + model.safetensors "
    "or pytorch_model.bin, sharded or not; BertModel, BertForSequenceClassification or BertForMaskedLM keys); "
    "a bare config.json, or a directory holding only one (architecture only); an MA-BERT or MA-DistilBERT "
    "checkpoint (an official state dict file, .pt / .pth / .bin, or a directory written by `convert`); or a "
    "crammed BERT / UltraFastBERT checkpoint directory (crammedBERT config.json, or cramming's "
    "model_config.json + model.pth).")
# NumPy's words for a shape past its index range
NUMPY_SIZE_ERRORS = ("Maximum allowed dimension exceeded", "Maximum allowed size exceeded", "array is too big")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mabert-hw",
        description="What a BERT-like model really costs, and what making it cheaper loses. "
        f"CKPT is {CHECKPOINT_FORMS}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(f"{__name__}.{name}").register(subparsers)
    parser.commands = subparsers.choices  # name -> its parser, for errors found after parsing
    return parser


def installed_version() -> str:
    """The installed distribution's version; "unknown" when run from a source tree pip never installed."""
    try:
        return version("mabert-hw")
    except PackageNotFoundError:
        return "unknown"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """parse_args, with an unknown flag refused by its command's parser: the error shows that command's
    usage line (argparse's own check, at the top level, shows `mabert-hw [-h] COMMAND ...`)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # one given before the command is the top level's (`mabert-hw --bogus profile ...`)
        before_command = unknown[0] in argv[:argv.index(args.command)]
        (parser if before_command else parser.commands[args.command]).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        refuse_outputs_over_inputs(args)
        with sigterm_interrupts():  # every command stops on SIGTERM as on Ctrl-C, keeping what Ctrl-C keeps
            return args.run(args) or 0
    except UserError as error:
        print(f"mabert-hw: error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:  # e.g. a --batch or --hidden far beyond this machine
        print(f"mabert-hw: error: not enough memory for these sizes ({str(error) or 'MemoryError'})", file=sys.stderr)
        return 2
    except ValueError as error:  # NumPy's refusal of a shape past its index range, e.g. --batch 1e20
        if not any(words in str(error) for words in NUMPY_SIZE_ERRORS):
            raise
        print(f"mabert-hw: error: these sizes are past what NumPy can index ({error})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print("mabert-hw: interrupted", file=sys.stderr)
        return stopped_status(stop)

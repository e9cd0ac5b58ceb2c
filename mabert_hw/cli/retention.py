"""The --retention argument shared by `eval`, `profile` and `compare`: a PoWER-BERT schedule given inline
(`48,27,20,15,11,1`, one count per layer) or as the file `power-search --out` writes."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..power import parse_retention
from ..spec import check_retention, whole_number


def add_retention_argument(parser, extra_help: str = "") -> None:
    parser.add_argument("--retention", metavar="L1,..,LL|CONFIG.json",
                        help="PoWER-BERT tokens kept after each layer (non-increasing, one per layer), "
                        f"or a `power-search --out` file{extra_help}")


def _config(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read the retention config {path}: {error.strerror}") from None
    try:
        config = json.loads(text)
        if isinstance(config, dict) and config.get("interrupted") is True:  # power-search's partial output
            raise UserError(f"{path}: an interrupted power-search, with no schedule chosen: finish it with "
                            "power-search --resume")
        config["retention"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a power-search config ({type(error).__name__}: {error})") from None
    return config


def read_retention(text: str | None, layers: int, seq_len: int | None = None) -> tuple[int, ...] | None:
    """The validated schedule (None without --retention); seq_len: also check l_1 <= seq_len."""
    if text is None:
        return None
    if Path(text).suffix != ".json":
        return parse_retention(text, layers, seq_len)
    retention = _config(Path(text))["retention"]
    if retention is None:
        raise UserError(f"{text}: the search kept no elimination (retention null): nothing to apply")
    try:  # a string would be read character by character, 4.7 or true cast to a count: refused
        if not isinstance(retention, list):
            raise TypeError
        counts = [whole_number(n, "retention") for n in retention]
    except (TypeError, ValueError):
        raise UserError(f"{text}: retention must be a list of integers, got {retention!r}") from None
    return check_retention(counts, layers, seq_len)


def searched_record(text: str | None) -> dict:
    """The `power-search --out` config --retention names, as recorded ({} for an inline schedule or none)."""
    if text is None or Path(text).suffix != ".json":
        return {}
    return _config(Path(text))


def searched_seq_len(text: str | None) -> int | None:
    """The padded length N a `power-search --out` config was searched at (None for inline schedules)."""
    value = searched_record(text).get("seq_len")
    if value is None:
        return None
    try:  # true, "64" or 0 is no length: refused, not passed on as one
        if whole_number(value, "seq_len") < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"{text}: seq_len must be a positive integer, got {value!r}") from None
    return int(value)

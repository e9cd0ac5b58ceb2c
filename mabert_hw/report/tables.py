"""Rows of dicts -> text table, Markdown, CSV or JSON. Stdlib only: `profile` must start fast."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError

FORMATS = ("table", "csv", "json", "md")


def figure(value: float) -> str:
    """A measured or derived number as the tables print it: 4 significant digits, whole with thousands
    separators where .4g would write an exponent (from 9999.5 up: 1e+04)."""
    text = f"{value:.4g}"
    return f"{value:,.0f}" if "e+" in text else text


def counted(count: int, noun: str) -> str:
    """'1 row', '6 rows': a count with its noun, plural unless one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def unpriced_count(n: int) -> str:
    """'1 op unpriced', '6 ops unpriced': a variant's status in compare's table and on its bar."""
    return f"{counted(n, 'op')} unpriced"


def read_csv_rows(path: str | Path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts of strings ([] when the file is absent); a file
    that cannot be read or parsed is one UserError line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _cell(value) -> str:
    if isinstance(value, float):
        return figure(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    """The given columns, else every key of every row in first-seen order: a first row with fewer keys
    (a skipped engine or variant) must not hide the others' columns."""
    return list(columns or dict.fromkeys(key for row in rows for key in row))


def text_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = _columns(rows, columns)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) for i in range(len(columns))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = _columns(rows, columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = _columns(rows, columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render(rows: Sequence[dict], fmt: str, columns: Sequence[str] | None = None) -> str:
    if fmt == "csv":
        return csv_table(rows, columns)
    if fmt == "md":
        return markdown_table(rows, columns)
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    return text_table(rows, columns)


def _looks_numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("e", "").replace("+", "").isdigit() or not text

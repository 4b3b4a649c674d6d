"""Where a row of a prompt file is, as an editor numbers it: line N (from 1), else row N of the data (from 0).

``datasets`` reads JSON Lines through pyarrow, whose parse errors say ``in row N``: N counts from 0,
skips blank lines and restarts in every block of the file (the bad line 90001 of a 23 MB file came
out as ``row 44754``). These helpers name the line itself.
"""

from __future__ import annotations

import json
import os

#: suffixes of files whose rows may be lines, and the header lines before the first row
HEADER_LINES = {".jsonl": 0, ".json": 0, ".csv": 1}


def row_lines(path: str, rows: int) -> list[int] | None:
    """The line of each of the ``rows`` rows of a JSON Lines or CSV file, or None where rows are not lines.

    Rows are the non-blank lines after the header. None if they do not number ``rows`` (a JSON document, a
    CSV with multi-line fields), or for Parquet and saved datasets.

    Args:
        path: The file or saved dataset ``datasets`` read.
        rows: How many rows ``datasets`` read from it.
    """
    header = HEADER_LINES.get(os.path.splitext(path)[1].lower())
    if header is None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = [number for number, line in enumerate(file, 1) if line.strip()][header:]
    return lines if len(lines) == rows else None


def where(option: str, lines: list[int] | None, row: int) -> str:
    """``train_file line 21`` when rows are lines, else ``train_file row 20``."""
    return f"{option} line {lines[row]}" if lines else f"{option} row {row}"


def json_error(path: str) -> str | None:
    """The first place a JSON or JSON Lines file does not parse, ``line 21, column 28: Expecting value``, or None.

    A ``.json`` file is read as one document first; if it holds more than one (JSON Lines), line by line.
    """
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read()
    if os.path.splitext(path)[1].lower() == ".json":
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # a broken document, not a sequence of them
                return f"line {err.lineno}, column {err.colno}: {err.msg}"
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}, column {err.colno}: {err.msg}"
    return None

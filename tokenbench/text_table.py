"""Plain-text tables that fit a terminal: one line per row, columns as wide as their widest cell.

Used by the comparison table (:mod:`tokenbench.report`) and the CLI's listings.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TABLE_WIDTH", "fit_width", "plain_table", "shorten"]

#: columns of the terminal table (``--format table`` without ``--wide``)
TABLE_WIDTH = 100


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis.

    >>> shorten("sppruner:context=false,merge=false", 20)
    'sppruner:context=fa…'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_width(table: list[dict[str, str]], column: str, width: int = TABLE_WIDTH, minimum: int = 10) -> list[dict[str, str]]:
    """``table`` with ``column``'s cells shortened so that :func:`plain_table` fits ``width`` characters.

    The other columns keep their width; ``column`` keeps at least ``minimum`` characters.
    """
    headers = _headers(table)
    if column not in headers:
        return table
    others = sum(_width(table, h) for h in headers if h != column)
    room = max(minimum, len(column), width - others - len(_GAP) * (len(headers) - 1))
    return [{**row, column: shorten(row[column], room)} if column in row else row for row in table]


_GAP = "  "


def _headers(table: list[dict[str, str]]) -> list[str]:
    return list(dict.fromkeys(h for row in table for h in row))


def _width(table: list[dict[str, str]], header: str) -> int:
    return max(len(header), *(len(row.get(header, "")) for row in table))


def plain_table(table: list[dict[str, str]], right: Sequence[str] = ()) -> str:
    """tabulate's ``simple`` layout without its padding of headers: every column as wide as its widest cell.

    >>> print(plain_table([{"strategy": "random", "n": "60"}, {"strategy": "fastv", "n": "500"}], right=["n"]))
    strategy    n
    --------  ---
    random     60
    fastv     500
    """
    headers = _headers(table)
    widths = [_width(table, h) for h in headers]

    def line(cells: Sequence[str]) -> str:
        return _GAP.join(c.rjust(w) if h in right else c.ljust(w) for h, c, w in zip(headers, cells, widths)).rstrip()

    rows = [line(headers), _GAP.join("-" * w for w in widths)] + [line([row.get(h, "") for h in headers]) for row in table]
    return "\n".join(rows)

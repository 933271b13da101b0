"""A small table of plain rows that shows itself in a notebook, with or without pandas.

The dataset checks (layout, validation, class counts) return lists of dicts; ``Table`` is how
a notebook shows them. ``to_frame()`` hands them to pandas when it is installed.

    table = Table([{"dataset": "coco_2017_val", "status": "ready"}], title="layout")
    table            # an HTML table in Jupyter, aligned text in a terminal
    table.to_frame() # a pandas.DataFrame if pandas is installed, else the table itself
"""

from __future__ import annotations

import html


class Table:
    """Rows (dicts) in a fixed column order, rendered as HTML or aligned text."""

    def __init__(self, rows, columns=None, title: str = ""):
        self.rows = [dict(row) for row in rows]
        self.columns = list(columns) if columns else _columns_of(self.rows)
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def to_frame(self):
        """A ``pandas.DataFrame`` of the rows when pandas is installed, else this table."""
        try:
            import pandas
        except ImportError:
            return self
        return pandas.DataFrame(self.rows, columns=self.columns)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(_text(row.get(c)))}</td>"
                             for c in self.columns) + "</tr>"
            for row in self.rows)
        caption = f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        cells = [[str(c) for c in self.columns]] + [[_text(row.get(c)) for c in self.columns] for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        lines = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in cells]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(([self.title] if self.title else []) + lines)

    __repr__ = __str__


def _columns_of(rows) -> list:
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)

"""Plain-text tables: the one formatter behind the CLI's reports, ``fscnn bench``,
:func:`fscnn.prune.format_sparsity_report` and :meth:`fscnn.nn.Module.plan`."""

__all__ = ["format_table"]


def format_table(headers, rows, align=None):
    """Format rows of cells as a text table with aligned columns.

    Parameters
    ----------
    headers : sequence of str
    rows : iterable of (sequence or None)
        Cells are formatted with ``str``; ``None`` draws a rule (e.g. before a total).
    align : str, optional
        One letter per column, ``"l"`` or ``"r"``. Default: first column left, others right.

    Returns
    -------
    str
        The table, lines joined by newlines, no trailing newline.

    Examples
    --------
    >>> print(format_table(["layer", "params"], [["conv", "864"], None, ["total", "864"]]))
    layer  params
    -----  ------
    conv      864
    -----  ------
    total     864
    """
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - set("lr"):
        raise ValueError(f"align must have one 'l' or 'r' per column ({len(headers)}), "
                         f"received {align!r}")
    rows = [None if row is None else [str(cell) for cell in row] for row in rows]
    for row in rows:
        if row is not None and len(row) != len(headers):
            raise ValueError(f"expected {len(headers)} cells per row, received {row}")
    widths = [max([len(h)] + [len(row[i]) for row in rows if row is not None])
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [rule if row is None else line(row)
                                              for row in rows])

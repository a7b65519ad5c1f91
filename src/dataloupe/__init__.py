"""dataloupe: data-centric image classification.

Versioned dataset tables (Lance), a training engine, per-sample analysis and an
automated train -> analyse -> fix the data -> retrain loop.
"""

__version__ = "0.1.0"


def show(table: str, **kwargs):
    """Open the dashboard on ``table`` with ``ids`` selected (see :func:`dataloupe.ui.show`).

    Example:
        >>> import dataloupe
        >>> dataloupe.show("cm-train", ids=[12, 40]).url   # doctest: +SKIP
    """
    from dataloupe.ui._show import show as _show  # the dashboard's imports load only when used

    return _show(table, **kwargs)

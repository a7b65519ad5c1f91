"""Versioned dataset tables on Lance: open, import, edit, log, diff, revert.

Example:
    >>> from dataloupe.project import Project
    >>> from dataloupe.tables import import_imagefolder, open_table, edit_table
    >>> p = Project.open("/tmp/demo")                                    # doctest: +SKIP
    >>> import_imagefolder(p, "train128", table="cm", unlabeled_dir="undefined")  # doctest: +SKIP
    >>> edit_table(p, "cm", action="exclude", where="label = 'muffin'", message="try")  # doctest: +SKIP
    >>> open_table(p, "cm", revision=1).summary()["excluded"]            # doctest: +SKIP
    0
"""

from dataloupe.tables._notes import annotate, notes_of, tag_counts
from dataloupe.tables._edit import (
    ACTIONS,
    EditOp,
    EditResult,
    TableDiff,
    add_rows,
    apply_edits,
    change_summary,
    create_table,
    diff_revisions,
    edit_table,
    joined_with,
    revert_table,
    rows_after_ops,
    set_classes,
    set_root,
    tag_table,
)
from dataloupe.tables._import import (
    MAX_PIXELS,
    ImportReport,
    check_image,
    export_csv,
    import_csv,
    import_idx,
    import_imagefolder,
    read_idx,
)
from dataloupe.tables._store import StaleRevisionError, TableConflictError, check_table_name, has_table
from dataloupe.tables._table import Table, TableRef, list_tables, open_ref, open_table, summarize

__all__ = [
    "check_table_name",
    "annotate", "notes_of", "tag_counts", "ACTIONS", "MAX_PIXELS", "StaleRevisionError", "EditOp", "rows_after_ops", "EditResult", "apply_edits", "ImportReport", "Table", "TableConflictError", "TableDiff",
    "TableRef", "add_rows", "change_summary", "check_image", "create_table", "diff_revisions",
    "edit_table", "export_csv", "has_table", "import_csv", "import_idx", "import_imagefolder", "joined_with",
    "list_tables", "open_ref", "open_table", "read_idx", "revert_table", "set_classes",
    "set_root", "summarize", "tag_table",
]

"""Read the loop folders (``loops/<name>/state.json``, ``review-it<k>.json``) for the dashboard.

Only reads; everything returned is plain data.
"""

from __future__ import annotations

import json

from dataloupe.project import NAME_PATTERN, DataloupeError, Project


def list_loops(project: Project) -> list[dict]:
    """One summary per loop: ``loop, train, val, policy, iterations (count), stopped, best_val_top1``."""
    root = project.root / "loops"
    out = []
    for state in sorted(root.glob("*/state.json")) if root.is_dir() else []:
        try:
            st = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        its = st.get("iterations") or []
        accs = [r.get("val_top1") for r in its if isinstance(r.get("val_top1"), (int, float))]
        out.append({"loop": st.get("loop", state.parent.name), "train": st.get("train"), "val": st.get("val"),
                    "policy": st.get("policy"), "iterations": len(its), "stopped": st.get("stopped"),
                    "best_val_top1": max(accs) if accs else None})
    return out


def read_loop(project: Project, name: str) -> dict:
    """``state.json`` of loop ``name`` plus ``review``: ``{iteration: flagged ids}``."""
    folder = project.root / "loops" / name
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or not (folder / "state.json").is_file():
        known = ", ".join(x["loop"] for x in list_loops(project)) or "none"
        raise DataloupeError(f"unknown loop {name!r} (known loops: {known})")
    try:
        st = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise DataloupeError(f"cannot read loop {name!r}: {e}") from None
    st.pop("shadow_labels", None)  # per-row labels: large, and not shown
    review = {}
    for f in folder.glob("review-it*.json"):
        try:
            review[int(f.stem[len("review-it"):])] = json.loads(f.read_text()).get("flagged", [])
        except (OSError, ValueError):
            continue
    return st | {"review": review, "has_plot": (folder / "accuracy.png").is_file()}

"""What a finished demo's last models would score with more evaluation views or as ensembles.

Reads demo projects (``dataloupe demo --project P`` or ``bench/demo_seeds.py``); trains nothing.
For every loop of the first project it prints the val top-1 of the loop's last model

1. as the run measured it (the recipe's mirror-average), and with the four 1- and 2-pixel
   shifts of the image added to the views (``replicate`` padding; test-time augmentation the
   demo does not ship: 5x the evaluation cost);
2. with ``--second P2``: the mean-softmax ensemble of that model and the same loop's last model
   in ``P2`` (another draw of the same scenario: the same validation rows, its own cleaning and
   training trajectory), next to the two models' mean;
3. with ``--members PREFIX``: the ensemble of the runs ``PREFIX-<loop>-m1`` and ``-m2`` of the
   first project (e.g. iteration 2 retrained twice with ``dataloupe train ... continue_from=...``),
   each member alone, and the three models together.

    PYTHONPATH=src python bench/demo_ensembles.py --project /tmp/ds15 --second /tmp/xc15
    PYTHONPATH=src python bench/demo_ensembles.py --project /tmp/ds15 --members cont8

Ensembling and the extra views are written here (a few lines each) because they are the
measurement itself: the shipped evaluation is :func:`dataloupe.models.infer`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dataloupe.data import sample_set_from_table  # noqa: E402
from dataloupe.models import create_model  # noqa: E402
from dataloupe.project import Project  # noqa: E402
from dataloupe.tables import open_table  # noqa: E402
from dataloupe.train._checkpoint import load_checkpoint  # noqa: E402
from dataloupe.train._collect import _loader, _options  # noqa: E402
from dataloupe.train._distributed import init_distributed  # noqa: E402


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` moved ``dx`` pixels right and ``dy`` down, the uncovered pixels repeating the edge."""
    p = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    return F.pad(x, (p, p, p, p), mode="replicate")[..., p - dy: p - dy + h, p - dx: p - dx + w]


@torch.no_grad()
def val_probs(project: Project, run: str, val: str, ctx, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (N, K), labels (N,))`` of ``run``'s checkpoint on ``val``: the mirror-average when
    the run used it, over the image and its four ``shift``-pixel moves when ``shift`` > 0."""
    ckpt = load_checkpoint(project.runs_dir / run / "checkpoints" / "best.pt")
    model = create_model(ckpt["model_name"], len(ckpt["classes"]), small_input=ckpt["small_input"])
    model.load_state_dict(ckpt["model"])
    model = model.to(memory_format=torch.channels_last).eval()
    samples = sample_set_from_table(open_table(project, val), list(ckpt["classes"]))
    opts = _options(model, ckpt, ctx)
    moves = [(0, 0)] + ([(shift, 0), (-shift, 0), (0, shift), (0, -shift)] if shift else [])
    out = np.zeros((len(samples), len(ckpt["classes"])), np.float32)
    for images, _, pos in _loader(project, samples, ckpt, ctx, 500):
        x = opts.inputs(images)
        views = [shifted(x, dx, dy) if dx or dy else x for dx, dy in moves]
        views += [v.flip(3) for v in views] if ckpt.get("tta_hflip") else []
        with opts.autocast():  # as the run evaluated (amp)
            out[pos.numpy()] = (sum(torch.softmax(model(v.contiguous(memory_format=torch.channels_last)).float(), 1)
                                    for v in views) / len(views)).numpy()
    return out, samples.labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--second", type=Path, help="another demo project with the same loops (another draw)")
    ap.add_argument("--members", help="also ensemble the runs PREFIX-<loop>-m1 and PREFIX-<loop>-m2")
    ap.add_argument("--loops", nargs="*", help="loop names (default: every loop of --project, and of --second)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ctx = init_distributed("auto")
    project = Project(args.project)
    second = Project(args.second) if args.second else None
    def loops_of(root: Path) -> set[str]:
        return {p.name for p in (root / "loops").iterdir() if (p / "state.json").is_file()}

    loops = args.loops or sorted(loops_of(args.project) & (loops_of(args.second) if args.second else
                                                            loops_of(args.project)))
    top1 = lambda p, y: 100 * float((p.argmax(1) == y).mean())  # noqa: E731
    rows = []
    for loop in loops:
        state = json.loads((project.root / "loops" / loop / "state.json").read_text())
        run, val = state["iterations"][-1]["run"], state["val"]
        base, y = val_probs(project, run, val, ctx)
        row = {"loop": loop, "as run": top1(base, y)}
        for s in (1, 2):
            row[f"+shifts {s}px"] = top1(val_probs(project, run, val, ctx, shift=s)[0], y)
        if second is not None:
            other = json.loads((second.root / "loops" / loop / "state.json").read_text())["iterations"][-1]["run"]
            p2, y2 = val_probs(second, other, val, ctx)
            if not np.array_equal(y, y2):
                sys.exit(f"{loop}: the two projects' validation rows differ")
            row["second draw"] = top1(p2, y)
            row["mean of the two"] = (row["as run"] + row["second draw"]) / 2
            row["ensemble of the two"] = top1(base + p2, y)
        if args.members:
            m1 = val_probs(project, f"{args.members}-{loop}-m1", val, ctx)[0]
            m2 = val_probs(project, f"{args.members}-{loop}-m2", val, ctx)[0]
            row.update({"member 1": top1(m1, y), "member 2": top1(m2, y), "members' ensemble": top1(m1 + m2, y),
                        "members + as run": top1(base + m1 + m2, y)})
        rows.append(row)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), file=sys.stderr)
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(r[keys[0]] if k == "loop" else f"{r[k]:.2f}" for k in keys))
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys[1:]}
    print("mean | " + " | ".join(f"{v:.2f}" for v in mean.values()))


if __name__ == "__main__":
    main()

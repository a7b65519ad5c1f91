"""Test-time views on finished demo models: does averaging more views of each image pay?

For every loop in a project made by ``dataloupe demo`` (or ``bench/demo_seeds.py``), re-evaluate
the baseline (iteration 1), the loop's last model and the oracle on the validation table with:

* ``none``: the image alone;
* ``mirror``: the image and its mirror (the recipes' ``tta_hflip``, what the runs logged; this
  column must reproduce their logged val top-1, a check that the probe evaluates as they did);
* ``shift4``: the mirror average over the image and its four 1-pixel shifts (10 views);
* ``shift8``: the same with the eight neighbouring shifts (18 views).

Shifts replicate the edge pixels. It prints val top-1 per model and view set and the gap closed
``(loop - baseline) / (oracle - baseline)`` with each, as a recipe key would apply it to all three.

Reads only: nothing is trained or written.

    PYTHONPATH=src python bench/demo_views.py --project P [--loops demo demo-s5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dataloupe.data import ShardSampler, make_loader, open_cache, plan_loader  # noqa: E402
from dataloupe.models import create_model  # noqa: E402
from dataloupe.project import Project  # noqa: E402
from dataloupe.train._checkpoint import load_checkpoint  # noqa: E402
from dataloupe.train._epoch import StepOptions  # noqa: E402
from dataloupe.train._inputs import load_train_data  # noqa: E402

FOUR = [(1, 0), (-1, 0), (0, 1), (0, -1)]
VIEWS = {"none": (False, []), "mirror": (True, []), "shift4": (True, FOUR),
         "shift8": (True, FOUR + [(1, 1), (-1, -1), (1, -1), (-1, 1)])}


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` moved ``dx`` pixels right and ``dy`` down, the edge pixels replicated."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return p[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


@torch.no_grad()
def mean_probs(model, x: torch.Tensor, mirror: bool, shifts: list) -> torch.Tensor:
    views = [x, x.flip(3)] if mirror else [x]
    return torch.stack([torch.softmax(model(v if s == (0, 0) else shifted(v, *s)).float(), 1)
                        for v in views for s in [(0, 0)] + shifts]).mean(0)


def top1_by_views(project: Project, run: str, samples) -> dict:
    ckpt = load_checkpoint(project.root / "runs" / run / "checkpoints" / "best.pt")
    model = create_model(ckpt["model_name"], len(ckpt["classes"]), small_input=ckpt["small_input"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    size = int(ckpt["image_size"])
    opts = StepOptions(torch.device("cpu"), tuple(ckpt["mean"]), tuple(ckpt["std"]))
    plan = plan_loader(len(samples), size, cuda=False)
    cache = open_cache(samples, size, project.cache_dir) if plan.mode == "cache" else None
    loader = make_loader(samples, plan, image_size=size, batch_size=500, cache=cache,
                         sampler=ShardSampler(len(samples)), persistent=False)
    right = dict.fromkeys(VIEWS, 0)
    n = 0
    for images, labels, _ in loader:
        x = opts.inputs(images)
        for name, (mirror, shifts) in VIEWS.items():
            right[name] += int((mean_probs(model, x, mirror, shifts).argmax(1) == labels).sum())
        n += len(labels)
    return {name: r / n for name, r in right.items()} | {"logged": ckpt.get("val_top1")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--loops", nargs="*", help="loop names (default: every loop in the project)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    project = Project(args.project)
    loops = args.loops or sorted(p.name for p in (args.project / "loops").iterdir())
    print(f"{'run':18s} {'logged':>7s} " + " ".join(f"{v:>7s}" for v in VIEWS))
    for loop in loops:
        state = json.loads((args.project / "loops" / loop / "state.json").read_text())
        its = state["iterations"]
        val = load_train_data(project, f"{state['train']}@{its[-1]['revision']}", state["val"]).val
        baseline = f"{loop}-baseline" if (args.project / "runs" / f"{loop}-baseline").is_dir() else its[0]["run"]
        runs = {"baseline": baseline, "loop": its[-1]["run"], "oracle": f"{loop}-oracle"}
        top1 = {role: top1_by_views(project, run, val) for role, run in runs.items()}
        for role, run in runs.items():
            t = top1[role]
            print(f"{run:18s} {t['logged']:7.4f} " + " ".join(f"{t[v]:7.4f}" for v in VIEWS))
        gaps = {v: (top1["loop"][v] - top1["baseline"][v]) / (top1["oracle"][v] - top1["baseline"][v]) for v in VIEWS}
        print(f"{loop + ' gap closed':26s} " + " ".join(f"{g:7.3f}" for g in gaps.values()), flush=True)


if __name__ == "__main__":
    main()

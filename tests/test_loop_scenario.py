"""The few-labels scenario keeps the truth out of the training labels and scores auto-labels."""

from __future__ import annotations

import pyarrow.compute as pc

from dataloupe.loop._scenario import few_labels_scenario, score_auto_labels
from dataloupe.tables import edit_table, import_imagefolder, open_table


def test_scenario_and_scoring(project, tmp_path):
    from conftest import write_imagefolder

    folder = write_imagefolder(tmp_path / "full", n_per_class=12, n_unlabeled=0)
    import_imagefolder(project, folder, table="src")
    sc = few_labels_scenario(project, "src", train="tr", per_class=4, flip=0.25, pool=20,
                             val="va", val_size=10, seed=1)
    t = open_table(project, "tr").to_arrow()
    s = open_table(project, "tr").summary()
    assert (s["labeled"], s["undefined"]) == (12, 20)
    truth = dict(zip(*(open_table(project, "src").to_arrow(columns=["id", "label"])[c].to_pylist()
                       for c in ("id", "label"))))
    lab = t.filter(pc.is_valid(t["label"]))
    wrong = [i for i, l, tid in zip(lab["id"].to_pylist(), lab["label"].to_pylist(),
                                    lab["truth_id"].to_pylist()) if truth[tid] != l]
    assert sorted(wrong) == sorted(sc.flipped_ids) and len(wrong) == 3
    assert open_table(project, "va").num_rows == 10
    pool = t.filter(pc.is_null(t["label"]))
    ids, tids = pool["id"].to_pylist()[:5], pool["truth_id"].to_pylist()[:5]
    for i, tid in zip(ids[:4], tids[:4]):  # four right, one wrong
        edit_table(project, "tr", action="set_label", label=truth[tid], ids=[i], message="auto")
    other = next(c for c in ("0", "1", "2") if c != truth[tids[4]])
    edit_table(project, "tr", action="set_label", label=other, ids=[ids[4]], message="auto")
    sc_ = score_auto_labels(project, "tr", "src")
    assert sc_["auto_labeled"] == 5 and sc_["correct"] == 4 and sc_["pool"] == 20
    assert abs(sc_["precision"] - 0.8) < 1e-9 and abs(sc_["coverage"] - 0.25) < 1e-9

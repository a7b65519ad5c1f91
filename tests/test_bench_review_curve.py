"""``bench/review_curve.py``'s bookkeeping (no training): the stratified half split and the
table's target check (the queue reaches random order's largest-budget accuracy at half the
labels)."""

from _bench import load_bench


def test_split_half_is_stratified_disjoint_and_seeded():
    rc = load_bench("review_curve")
    labels = ["a"] * 11 + ["b"] * 6
    pool, val = rc.split_half(labels, 3)
    assert sorted(pool.tolist() + val.tolist()) == list(range(17))
    assert [labels[i] for i in pool].count("a") == 5 and [labels[i] for i in pool].count("b") == 3
    assert rc.split_half(labels, 3)[0].tolist() == pool.tolist() != rc.split_half(labels, 4)[0].tolist()


def test_table_states_whether_the_queue_reaches_random_at_half_the_labels():
    rc = load_bench("review_curve")

    def seed(margin, random):
        return {"first": {"top1": 0.5}, "margin": {str(n): {"top1": v} for n, v in zip((50, 100, 200, 400), margin)},
                "random": {str(n): {"top1": v} for n, v in zip((50, 100, 200, 400), random)}}

    held = {"x": {"0": seed([0.6, 0.7, 0.8, 0.85], [0.55, 0.6, 0.7, 0.78]),
                  "1": seed([0.6, 0.7, 0.76, 0.85], [0.55, 0.6, 0.7, 0.76])}}
    out = rc.table(held, "x", ["margin", "random"], (50, 100, 200, 400))
    assert "seeds 0, 1" in out and "78.00 [76.0-80.0]" in out  # mean [min-max] over seeds
    assert "reaches random's N=400 (77.00%) at N=200 -> target held" in out
    late = {"x": {"0": seed([0.6, 0.7, 0.75, 0.8], [0.55, 0.6, 0.7, 0.78])}}
    assert "at N=400 -> target NOT held" in rc.table(late, "x", ["margin", "random"], (50, 100, 200, 400))
    # each seed's cell is the mean of its trainings; the header says how many
    rep = {"x": {"0": seed([0.6, 0.7, 0.8, 0.85], [0.55, 0.6, 0.7, 0.78])}}
    for v in rep["x"]["0"]["margin"].values():
        v["runs"] = [v["top1"] - 0.01, v["top1"] + 0.01]
    assert "the mean of 1/2 trainings" in rc.table(rep, "x", ["margin", "random"], (50, 100, 200, 400))

"""``bench/demo_breakdown.py``'s ranking arithmetic (no training): precision of the best-ranked
share of the pool, eligible rows (network and propagation agree) before any other."""

import numpy as np

from _bench import load_bench


def test_precision_at_ranks_eligible_rows_first_then_by_score():
    db = load_bench("demo_breakdown")
    # 10 rows; the five highest scores are wrong but not eligible; the eligible ones are right
    right = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], bool)
    score = np.array([.9, .9, .9, .9, .9, .5, .4, .3, .2, .1])
    eligible = ~np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    assert db.COVERAGES == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert db.precision_at(right, score, eligible) == [1.0, 5 / 6, 5 / 7, 5 / 8, 5 / 9]
    # all eligible: the score alone orders them (the wrong, high-scored rows come first)
    assert db.precision_at(right, score, np.ones(10, bool)) == [0.0, 1 / 6, 2 / 7, 3 / 8, 4 / 9]

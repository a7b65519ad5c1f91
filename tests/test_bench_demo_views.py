"""``bench/demo_views.py``'s test-time views (no training): shifts move the image the way they say
and keep its edge, and the views' mean is a probability distribution."""

import torch

from _bench import load_bench


def test_shifted_moves_right_and_down_and_replicates_the_edge():
    dv = load_bench("demo_views")
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows 0 1 2 / 3 4 5 / 6 7 8
    right = dv.shifted(x, 1, 0)
    assert right[0, 0].tolist() == [[0, 0, 1], [3, 3, 4], [6, 6, 7]]
    down = dv.shifted(x, 0, 1)
    assert down[0, 0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]
    assert torch.equal(dv.shifted(dv.shifted(x, -1, 0), 0, 0), dv.shifted(x, -1, 0))
    assert dv.shifted(x, -1, -1)[0, 0].tolist() == [[4, 5, 5], [7, 8, 8], [7, 8, 8]]


def test_mean_probs_averages_the_named_views():
    dv = load_bench("demo_views")
    model = lambda x: x.flatten(1)[:, :2] * 10.0  # noqa: E731 - "logits" = the first two pixels
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0  # top-left: class 0 wins on the image, class 1 on its mirror
    alone = dv.mean_probs(model, x, False, [])
    both = dv.mean_probs(model, x, True, [])
    assert alone.argmax(1).item() == 0
    assert torch.allclose(both, torch.tensor([[0.5, 0.5]]), atol=1e-6)
    assert torch.allclose(dv.mean_probs(model, x, True, dv.FOUR).sum(1), torch.ones(1))
    assert set(dv.VIEWS) == {"none", "mirror", "shift4", "shift8"}

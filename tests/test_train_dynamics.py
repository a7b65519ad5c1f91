import numpy as np
import torch

from dataloupe.train import aum, forgetting_events
from dataloupe.train._collect import sample_metrics
from dataloupe.train._epoch import logit_margins


def test_logit_margin_is_assigned_minus_largest_other():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    assert torch.allclose(logit_margins(logits, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))


def test_aum_and_forgetting_skip_unseen_epochs():
    nan = np.nan
    m = np.array([[1.0, -1.0, nan, 2.0],
                  [-0.5, 1.0, nan, nan],
                  [0.5, -2.0, nan, -1.0],
                  [-1.0, 3.0, nan, 1.0]], dtype=np.float32)
    a = aum(m)
    assert np.allclose(a[[0, 1, 3]], [0.0, 0.25, 2 / 3]) and np.isnan(a[2])
    # sample 0: + - + -  -> 2 forgettings; 1: - + - + -> 1; 2: never seen; 3: + (skip) - + -> 1
    assert forgetting_events(m).tolist() == [2, 1, 0, 1]


def test_sample_metrics_on_known_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]], dtype=np.float32)
    m = sample_metrics(probs, np.array([0, 0, -1]))
    assert m["predicted"].tolist() == [0, 2, 0]
    assert np.allclose(m["confidence"], [0.7, 0.6, 0.5]) and np.allclose(m["margin"], [0.5, 0.3, 0.0])
    assert np.allclose(m["loss"][:2], [-np.log(0.7), -np.log(0.1)]) and np.isnan(m["loss"][2])
    assert m["correct"][:2].tolist() == [True, False]
    assert np.isclose(m["entropy"][2], np.log(2), atol=1e-5)

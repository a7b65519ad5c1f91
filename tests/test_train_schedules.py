import pytest
import torch

from dataloupe.train._schedules import Schedule, build_optimizer, current_lr


def _lrs(name, steps=100, **kw):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    s = Schedule(name, opt, lr=0.1, epochs=10, steps_per_epoch=steps // 10, **kw)
    out = []
    for _ in range(steps):
        opt.step()
        s.step()
        out.append(current_lr(opt))
    return out, s, opt


def test_onecycle_warms_up_for_30_percent_then_anneals():
    lrs, _, _ = _lrs("onecycle", warmup_fraction=0.3)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 27 <= peak <= 31 and lrs[peak] == pytest.approx(0.1, rel=1e-3)
    assert lrs[-1] < 1e-4 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))


def test_cosine_goes_from_lr_to_min_lr():
    lrs, _, _ = _lrs("cosine", min_lr=1e-6)
    assert lrs[0] == pytest.approx(0.1, rel=1e-2) and lrs[-1] == pytest.approx(1e-6, rel=1e-3)
    assert lrs[49] == pytest.approx((0.1 + 1e-6) / 2, rel=0.05)


def test_plateau_cuts_on_flat_val_loss_and_resume_fast_forwards():
    _, s, opt = _lrs("plateau", steps=10, plateau_factor=0.5, plateau_patience=1)
    for _ in range(3):
        s.epoch_end(1.0)
    assert current_lr(opt) == pytest.approx(0.05)
    # a resumed step-wise schedule continues where it was
    lrs, _, _ = _lrs("onecycle")
    opt2 = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1)
    s2 = Schedule("onecycle", opt2, lr=0.1, epochs=10, steps_per_epoch=10)
    s2.resume({}, 40)
    assert current_lr(opt2) == pytest.approx(lrs[39], rel=1e-6)


def test_weight_decay_skips_norms_and_biases():
    opt = build_optimizer(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), "adamw", lr=1e-3,
                          weight_decay=0.05)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and len(decay["params"]) == 1 and len(no_decay["params"]) == 3


def test_hold_lr_runs_constant_after_the_schedule_and_resumes_there():
    opt = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1)
    s = Schedule("onecycle", opt, lr=0.1, epochs=6, steps_per_epoch=10, hold_lr=0.01)
    lrs = []
    for _ in range(100):
        opt.step()
        s.step()
        lrs.append(current_lr(opt))
    plain, _, _ = _lrs("onecycle", steps=60)  # the same schedule over 6 epochs without the hold
    assert lrs[:59] == pytest.approx(plain[:59], rel=1e-6)
    assert all(lr == 0.01 for lr in lrs[59:]) and s.holding and s.progress() == 1.0
    opt2 = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1)
    s2 = Schedule("onecycle", opt2, lr=0.1, epochs=6, steps_per_epoch=10, hold_lr=0.01)
    s2.resume({}, 80)
    assert current_lr(opt2) == 0.01 and s2.holding

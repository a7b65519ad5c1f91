import dataclasses

import pytest

from dataloupe.project import DataloupeError
from dataloupe.train import Recipe, list_recipes, load_recipe, valid_keys


def test_shipped_recipes_load_with_the_issue_hyperparameters():
    assert {"chihuahua-muffin-resnet18", "imagenet-resnet50-stage1", "imagenet-resnet50-stage2-finetune",
            "fashion-mnist"} <= set(list_recipes())
    cm = load_recipe("chihuahua-muffin-resnet18")
    assert (cm.model, cm.optimizer, cm.lr, cm.batch_size, cm.image_size) == ("resnet18", "adam", 1e-3, 16, 128)
    assert cm.rrc_scale == [0.8, 1.0] and cm.rrc_ratio == [0.9, 1.1] and cm.rotation == 15
    assert cm.color_jitter == [0.2, 0.2, 0.2, 0.02] and cm.scheduler == "plateau" and cm.pretrained is None
    s1 = load_recipe("imagenet-resnet50-stage1")
    assert (s1.optimizer, s1.nesterov, s1.momentum, s1.weight_decay) == ("sgd", True, 0.9, 1e-4)
    assert s1.scheduler == "onecycle" and s1.warmup_fraction == 0.3 and s1.effective_lr == pytest.approx(0.18)
    assert s1.autoaugment == "imagenet" and s1.random_erasing > 0 and s1.mixup_alpha > 0 and s1.cutmix_alpha > 0
    assert load_recipe("imagenet-resnet50-stage1", ["batch_size=960"]).effective_lr == pytest.approx(0.09)
    s2 = load_recipe("imagenet-resnet50-stage2-finetune")
    assert s2.continue_from and s2.scheduler == "cosine" and (s2.lr, s2.min_lr, s2.epochs) == (0.003, 1e-6, 50)
    assert s2.random_erasing == 0 and s2.cutmix_alpha == 0 and s2.mixup_alpha > 0 and s2.label_smoothing == 0.04


def test_overrides_are_typed():
    r = load_recipe("chihuahua-muffin-resnet18", ["epochs=2", "image_size=64", "lr=0.01", "rrc_scale=null",
                                                 "color_jitter=[0.1,0.1,0.1,0]"])
    assert (r.epochs, r.image_size, r.lr, r.rrc_scale) == (2, 64, 0.01, None)
    assert r.color_jitter == [0.1, 0.1, 0.1, 0.0]


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(DataloupeError) as e:
        load_recipe("chihuahua-muffin-resnet18", ["epoch=2"])
    msg = str(e.value)
    assert "epoch" in msg and "valid keys" in msg and "epochs" in msg and "image_size" in msg
    # the message lists every knob of the Recipe, and only those
    listed = msg.split("valid keys: ", 1)[1].split(", ")
    assert listed == valid_keys() and set(listed) == {f.name for f in dataclasses.fields(Recipe)}


@pytest.mark.parametrize("override, key", [("epochs=abc", "epochs"), ("optimizer=rmsprop", "optimizer"),
                                           ("lr=-1", "lr"), ("batch_size=0", "batch_size"),
                                           ("rrc_scale=[1]", "rrc_scale"), ("hflip=2", "hflip"),
                                           ("nesterov=maybe", "nesterov"), ("epochs", "epochs"),
                                           ("unlabeled_da_prior=skewed", "unlabeled_da_prior"),
                                           ("unlabeled_strong_scale=[0.3]", "unlabeled_strong_scale"),
                                           ("unlabeled_weak_scale=[1, 1, 1]", "unlabeled_weak_scale")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(DataloupeError, match=key):
        load_recipe("chihuahua-muffin-resnet18", [override])


def test_unknown_recipe_and_user_file(tmp_path):
    with pytest.raises(DataloupeError, match="known: .*chihuahua-muffin-resnet18"):
        load_recipe("no-such-recipe")
    f = tmp_path / "mine.yaml"
    f.write_text("model: resnet34\nepochs: 3\n")
    r = load_recipe(str(f), ["lr=0.5"])
    assert (r.name, r.model, r.epochs, r.lr) == ("mine", "resnet34", 3, 0.5)
    f.write_text("bogus_key: 1\n")
    with pytest.raises(DataloupeError, match="bogus_key"):
        load_recipe(str(f))

"""Pretrained weights load completely or not at all: timm through timm, run:NAME, bare backbones."""

import json

import pytest
import torch
from _train_helpers import CLASSES, FAST, make_digit_tables

from dataloupe.models import create_model, load_pretrained, supports_small_input
from dataloupe.project import DataloupeError, Project
from dataloupe.train import build_recipe, load_recipe, parse_overrides, show_run, train
from dataloupe.train._model_init import choose_normalisation, init_weights, small_input_for

timm = pytest.importorskip("timm")


def _timm_file(tmp_path, name, **kwargs):
    """A randomly initialised timm model (its own 1000-class head included) saved as a state dict."""
    torch.manual_seed(1)
    net = timm.create_model(name, **kwargs)
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    return net.state_dict(), path


@pytest.mark.parametrize("name", ["test_convnext", "test_vit"])
def test_timm_weights_round_trip_through_timm(tmp_path, name):
    state, path = _timm_file(tmp_path, name)
    model = create_model(name, 3, pretrained=path)
    report = model.weights_report
    own = model.backbone.state_dict()
    assert report.loaded == report.total == len(own) > 50
    for key, value in own.items():  # every backbone tensor is the file's
        assert torch.equal(value, state[key]), key
    assert report.head == "skipped (1000 classes in the file)" and not report.missing and not report.unexpected
    # mean/std/input size come from the weights' pretrained config (timm's test models: 0.5, 160 px)
    cfg = timm.data.resolve_model_data_config(timm.create_model(name))
    assert report.mean == list(cfg["mean"]) == [0.5, 0.5, 0.5] and report.std == list(cfg["std"])
    assert report.input_size == 160
    assert report.summary().startswith(f"loaded {len(own)}/{len(own)} backbone tensors from {path}; head skipped")


def test_timm_checkpoint_filter_is_applied(tmp_path):
    """A ViT saved at 32 px loads into the 160 px model: timm's filter resamples the position embedding."""
    state, path = _timm_file(tmp_path, "test_vit", img_size=32)
    model = create_model("test_vit", 3, pretrained=path)
    assert model.weights_report.loaded == model.weights_report.total
    assert model.backbone.pos_embed.shape != state["pos_embed"].shape
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    _, resnet = _timm_file(tmp_path, "test_resnet")
    with pytest.raises(DataloupeError, match=r"test_resnet\.pt fit 0 of 78 backbone tensors \(missing 78: cls_token,"
                                             r".*wrong model or file\?"):
        create_model("test_vit", 3, pretrained=resnet)
    # timm itself cannot map it: still one clear line
    with pytest.raises(DataloupeError, match=r"test_resnet\.pt do not load into test_convnext .*wrong model or file"):
        create_model("test_convnext", 3, pretrained=resnet)
    # a torchvision ResNet-18 file for ResNet-34: the missing blocks are named
    from torchvision import models as tvm

    torch.save(tvm.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(DataloupeError, match=r"fit 120 of 216 backbone tensors \(missing 96: layer1\.2\."):
        create_model("resnet34", 3, pretrained=tmp_path / "r18.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataloupeError, match="cannot read pretrained weights .*junk.pt"):
        create_model("resnet18", 3, pretrained=tmp_path / "junk.pt")
    with pytest.raises(DataloupeError, match="pretrained weights not found"):
        create_model("resnet18", 3, pretrained=tmp_path / "none.pt")


def test_torchvision_backbone_loads_and_small_stem_is_refused(tmp_path):
    from torchvision import models as tvm

    net = tvm.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model = create_model("resnet18", 3, pretrained=tmp_path / "r18.pt")
    r = model.weights_report
    assert (r.loaded, r.total, r.head, r.mean) == (120, 120, "skipped (1000 classes in the file)", None)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    # the small stem has a 3x3 conv1: the 7x7 ImageNet stem cannot load, and the error says what to do
    with pytest.raises(DataloupeError, match=r"wrong shape 1: conv1.weight.*set small_input=false"):
        create_model("resnet18", 3, small_input=True, pretrained=tmp_path / "r18.pt")


def test_timm_hub_download_path_from_a_local_cache(tmp_path, monkeypatch):
    """``pretrained: true`` goes through timm's own hub download; here the hub cache is seeded, offline."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    torch.manual_seed(2)
    net = timm.create_model("test_convnext")
    snap = tmp_path / "hub" / "models--timm--test_convnext.r160_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(snap / "snapshots" / ("0" * 40) / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = create_model("test_convnext", 3, pretrained=build_recipe({"pretrained": True}).pretrained)
    r = model.weights_report
    assert (r.loaded, r.total, r.source, r.head) == (99, 99, "timm:test_convnext", "skipped (removed by timm)")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(DataloupeError, match="downloads a timm model's published weights, but 'resnet18'"):
        create_model("resnet18", 3, pretrained="true")


def test_small_input_where_the_model_has_a_small_stem():
    assert supports_small_input("resnet18") and supports_small_input("convnet-xxs")
    assert supports_small_input("test_resnet") and not supports_small_input("test_vit")
    stem = create_model("test_resnet", 2, small_input=True).backbone
    assert stem.conv1[0].stride == (1, 1) and isinstance(stem.maxpool, torch.nn.Identity)
    assert create_model("test_resnet", 2, small_input=True)(torch.zeros(1, 3, 16, 16)).shape == (1, 2)
    with pytest.raises(DataloupeError, match="small_input=true is not supported for timm model 'test_vit'"):
        create_model("test_vit", 2, small_input=True)
    # automatic small_input only where it exists; explicit values are kept
    assert small_input_for(build_recipe({"model": "test_vit", "image_size": 32})) is False
    assert small_input_for(build_recipe({"model": "test_resnet", "image_size": 32})) is True
    assert small_input_for(build_recipe({"model": "test_resnet", "image_size": 32, "small_input": False})) is False


def test_recipe_pretrained_values():
    assert build_recipe(parse_overrides(["pretrained=run:a"])).pretrained == "run:a"
    assert build_recipe(parse_overrides(["pretrained=true"])).pretrained == "true"
    assert build_recipe(parse_overrides(["pretrained=false"])).pretrained is None
    assert build_recipe({"pretrained": "w/x.pt"}).pretrained == "w/x.pt"


# --- pretrained: run:NAME --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A tiny training run ``s1`` (convnet-xxs, Fashion-MNIST normalisation) on the digits tables."""
    tmp = tmp_path_factory.mktemp("runs")
    project = Project.open(tmp / "proj")
    make_digit_tables(project, tmp)
    train(project, "dig-train", "dig-val", load_recipe("fashion-mnist", FAST + ["epochs=1"]), run="s1", tty=False)
    return project


def _plain(*extra):
    """FAST overrides on the defaults: mean/std left at the defaults, so the weights' own are used."""
    return build_recipe(parse_overrides(FAST + list(extra)))


def test_pretrained_run_loads_every_backbone_tensor(stage1):
    best = torch.load(stage1.runs_dir / "s1" / "checkpoints" / "best.pt", weights_only=True)
    model = create_model("convnet-xxs", 10, small_input=True)
    reports = init_weights(stage1, _plain("pretrained=run:s1"), model, CLASSES)
    r = reports["pretrained"]
    backbone = model.backbone.state_dict()
    assert r.loaded == r.total == len(backbone) and r.head == "loaded"
    assert r.source.startswith("run:s1 (") and r.mean == best["mean"] == [0.286] * 3
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key
    # another class list: the backbone loads, the head does not
    r = init_weights(stage1, _plain("pretrained=run:s1"), create_model("convnet-xxs", 10, small_input=True),
                     CLASSES[::-1])["pretrained"]
    assert r.loaded == r.total and r.head == "skipped (other classes)"
    mean, std, source = choose_normalisation(_plain("pretrained=run:s1"), reports)
    assert (mean, std, source) == (best["mean"], best["std"], "pretrained")
    assert choose_normalisation(_plain("mean=[0.5,0.5,0.5]", "std=[0.2,0.2,0.2]"), reports)[2] == "recipe"


def test_training_starts_from_the_run(stage1, capsys):
    s1 = show_run(stage1, "s1")["best_val_top1"]
    info = train(stage1, "dig-train", "dig-val", _plain("pretrained=run:s1", "epochs=1", "lr=1e-7"), run="s2",
                 tty=False)
    out = capsys.readouterr().out
    assert "pretrained: loaded 48/48 backbone tensors from run:s1" in out and "head loaded" in out
    saved = json.loads((stage1.runs_dir / "s2" / "run.json").read_text())
    assert saved["pretrained"]["loaded"] == saved["pretrained"]["total"] == 48
    assert saved["normalisation"] == {"mean": [0.286] * 3, "std": [0.353] * 3, "source": "pretrained"}
    best = torch.load(stage1.runs_dir / "s2" / "checkpoints" / "best.pt", weights_only=True)
    assert best["mean"] == [0.286] * 3  # the checkpoint records the normalisation it trained with
    assert abs(info["best_val_top1"] - s1) <= 0.05  # lr ~ 0: the first epoch evaluates stage 1's model


def test_pretrain_run_checkpoint_backbone_only(stage1, capsys):
    """The ``dataloupe pretrain`` format: backbone keys only, ``kind: pretrain``."""
    best = torch.load(stage1.runs_dir / "s1" / "checkpoints" / "best.pt", weights_only=True)
    folder = stage1.runs_dir / "pre" / "checkpoints"
    folder.mkdir(parents=True)
    backbone = {k: v for k, v in best["model"].items() if k.startswith("backbone.")}
    torch.save({"model": backbone, "kind": "pretrain", "model_name": "convnet-xxs", "image_size": 16,
                "small_input": True, "mean": [0.4] * 3, "std": [0.3] * 3, "method": "simclr", "epoch": 3},
               folder / "best.pt")
    model = create_model("convnet-xxs", 10, small_input=True)
    head_before = model.head.weight.clone()
    r = init_weights(stage1, _plain("pretrained=run:pre"), model, CLASSES)["pretrained"]
    assert r.loaded == r.total == len(backbone) == len(model.backbone.state_dict()) and r.head == "new"
    assert torch.equal(model.head.weight, head_before) and r.mean == [0.4] * 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    train(stage1, "dig-train", "dig-val", _plain("pretrained=run:pre", "epochs=1"), run="from-pre", tty=False)
    assert "pretrained: loaded 48/48 backbone tensors from run:pre" in capsys.readouterr().out
    assert show_run(stage1, "from-pre")["normalisation"]["mean"] == [0.4] * 3


def test_pretrained_run_errors(stage1):
    def load(*extra, model="convnet-xxs", small=True):
        init_weights(stage1, _plain(*extra), create_model(model, 10, small_input=small), CLASSES)

    with pytest.raises(DataloupeError, match=r"pretrained=run:nope: unknown run 'nope'; known runs: .*s1"):
        load("pretrained=run:nope")
    (stage1.runs_dir / "empty").mkdir()
    with pytest.raises(DataloupeError, match="pretrained=run:empty: run 'empty' has no checkpoint at"):
        load("pretrained=run:empty")
    with pytest.raises(DataloupeError, match="are for model 'convnet-xxs', not 'convnet-xs'"):
        load("pretrained=run:s1", model="convnet-xs")
    with pytest.raises(DataloupeError, match="made with small_input=true but this model has small_input=false"):
        load("pretrained=run:s1", small=False)
    with pytest.raises(DataloupeError, match="invalid run name"):
        load("pretrained=run:../x")
    # through train: a name that points nowhere leaves no run behind; weights that do not fit fail the run
    with pytest.raises(DataloupeError, match="pretrained=run:nope: unknown run"):
        train(stage1, "dig-train", "dig-val", _plain("pretrained=run:nope"), run="never", tty=False)
    assert not (stage1.runs_dir / "never").exists()
    with pytest.raises(DataloupeError, match="are for model 'convnet-xxs', not 'convnet-xs'"):
        train(stage1, "dig-train", "dig-val", _plain("pretrained=run:s1", "model=convnet-xs"), run="xs", tty=False)
    assert show_run(stage1, "xs")["status"] == "failed"

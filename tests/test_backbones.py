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

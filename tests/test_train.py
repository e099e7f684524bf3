import dataclasses
import json
import math

import pytest
import torch

from nasfpn import load_genotype
from nasfpn.backbones import build_backbone
from nasfpn.cache import FeatureCache
from nasfpn.cli import main
from nasfpn.data import DetectionDataset, split_ids, synthetic_dataset
from nasfpn.evaluate import coco_ap, coco_detections
from nasfpn.train import ProxyConfig, ProxyTask, train_proxy

TINY = ProxyConfig(image_size=128, width=16, head_depth=1, steps=4, batch_size=4, report_every=2, warmup_steps=2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ann, images = synthetic_dataset(root, num_images=16, image_size=128, seed=3)
    everything = DetectionDataset(ann, images, 128)
    train_ids, val_ids = split_ids(everything.image_ids, 0.25, 0)
    return (DetectionDataset(everything.coco, images, 128, image_ids=train_ids),
            DetectionDataset(everything.coco, images, 128, image_ids=val_ids), root)


@pytest.fixture(scope="module")
def task(splits):
    train, val, root = splits
    backbone = build_backbone("resnet18", probe_size=128)
    return ProxyTask(train, val, backbone,
                     train_cache=FeatureCache.build(backbone, train, root, flips=(False, True)),
                     val_cache=FeatureCache.build(backbone, val, root, flips=(False,)))


def test_ground_truth_scores_ap_one(splits):
    """The evaluation path (canvas boxes -> original pixels -> COCO records -> pycocotools)."""
    _, val, _ = splits
    detections = []
    for index, image_id in enumerate(val.image_ids):
        for flip in (False, True):
            _, target = val.load(index, flip=flip)
            boxes = target["boxes"]
            if flip:  # un-mirror the canvas: detections are reported unflipped
                boxes = torch.stack([val.size - boxes[:, 2], boxes[:, 1], val.size - boxes[:, 0], boxes[:, 3]], 1)
            det = {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"]}
            if not flip:
                detections.append((image_id, det))
            else:
                torch.testing.assert_close(boxes, detections[-1][1]["boxes"])
    metrics = coco_ap(val.coco, coco_detections(detections, val), val.image_ids)
    assert metrics["ap"] > 0.97  # letterbox round trip costs a fraction of a pixel
    assert coco_ap(val.coco, [], val.image_ids)["ap"] == 0.0


def test_train_proxy_with_the_cache(task):
    reports = []
    result = train_proxy(load_genotype("fpn"), task, TINY, report=reports.append)
    assert result["status"] == "ok" and result["steps"] == 4
    for key in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "params", "macs", "seconds"):
        assert key in result
    assert 0.0 <= result["ap"] <= 1.0 and result["params"] > 0 and result["macs"] > 0
    assert [r["step"] for r in reports] == [2, 4]
    again = train_proxy(load_genotype("fpn"), task, TINY)
    assert again["final_loss"] == result["final_loss"]  # seeded


def test_cached_and_uncached_training_agree(task):
    uncached = ProxyTask(task.train, task.val, task.backbone)
    a = train_proxy(load_genotype("panet"), task, dataclasses.replace(TINY, steps=1))
    b = train_proxy(load_genotype("panet"), uncached, dataclasses.replace(TINY, steps=1))
    assert math.isclose(a["final_loss"], b["final_loss"], rel_tol=2e-3)  # float16 cache


def test_intermediate_evaluation_for_schedulers(task):
    reports = []
    train_proxy(load_genotype("bifpn"), task, dataclasses.replace(TINY, eval_every=2), report=reports.append)
    assert "ap" in reports[0] and reports[0]["step"] == 2


def test_exploding_loss_fails_the_trial_not_the_search(task):
    result = train_proxy(load_genotype("fpn"), task, dataclasses.replace(TINY, max_loss=1e-6))
    assert result["status"] == "failed" and "loss" in result["error"] and result["steps"] == 1
    assert result["ap"] == 0.0


def test_cache_is_reused_and_invalidated(splits, task):
    train, _, root = splits
    again = FeatureCache.build(task.backbone, train, root, flips=(False, True))
    assert again.folder == task.train_cache.folder
    other_weights = FeatureCache.build(task.backbone, train, root, flips=(False, True), weights_id="abc")
    assert other_weights.folder != task.train_cache.folder
    from nasfpn.cache import dataset_fingerprint
    images = root / next(p.name for p in root.iterdir() if p.name.startswith("synthetic")) / "images"
    bigger = DetectionDataset(train.coco, images, 256, image_ids=train.image_ids)
    assert dataset_fingerprint(bigger) != dataset_fingerprint(train)
    fewer = DetectionDataset(train.coco, images, 128, image_ids=train.image_ids[:-1])
    assert dataset_fingerprint(fewer) != dataset_fingerprint(train)
    features = task.train_cache.features([0, 1], [False, True])
    assert list(features) == ["c3", "c4", "c5"] and features["c3"].shape == (2, 128, 16, 16)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"proxy: unknown key\(s\) \['stepz'\]"):
        ProxyConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="proxy.image_size: must be a multiple of 128"):
        ProxyConfig(image_size=200)


def test_train_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["train", "--genotype", "fpn", "--steps", "2", "--batch-size", "2", "--image-size", "128",
                 "--width", "8", "--backbone", "resnet18", "--warmup-steps", "1", "--cache-dir", str(tmp_path),
                 "--json", str(out),
                 "--config", str(_config(tmp_path))])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AP      AP50" in printed and "warmup" in printed
    assert json.loads(out.read_text())["status"] == "ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy: {stepz: 2}\n")
    assert main(["train", "--config", str(bad), "--cache-dir", str(tmp_path)]) == 2
    assert "proxy: unknown key(s) ['stepz']" in capsys.readouterr().err


def _config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: {synthetic_images: 12}\nproxy: {head_depth: 1}\n")
    return path


def test_the_proxy_caps_repeats(task):
    nasfpn = load_genotype("nasfpn")  # 7 repeats
    capped = train_proxy(nasfpn, task, dataclasses.replace(TINY, steps=1, max_repeats=2))
    two = train_proxy(dataclasses.replace(nasfpn, repeats=2), task, dataclasses.replace(TINY, steps=1, max_repeats=None))
    assert capped["proxy_repeats"] == 2 and capped["params"] == two["params"] and capped["macs"] == two["macs"]
    fpn = train_proxy(load_genotype("fpn"), task, dataclasses.replace(TINY, steps=1, max_repeats=2))
    assert fpn["proxy_repeats"] == 1  # a cap, never more repeats than the genotype has
    with pytest.raises(ValueError, match="proxy.max_repeats"):
        ProxyConfig(max_repeats=0)
    with pytest.raises(ValueError, match="proxy.max_repeats"):
        ProxyConfig(max_repeats=True)


def test_mixed_precision_keeps_anchors_and_loss_in_float32(task):
    from nasfpn.train import autocast_settings, precision_name, proxy_device

    enabled, dtype = autocast_settings(True, proxy_device())
    if not enabled:
        pytest.skip("no native half precision here (a CPU without AMX / AVX-512 BF16)")
    one = dataclasses.replace(TINY, steps=1)
    mixed = train_proxy(load_genotype("fpn"), task, one)
    full = train_proxy(load_genotype("fpn"), task, dataclasses.replace(one, amp=False))
    assert full["precision"] == "float32" and mixed["precision"] == precision_name(True, proxy_device()) != "float32"
    assert math.isclose(mixed["final_loss"], full["final_loss"], rel_tol=0.05)  # same model, same batch
    from nasfpn.detector import ProxyDetector

    model = ProxyDetector(load_genotype("fpn"), task.channels, task.num_classes, 128, width=8, head_depth=1)
    seen = []
    model.retinanet.anchor_generator.register_forward_hook(lambda m, i, out: seen.extend(out))
    features = task.val_cache.features([0, 1], [False, False])
    with torch.autocast(proxy_device().type, dtype=dtype):
        model(None, task.val_cache.batch_targets([0, 1], [False, False]), features)
    assert seen and all(a.dtype == torch.float32 for a in seen)


def test_the_warm_up_is_cached_by_what_changes_it(splits, tmp_path):
    """Reused when only the repeat cap or the proxy seed differs (the warm-up's FPN is one cell and
    has its own seed), redone for another lr or warm-up seed."""
    from nasfpn.task import BackboneConfig, warmup_backbone

    train, val, _ = splits
    backbone = BackboneConfig(name="resnet18", warmup_steps=1)
    first = warmup_backbone(train, val, backbone, dataclasses.replace(TINY, max_repeats=3), tmp_path)
    written = first.stat().st_mtime_ns
    again = warmup_backbone(train, val, backbone, dataclasses.replace(TINY, max_repeats=1, threads=1), tmp_path)
    assert again == first and first.stat().st_mtime_ns == written
    # A proxy seed (confirmation, `nasfpn train --seed 1`) varies the proxy, never the backbone.
    assert warmup_backbone(train, val, backbone, dataclasses.replace(TINY, seed=1), tmp_path) == first
    reseeded = warmup_backbone(train, val, dataclasses.replace(backbone, warmup_seed=1), TINY, tmp_path)
    assert reseeded != first and reseeded.is_file()
    other = warmup_backbone(train, val, dataclasses.replace(backbone, warmup_lr=5e-4), TINY, tmp_path)
    assert other != first and other.is_file()


def test_remembered_anchor_matches_give_torchvisions_loss(task):
    """The detector matches each image's boxes to the anchors once; the loss stays torchvision's."""
    from torchvision.models.detection.image_list import ImageList

    from nasfpn.detector import ProxyDetector

    torch.manual_seed(0)
    model = ProxyDetector(load_genotype("fpn"), task.channels, task.num_classes, 128, width=8, head_depth=1).train()
    _, features, targets = task.batch("train", [0, 1, 2], [False, True, False])
    targets = targets + [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    features = {k: torch.cat([v, v[:1]]) for k, v in features.items()}
    matcher, calls = model.retinanet.proposal_matcher, []
    model.retinanet.proposal_matcher = lambda quality: calls.append(1) or matcher(quality)
    first = model(None, targets, features)
    assert len(calls) == 3  # one per image with boxes
    again = model(None, targets, features)
    assert len(calls) == 3  # none the second time
    pyramid = list(model.neck(features).values())
    anchors = model.retinanet.anchor_generator(ImageList(torch.empty(4, 0, 128, 128), [(128, 128)] * 4), pyramid)
    reference = model.retinanet.compute_loss(targets, model.retinanet.head(pyramid), anchors)
    assert len(calls) == 6  # torchvision's own compute_loss matched afresh
    for losses in (first, again):
        for name, value in reference.items():
            torch.testing.assert_close(losses[name], value)
    model.remember_matches = False  # as bench_proxy's speed test builds it: matching every time
    model(None, targets, features)
    assert len(calls) == 9

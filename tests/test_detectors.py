"""The proxy detectors (``proxy.detector``): FCOS and Faster R-CNN beside RetinaNet, one
interface, AugFPN's soft RoI selection and consistent supervision in each detector's form."""
import dataclasses
import json
import math

import pytest
import torch
from torchvision.models.detection import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import roi_align

from nasfpn import load_genotype
from nasfpn.cli import _parser, flag_values, main
from nasfpn.detectors import DETECTORS, FasterRCNNProxy, FCOSProxy, SoftRoISelection, build_detector
from nasfpn.evaluate import coco_detections
from nasfpn.neck import build_neck
from nasfpn.profile import count_params
from nasfpn.train import ProxyConfig, ProxyTask, precision_name, proxy_device, train_proxy

TINY = ProxyConfig(image_size=128, width=16, head_depth=1, steps=2, batch_size=4, report_every=1, warmup_steps=2)
# (detector, roi_extractor): every way a proxy can be built
KINDS = [("retinanet", "level"), ("fcos", "level"), ("faster_rcnn", "level"), ("faster_rcnn", "soft")]
NEW = KINDS[1:]
LOSSES = {"retinanet": {"classification", "bbox_regression"},
          "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
          "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}}


def _id(kind):
    return "-".join(kind)


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task(seed=7)


def _detector(task, kind, genotype="fpn", aux_loss=0.0, seed=0):
    torch.manual_seed(seed)
    detector, roi = kind
    return build_detector(detector, load_genotype(genotype), task.channels, task.num_classes, 128, width=16,
                          head_depth=1, anchor_scale=2.0, aux_loss=aux_loss, roi_extractor=roi)


def _batch(task, indices=(0, 1, 2)):
    _, features, targets = task.batch("train", list(indices), [False, True, False][:len(indices)])
    return features, targets


def _train_a_few_steps(model, task, steps=3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        features, targets = _batch(task, [(step * 4 + i) % len(task.train) for i in range(4)])
        loss = sum(model(None, targets, features).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("kind", KINDS, ids=_id)
def test_a_training_step_reaches_the_neck(task, kind):
    model = _detector(task, kind).train()
    features, targets = _batch(task)
    losses = model(None, targets, features)
    assert set(losses) == LOSSES[kind[0]]
    assert all(v.dtype == torch.float32 and math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    for level in (3, 4, 5):
        grad = next(model.neck.lateral[f"p{level}"].parameters()).grad
        assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.neck.cells.parameters())


@pytest.mark.parametrize("kind", KINDS, ids=_id)
def test_evaluation_gives_detections_in_canvas_pixels(task, kind):
    model = _detector(task, kind).eval()
    _, features, _ = task.batch("val", [0, 1], [False, False])
    with torch.no_grad():
        detections = model(None, None, features)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        n = len(det["scores"])
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert n > 0 or kind[0] == "retinanet"  # its focal-loss prior scores 0.01 untrained, under 0.05
        assert n == 0 or (det["boxes"].min() >= 0 and det["boxes"].max() <= 128)
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < task.num_classes)).all()


@pytest.mark.parametrize("kind", NEW, ids=_id)
def test_detections_carry_the_dataset_labels(task, kind):
    """A few steps of training, then detections whose labels are the dataset's (0-based, no
    background) and whose COCO records name the data set's category ids; Faster R-CNN's
    background class shifts its labels by one on the way in and back on the way out."""
    model = _detector(task, kind)
    seen = []
    if kind[0] == "faster_rcnn":
        sample = model.roi_heads.select_training_samples

        def spy(proposals, targets):
            out = sample(proposals, targets)
            seen.append(([t["labels"] for t in targets], out[2]))
            return out

        model.roi_heads.select_training_samples = spy
    _train_a_few_steps(model, task)
    if kind[0] == "faster_rcnn":
        features, targets = _batch(task)
        model.train()(None, targets, features)
        shifted, sampled = seen[-1]
        for original, given, labels in zip(targets, shifted, sampled):
            torch.testing.assert_close(given, original["labels"] + 1)  # 0 is torchvision's background
            assert set(labels[labels > 0].tolist()) <= set(given.tolist()) and (labels == 0).any()
        model.eval()
    _, features, _ = task.batch("val", list(range(len(task.val))), [False] * len(task.val))
    with torch.no_grad():
        detections = model(None, None, features)
    labels = torch.cat([d["labels"] for d in detections])
    assert len(labels) and 0 <= int(labels.min()) and int(labels.max()) < task.num_classes
    records = coco_detections(zip(task.val.image_ids, detections), task.val)
    assert records and {r["category_id"] for r in records} <= set(task.val.coco.getCatIds())
    # The label a detection carries is the predictor's class, minus the background for Faster R-CNN.
    with torch.no_grad():
        if kind[0] == "faster_rcnn":
            predictor = model.roi_heads.box_predictor.cls_score
            predictor.weight.zero_()
            predictor.bias.copy_(torch.tensor([-20.0, -20.0, 20.0] + [-20.0] * (task.num_classes - 2)))
        else:
            logits = model.fcos.head.classification_head.cls_logits
            logits.weight.zero_()
            logits.bias.copy_(torch.tensor([-20.0, 20.0] + [-20.0] * (task.num_classes - 2)))
        detections = model(None, None, features)
    assert all(len(d["labels"]) and (d["labels"] == 1).all() for d in detections)


@pytest.mark.parametrize("kind", NEW, ids=_id)
def test_train_proxy_with_each_detector(task, kind):
    """With the cache and with a running backbone, intermediate AP for ASHA, the detector named."""
    detector, roi = kind
    config = dataclasses.replace(TINY, detector=detector, roi_extractor=roi)
    reports = []
    result = train_proxy(load_genotype("fpn"), task, dataclasses.replace(config, eval_every=1), report=reports.append)
    assert result["status"] == "ok" and result["steps"] == 2 and result["detector"] == detector
    assert 0.0 <= result["ap"] <= 1.0 and math.isfinite(result["final_loss"])
    assert "ap" in reports[0] and reports[0]["step"] == 1 and "ap" not in reports[1]
    assert result["precision"] == precision_name(True, proxy_device())  # amp on by default: accepted
    assert result["params"] == count_params(build_neck(load_genotype("fpn"), task.channels, 16))  # the neck alone
    one = dataclasses.replace(config, steps=1, amp=False)
    cached = train_proxy(load_genotype("panet"), task, one)
    ran = train_proxy(load_genotype("panet"), ProxyTask(task.train, task.val, task.backbone), one)
    assert ran["status"] == "ok" and cached["precision"] == "float32"
    # the float16 cache (Faster R-CNN: 2e-4 apart at most, its proposals and sampled RoIs alike)
    assert math.isclose(ran["final_loss"], cached["final_loss"], rel_tol=2e-3)


class _NaNFeatures(ProxyTask):
    def batch(self, split, indices, flips):
        images, features, targets = super().batch(split, indices, flips)
        return images, {k: v * math.nan for k, v in features.items()}, targets


@pytest.mark.parametrize("kind", NEW, ids=_id)
def test_a_non_finite_loss_fails_the_trial(task, kind):
    broken = _NaNFeatures(task.train, task.val, None, task.train_cache, task.val_cache)
    config = dataclasses.replace(TINY, detector=kind[0], roi_extractor=kind[1])
    result = train_proxy(load_genotype("fpn"), broken, config)
    assert result["status"] == "failed" and "loss nan at step 1" in result["error"] and result["steps"] == 1
    assert result["ap"] == 0.0
    exploding = train_proxy(load_genotype("fpn"), task, dataclasses.replace(config, max_loss=1e-6))
    assert exploding["status"] == "failed" and "max_loss" in exploding["error"]


@pytest.mark.parametrize("kind", NEW, ids=_id)
def test_under_autocast_anchors_and_losses_stay_float32(task, kind):
    model = _detector(task, kind, aux_loss=0.25).train()
    generator = model.fcos.anchor_generator if kind[0] == "fcos" else model.rpn.anchor_generator
    seen = []
    generator.register_forward_hook(lambda m, i, out: seen.extend(out))
    features, targets = _batch(task)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(None, targets, features)
    assert seen and all(a.dtype == torch.float32 for a in seen)
    assert all(cell.dtype == torch.float32 for cell in generator.cell_anchors)
    assert any(name.startswith("aux_") for name in losses)
    assert all(v.dtype == torch.float32 and math.isfinite(float(v.detach())) for v in losses.values())


def test_fcos_remembers_torchvisions_assignment(task):
    model = _detector(task, ("fcos", "level")).train()
    features, targets = _batch(task)
    first = model(None, targets, features)
    assert len(model.matches) == 3
    again = model(None, targets, features)
    assert len(model.matches) == 3  # nothing new the second time
    pyramid = list(model.neck(features).values())
    points = model.fcos.anchor_generator(ImageList(torch.empty(3, 0, 128, 128), [(128, 128)] * 3), pyramid)
    head = {k: v.float() for k, v in model.fcos.head(pyramid).items()}
    reference = FCOS.compute_loss(model.fcos, targets, head, points, [p.shape[-2] * p.shape[-1] for p in pyramid])
    for losses in (first, again):
        for name, value in reference.items():
            torch.testing.assert_close(losses[name], value)


def test_faster_rcnn_remembers_the_rpn_matching(task):
    model = _detector(task, ("faster_rcnn", "level")).train()
    features, targets = _batch(task)
    torch.manual_seed(1)
    first = model(None, targets, features)
    assert len(model.rpn.matches) == 3
    torch.manual_seed(1)
    again = model(None, targets, features)
    model.remember_matches = False
    torch.manual_seed(1)
    fresh = model(None, targets, features)
    assert len(model.rpn.matches) == 3
    for name in ("loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(first[name], fresh[name])
        torch.testing.assert_close(again[name], fresh[name])


def test_soft_roi_selection_counts_as_augfpn():
    """AugFPN's extractor: 1x1 conv L*w -> w, ReLU, 3x3 conv w -> L (biases on both): 271,620
    parameters at width 256 over its four levels P2-P5."""
    def formula(width, levels):
        return (levels * width * width + width) + (9 * width * levels + levels)

    assert formula(256, 4) == 271_620
    assert count_params(SoftRoISelection(256, (2, 3, 4, 5))) == 271_620
    ours = SoftRoISelection(64, (3, 4, 5))
    assert count_params(ours) == formula(64, 3)
    first, _, second = ours.weigh
    assert (first.in_channels, first.out_channels, first.kernel_size) == (192, 64, (1, 1))
    assert (second.in_channels, second.out_channels, second.kernel_size) == (64, 3, (3, 3))
    model = FasterRCNNProxy(load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, 3, 128, width=64, roi_extractor="soft")
    assert isinstance(model.roi_heads.box_roi_pool, SoftRoISelection) and model.roi_heads.box_roi_pool.levels == (3, 4, 5)


def test_soft_roi_selection_weighs_every_level():
    torch.manual_seed(0)
    soft = SoftRoISelection(8, (3, 4, 5))
    x = {f"p{lv}": torch.rand(2, 8, 128 >> lv, 128 >> lv) for lv in (3, 4, 5)}
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 90.0]]), torch.tensor([[0.0, 0.0, 128.0, 128.0], [30.0, 30.0, 40.0, 50.0]])]
    pooled = [roi_align(x[f"p{lv}"], boxes, 7, spatial_scale=2.0 ** -lv, sampling_ratio=2) for lv in (3, 4, 5)]
    out = soft(x, boxes, [(128, 128)] * 2)
    assert out.shape == (3, 8, 7, 7)
    weights = torch.sigmoid(soft.weigh(torch.cat(pooled, 1)))
    torch.testing.assert_close(out, sum(weights[:, i:i + 1] * p for i, p in enumerate(pooled)))
    with torch.no_grad():  # the second level alone: a per-level sigmoid of 1, the others 0
        soft.weigh[2].weight.zero_()
        soft.weigh[2].bias.copy_(torch.tensor([-30.0, 30.0, -30.0]))
    torch.testing.assert_close(soft(x, boxes, [(128, 128)] * 2), pooled[1])


def test_the_level_extractor_pools_a_roi_from_the_level_of_its_anchor():
    """torchvision's MultiScaleRoIAlign over P3-P5, with FPN's rule scaled to the proxy's
    anchors: a RoI of side s goes to the level whose RPN anchor side (anchor_scale * stride) s
    reaches (torchvision's 224 at P4 would send every RoI under 224 pixels to P3)."""
    model = FasterRCNNProxy(load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, 3, 256, width=8, anchor_scale=2.0)
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["p3", "p4", "p5"] and model.roi_levels == [3, 4, 5]
    x = {f"p{lv}": torch.rand(1, 8, 256 >> lv, 256 >> lv) for lv in (3, 4, 5)}
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 100.0, 100.0],
                          [0.0, 0.0, 250.0, 250.0]])
    pool(x, [boxes], [(256, 256)])
    assert pool.map_levels([boxes]).tolist() == [0, 1, 2, 2]  # P3, P4, P5, P5
    sizes = [tuple(a) for a in model.rpn.anchor_generator.sizes]
    assert sizes == [(16.0,), (32.0,), (64.0,), (128.0,), (256.0,)]  # one size a level, P3..P7


@pytest.mark.parametrize("kind", NEW, ids=_id)
def test_consistent_supervision(task, kind):
    """Weighted ``aux_`` entries; the main losses as without it (the auxiliary parts are made
    last); gradients reach the laterals and never the cells; evaluation unchanged."""
    features, targets = _batch(task)
    model, plain = _detector(task, kind, aux_loss=0.5).train(), _detector(task, kind).train()
    torch.manual_seed(3)
    losses = model(None, targets, features)
    torch.manual_seed(3)
    reference = plain(None, targets, features)
    assert set(losses) == set(reference) | {f"aux_{name}" for name in reference if kind[0] == "fcos"
                                            or name in ("loss_classifier", "loss_box_reg")}
    for name, value in reference.items():
        torch.testing.assert_close(losses[name], value)
    model.zero_grad()
    sum(v for k, v in losses.items() if k.startswith("aux_")).backward()
    assert all(next(model.neck.lateral[f"p{lv}"].parameters()).grad.abs().sum() > 0 for lv in (3, 4, 5))
    assert all(p.grad is None for p in model.neck.cells.parameters())
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_")}
    assert own.keys() == plain.state_dict().keys()
    model.eval(), plain.eval()
    with torch.no_grad():
        for got, want in zip(model(None, None, features), plain(None, None, features)):
            torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=0)


def test_faster_rcnn_consistent_supervision_by_hand(task):
    """AugFPN's two-stage form: the sampled RoIs pooled from each lateral alone, a separate box
    head shared across levels, the same labels and targets, each level's loss times the weight."""
    features, targets = _batch(task)
    model = _detector(task, ("faster_rcnn", "level"), aux_loss=0.25).train()
    assert model.aux_levels == [3, 4, 5]
    sample, kept = model.roi_heads.select_training_samples, []
    model.roi_heads.select_training_samples = lambda p, t: kept.append(sample(p, t)) or kept[-1]
    losses = model(None, targets, features)
    proposals, _, labels, box_targets = kept[0]
    _, laterals = model.neck.forward_with_laterals(features)
    by_hand = {"loss_classifier": 0.0, "loss_box_reg": 0.0}
    for level in (3, 4, 5):
        pooled = roi_align(laterals[f"p{level}"], proposals, 7, spatial_scale=2.0 ** -level, sampling_ratio=2)
        logits, deltas = model.aux_box_predictor(model.aux_box_head(pooled))
        cls, box = fastrcnn_loss(logits, deltas, labels, box_targets)
        by_hand["loss_classifier"] += cls
        by_hand["loss_box_reg"] += box
    for name, value in by_hand.items():
        torch.testing.assert_close(losses[f"aux_{name}"], 0.25 * value)


def test_no_lateral_on_the_roi_levels_no_auxiliary_loss(task, caplog):
    model = _detector(task, ("faster_rcnn", "level"), genotype="bifpn", aux_loss=0.25)
    assert model.aux_box_head is None and "no auxiliary loss" in caplog.text
    assert _detector(task, ("fcos", "level"), genotype="bifpn", aux_loss=0.25).aux_levels == [6, 7]


def test_settings_are_refused_naming_the_key():
    from nasfpn.search.config import search_config

    with pytest.raises(ValueError, match=r"proxy\.detector: one of \['faster_rcnn', 'fcos', 'retinanet'\], got 'yolo'"):
        ProxyConfig(detector="yolo")
    with pytest.raises(ValueError, match=r"proxy\.detector"):
        search_config({"proxy": {"detector": "yolo"}})
    with pytest.raises(ValueError, match=r"proxy\.roi_extractor: one of \['level', 'soft'\], got 'mean'"):
        ProxyConfig(detector="faster_rcnn", roi_extractor="mean")
    for single_stage in ("retinanet", "fcos"):
        with pytest.raises(ValueError, match=r"proxy\.roi_extractor: 'soft' is an RoI extractor of a two-stage"):
            ProxyConfig(detector=single_stage, roi_extractor="soft")
        with pytest.raises(ValueError, match="roi_extractor"):
            build_detector(single_stage, load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, 3, 128, roi_extractor="soft")
    with pytest.raises(ValueError, match=r"proxy\.detector"):
        ProxyConfig(detector=["fcos"])
    assert ProxyConfig().detector == "retinanet" and ProxyConfig().roi_extractor == "level"
    assert sorted(DETECTORS) == ["faster_rcnn", "fcos", "retinanet"]
    for bad in ({"head_depth": 5}, {"aux_loss": -1.0}):
        for cls in (FCOSProxy, FasterRCNNProxy):
            with pytest.raises(ValueError):
                cls(load_genotype("fpn"), {3: 8, 4: 16, 5: 32}, 3, 128, **bad)


def test_the_recipe_names_the_detector(tmp_path):
    from nasfpn.search.config import merge_flags, search_config
    from nasfpn.search.confirm import NOT_RECIPE, recipe_name
    from nasfpn.search.driver import recipe_text
    from nasfpn.search.records import SEARCH, Candidate

    assert "detector" not in NOT_RECIPE and "roi_extractor" not in NOT_RECIPE
    configs = {kind: search_config({"proxy": {"detector": kind[0], "roi_extractor": kind[1]}}) for kind in KINDS}
    plain = configs[("retinanet", "level")]
    assert recipe_text(plain.proxy, plain).startswith("detector retinanet, ")
    assert recipe_text(configs[("fcos", "level")].proxy, plain).startswith("detector fcos, ")
    assert recipe_text(configs[("faster_rcnn", "soft")].proxy, plain).startswith(
        "detector faster_rcnn (soft RoI selection), ")
    assert len({recipe_text(c.proxy, c) for c in configs.values()}) == len(KINDS)
    assert recipe_name(configs[("fcos", "level")].proxy, plain.proxy) == "confirm(detector=fcos)"
    assert recipe_name(configs[("faster_rcnn", "soft")].proxy, configs[("faster_rcnn", "level")].proxy) == \
        "confirm(roi_extractor=soft)"
    assert recipe_name(plain.proxy, plain.proxy) == SEARCH
    genotype = load_genotype("fpn")
    keys = {Candidate.of(genotype, c.proxy, seed=0, recipe=recipe_name(c.proxy, plain.proxy)).key
            for c in configs.values()}
    assert len(keys) == len(KINDS)
    flags = flag_values(_parser().parse_args(["search", "--detector", "faster_rcnn", "--roi-extractor", "soft"]))
    proxy = search_config(merge_flags({"proxy": {"detector": "fcos"}}, **flags)).proxy
    assert (proxy.detector, proxy.roi_extractor) == ("faster_rcnn", "soft")


def test_a_resumed_search_keeps_its_detector(tmp_path):
    from nasfpn.search.driver import check_same_detector
    from nasfpn.search.ledger import Ledger
    from nasfpn.search.records import Candidate, TrialRecord

    retina, fcos = ProxyConfig(), ProxyConfig(detector="fcos")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    check_same_detector(tmp_path, fcos, ledger)  # nothing trained yet: any detector
    (tmp_path / "experiment.json").write_text(json.dumps({"name": "old"}))  # written before detectors were named
    candidate = Candidate.of(load_genotype("fpn"), retina, seed=0, baseline="fpn", stage="baseline")
    ledger.append(TrialRecord.finished(1, candidate, "ok", {"ap": 0.1, "reward": 0.1}))
    check_same_detector(tmp_path, retina, ledger)
    with pytest.raises(ValueError, match=r"proxy\.detector 'retinanet'.*now says 'fcos'"):
        check_same_detector(tmp_path, fcos, ledger)
    (tmp_path / "experiment.json").write_text(json.dumps({"detector": "fcos", "roi_extractor": "level"}))
    ledger.append(TrialRecord.finished(2, candidate, "ok", {"ap": 0.1, "reward": 0.1, "detector": "fcos"}))
    check_same_detector(tmp_path, fcos, Ledger(tmp_path / "ledger.jsonl"))
    with pytest.raises(ValueError, match=r"proxy\.detector 'fcos'"):
        check_same_detector(tmp_path, ProxyConfig(detector="faster_rcnn"), Ledger(tmp_path / "ledger.jsonl"))
    (tmp_path / "experiment.json").write_text(json.dumps({"detector": "faster_rcnn", "roi_extractor": "level"}))
    with pytest.raises(ValueError, match=r"proxy\.detector 'fcos'"):  # a trial of the ledger names it too
        check_same_detector(tmp_path, ProxyConfig(detector="faster_rcnn"), Ledger(tmp_path / "ledger.jsonl"))
    (tmp_path / "ledger.jsonl").write_text(
        (tmp_path / "ledger.jsonl").read_text().replace('"detector": "fcos"', '"detector": "faster_rcnn"'))
    with pytest.raises(ValueError, match=r"proxy\.roi_extractor 'level'.*now says 'soft'"):
        check_same_detector(tmp_path, ProxyConfig(detector="faster_rcnn", roi_extractor="soft"),
                            Ledger(tmp_path / "ledger.jsonl"))


def test_the_warm_up_always_trains_retinanet(task, tmp_path):
    """Searches for every detector rank necks on one warmed-up backbone's features."""
    from nasfpn.task import BackboneConfig, _warmup_plan

    backbone = BackboneConfig(name="resnet18", warmup_steps=1)
    plain = _warmup_plan(task.train, backbone, TINY, tmp_path)
    for detector, roi in NEW:
        path, key, config = _warmup_plan(task.train, backbone,
                                         dataclasses.replace(TINY, detector=detector, roi_extractor=roi), tmp_path)
        assert path == plain[0] and (config.detector, config.roi_extractor) == ("retinanet", "level")
        assert "detector" not in key["recipe"] and "roi_extractor" not in key["recipe"]


def test_train_fcos_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("data: {synthetic_images: 12}\nproxy: {head_depth: 1}\n")
    out = tmp_path / "result.json"
    code = main(["train", "--genotype", "fpn", "--detector", "fcos", "--steps", "2", "--batch-size", "2",
                 "--image-size", "128", "--width", "8", "--backbone", "resnet18", "--warmup-steps", "1",
                 "--cache-dir", str(tmp_path), "--json", str(out), "--config", str(config)])
    assert code == 0
    assert "detector  fcos" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["detector"] == "fcos"
    assert main(["train", "--detector", "yolo", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "proxy.detector" in err and "'faster_rcnn', 'fcos', 'retinanet'" in err and err.count("\n") == 1
    assert main(["train", "--detector", "fcos", "--roi-extractor", "soft", "--cache-dir", str(tmp_path)]) == 2
    assert "proxy.roi_extractor" in capsys.readouterr().err

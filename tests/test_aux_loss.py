"""AugFPN's consistent supervision (``proxy.aux_loss``): the detection loss on the neck's
laterals before fusion, through a separate training-only head."""
import dataclasses
import json
import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from nasfpn import load_genotype
from nasfpn.cli import _parser, flag_values, main
from nasfpn.detector import ProxyDetector
from nasfpn.neck import build_neck, example_inputs
from nasfpn.profile import count_params
from nasfpn.train import ProxyConfig, ProxyTask, train_proxy

TINY = ProxyConfig(image_size=128, width=16, head_depth=1, steps=3, batch_size=4, report_every=1, warmup_steps=2)
CHANNELS = {3: 8, 4: 16, 5: 32}
# The levels each reference neck makes at its width before fusion.
PRE_FUSION = {"fpn": [3, 4, 5], "panet": [3, 4, 5], "nasfpn": [3, 4, 5, 6, 7], "bifpn": [6, 7]}


@pytest.fixture(scope="module")
def task(tiny_task):
    return tiny_task(seed=5)


def _detector(task, name, aux_loss, seed=0):
    torch.manual_seed(seed)
    return ProxyDetector(load_genotype(name), task.channels, task.num_classes, 128, width=8, head_depth=1,
                         aux_loss=aux_loss)


def _batch(task):
    _, features, targets = task.batch("train", [0, 1, 2], [False, True, False])
    return features, targets


@pytest.mark.parametrize("name", sorted(PRE_FUSION))
def test_the_neck_returns_its_laterals_beside_the_same_pyramid(name):
    neck = build_neck(load_genotype(name), CHANNELS, width=16).eval()
    x = example_inputs(CHANNELS, 128, batch=2)
    outputs, laterals = neck.forward_with_laterals(x)
    assert neck.pre_fusion_levels == PRE_FUSION[name]
    assert list(laterals) == [f"p{lv}" for lv in PRE_FUSION[name]]
    assert all(v.shape[1] == 16 for v in laterals.values())
    for key, value in neck(x).items():
        torch.testing.assert_close(outputs[key], value, rtol=0, atol=0)
    for level in neck.lateral_levels:  # before any fusion: the lateral of the backbone feature itself
        torch.testing.assert_close(laterals[f"p{level}"], neck.lateral[f"p{level}"](x[f"c{level}"]), rtol=0, atol=0)


def test_the_exported_neck_has_no_laterals_method(tmp_path):
    from nasfpn.export import export_neck, load_exported

    export_neck(load_genotype("fpn"), CHANNELS, tmp_path / "neck.py", 16, "Neck")
    assert "lateral" in (tmp_path / "neck.py").read_text()
    assert not hasattr(load_exported(tmp_path / "neck.py", "Neck"), "forward_with_laterals")


@pytest.mark.parametrize("name", ["fpn", "nasfpn", "bifpn"])
def test_the_aux_loss_is_the_main_loss_on_the_laterals_times_its_weight(task, name):
    """Named entries, already weighted; the same anchors and matches, restricted to the
    pre-fusion levels; the main losses as without it."""
    features, targets = _batch(task)
    weight = 0.4
    model, plain = _detector(task, name, weight).train(), _detector(task, name, 0.0).train()
    losses = model(None, targets, features)
    assert set(losses) == {"classification", "bbox_regression", "aux_classification", "aux_bbox_regression"}
    reference = plain(None, targets, features)
    assert set(reference) == {"classification", "bbox_regression"}
    for key, value in reference.items():
        torch.testing.assert_close(losses[key], value)
    # The same loss computed here by hand: torchvision's loss on the aux head's outputs, over the
    # anchors of the pre-fusion levels, with the matching over all anchors cut to those levels.
    outputs, laterals = model.neck.forward_with_laterals(features)
    pyramid = list(outputs.values())
    anchors = model.retinanet.anchor_generator(ImageList(torch.empty(3, 0, 128, 128), [(128, 128)] * 3), pyramid)
    sizes = [p.shape[-2] * p.shape[-1] * 9 for p in pyramid]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    keep = torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i, lv in enumerate(model.neck.levels)
                      if lv in PRE_FUSION[name]])
    matched = [model.retinanet.proposal_matcher(box_ops.box_iou(t["boxes"], a))[keep] for t, a in zip(targets, anchors)]
    by_hand = model.aux_head.compute_loss(targets, model.aux_head(list(laterals.values())),
                                          [a[keep] for a in anchors], matched)
    for key, value in by_hand.items():
        torch.testing.assert_close(losses[f"aux_{key}"], weight * value)
    torch.testing.assert_close(sum(losses.values()) - sum(reference.values()), weight * sum(by_hand.values()))


def test_evaluation_has_no_auxiliary_cost(task):
    """The same initialisation with or without it; evaluation never runs the auxiliary head and
    gives the same detections; the neck's parameters and state are those without it."""
    model, plain = _detector(task, "nasfpn", 0.25).eval(), _detector(task, "nasfpn", 0.0).eval()
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")}
    assert own.keys() == plain.state_dict().keys() and len(own) < len(model.state_dict())
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    assert model.neck.state_dict().keys() == plain.neck.state_dict().keys()
    assert count_params(model.neck) == count_params(plain.neck)
    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    features, _ = _batch(task)
    with torch.no_grad():
        detections, expected = model(None, None, features), plain(None, None, features)
    assert not calls
    for got, want in zip(detections, expected):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert _detector(task, "fpn", 0.0).aux_head is None  # off: nothing is made


def test_the_aux_gradient_reaches_the_laterals_and_not_the_fusion(task):
    features, targets = _batch(task)
    model = _detector(task, "nasfpn", 0.25).train()
    losses = model(None, targets, features)
    (losses["aux_classification"] + losses["aux_bbox_regression"]).backward()
    for level in (3, 4, 5):
        grad = model.neck.lateral[f"p{level}"].conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.neck.extra.parameters())
    assert all(p.grad is None for p in model.neck.cells.parameters())  # after fusion: not reached
    assert all(p.grad is None for p in model.retinanet.head.parameters())  # a separate head
    assert all(p.grad is not None for p in model.aux_head.parameters())


def test_the_losses_stay_float32_under_autocast(task):
    features, targets = _batch(task)
    model = _detector(task, "fpn", 0.25).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(None, targets, features)
    assert set(losses) >= {"aux_classification", "aux_bbox_regression"}
    assert all(v.dtype == torch.float32 and math.isfinite(float(v.detach())) for v in losses.values())


def test_invalid_weights_are_refused_naming_the_key():
    for bad in (-0.1, True, "0.25", math.nan, math.inf, None):
        with pytest.raises(ValueError, match=r"proxy\.aux_loss"):
            ProxyConfig(aux_loss=bad)
    with pytest.raises(ValueError, match=r"proxy\.aux_loss"):
        ProxyConfig.from_dict({"aux_loss": -1})
    with pytest.raises(ValueError, match="aux_loss"):
        ProxyDetector(load_genotype("fpn"), CHANNELS, 3, 128, width=8, aux_loss=-1.0)
    assert ProxyConfig(aux_loss=1).aux_loss == 1.0 and isinstance(ProxyConfig(aux_loss=1).aux_loss, float)
    assert ProxyConfig().aux_loss == 0.0  # off by default


def test_train_proxy_with_the_aux_loss(task):
    on = dataclasses.replace(TINY, aux_loss=0.25)
    reports = []
    result = train_proxy(load_genotype("fpn"), task, on, report=reports.append)
    off = train_proxy(load_genotype("fpn"), task, TINY)
    assert result["status"] == "ok" and result["steps"] == 3 and 0.0 <= result["ap"] <= 1.0
    assert result["params"] == off["params"] and result["macs"] == off["macs"]  # the neck alone
    assert math.isfinite(result["final_loss"]) and result["final_loss"] != off["final_loss"]
    assert [r["step"] for r in reports] == [1, 2, 3]
    # A running backbone, not the cache.
    uncached = ProxyTask(task.train, task.val, task.backbone)
    ran = train_proxy(load_genotype("panet"), uncached, dataclasses.replace(on, steps=1))
    cached = train_proxy(load_genotype("panet"), task, dataclasses.replace(on, steps=1))
    assert ran["status"] == "ok" and math.isclose(ran["final_loss"], cached["final_loss"], rel_tol=2e-3)


def test_the_recipe_names_it():
    from nasfpn.search.config import merge_flags, search_config
    from nasfpn.search.confirm import NOT_RECIPE, recipe_name
    from nasfpn.search.driver import recipe_text
    from nasfpn.search.records import SEARCH, Candidate

    assert "aux_loss" not in NOT_RECIPE
    config = search_config({"proxy": {"aux_loss": 0.25}})
    assert config.proxy.aux_loss == 0.25
    with pytest.raises(ValueError, match=r"proxy\.aux_loss"):
        search_config({"proxy": {"aux_loss": -1}})
    plain = search_config()
    assert recipe_name(config.proxy, plain.proxy) == "confirm(aux_loss=0.25)"
    assert recipe_name(plain.proxy, plain.proxy) == SEARCH
    assert "aux_loss 0.25" in recipe_text(config.proxy, config) and "aux" not in recipe_text(plain.proxy, plain)
    genotype = load_genotype("fpn")
    keys = {Candidate.of(genotype, proxy, seed=0, recipe=recipe_name(proxy, plain.proxy)).key
            for proxy in (plain.proxy, config.proxy)}
    assert len(keys) == 2
    assert search_config(merge_flags({"proxy": {"aux_loss": 0.25}}, aux_loss=0.5)).proxy.aux_loss == 0.5
    # `--aux-loss 0` is a value given (0 == False must not drop it): it turns a YAML's weight off.
    for command in ("train", "search"):
        flags = flag_values(_parser().parse_args([command, "--aux-loss", "0"]))
        assert flags["aux_loss"] == 0.0
        assert search_config(merge_flags({"proxy": {"aux_loss": 0.25}}, **flags)).proxy.aux_loss == 0.0
    assert "aux_loss" not in flag_values(_parser().parse_args(["train"]))


def test_the_warm_up_never_uses_it(task, tmp_path):
    """A search with it and one without rank necks on the same warmed-up backbone."""
    from nasfpn.task import BackboneConfig, _warmup_plan

    backbone = BackboneConfig(name="resnet18", warmup_steps=1)
    path, key, config = _warmup_plan(task.train, backbone, dataclasses.replace(TINY, aux_loss=0.25), tmp_path)
    assert config.aux_loss == 0.0 and "aux_loss" not in key["recipe"]
    assert path == _warmup_plan(task.train, backbone, TINY, tmp_path)[0]


def test_train_from_the_command_line_with_it(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("data: {synthetic_images: 12}\nproxy: {head_depth: 1}\n")
    out = tmp_path / "result.json"
    code = main(["train", "--genotype", "fpn", "--steps", "2", "--batch-size", "2", "--image-size", "128",
                 "--width", "8", "--backbone", "resnet18", "--warmup-steps", "1", "--cache-dir", str(tmp_path),
                 "--aux-loss", "0.25", "--json", str(out), "--config", str(config)])
    assert code == 0
    assert "aux loss  0.25" in capsys.readouterr().out
    assert json.loads(out.read_text())["status"] == "ok"
    assert main(["train", "--aux-loss", "-1", "--cache-dir", str(tmp_path)]) == 2
    assert "proxy.aux_loss" in capsys.readouterr().err

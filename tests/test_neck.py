import hashlib
import json
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import nasfpn
from nasfpn import GenotypeError, build_neck, load_genotype
from nasfpn.neck import example_inputs
from nasfpn.ops import WeightedFusion, global_attention, global_attention_avg
from nasfpn.profile import count_params, neck_cost

RESNET50 = {3: 512, 4: 1024, 5: 2048}
EFFICIENTNET_B0 = {3: 40, 4: 112, 5: 320}

# Digests of the state-dict names and shapes (width 8, C3-C5 of 8, 16, 32 channels, at most two
# repeats) as the builder made them before the vocabulary refactor (main at 1b21372): trained
# checkpoints and exported files load only while these stay put. The genotypes are
# test_canonical's.
STATE_DICT_DIGESTS = {
    "fpn": "6e55474df87d0f9e",
    "panet": "270b3b02d85879aa",
    "bifpn": "8eff2a5694a395a7",
    "nasfpn": "1c2c7bfb9c91ee73",
    "wide seed 0": "858c969ecb870ed5",
    "wide seed 1": "41b991a5600e663e",
    "wide seed 5": "795dbe2d0fdca737",
    "nasfpn seed 0": "1b4d39cbe8c53e30",
    "attention on a level tie": "53228bf5ab2930e8",
}


def test_fpn_matches_torchvision_exactly():
    torch.manual_seed(0)
    theirs = FeaturePyramidNetwork([512, 1024, 2048], 256, extra_blocks=LastLevelP6P7(256, 256)).eval()
    ours = build_neck(load_genotype("fpn"), RESNET50, 256).eval()
    assert count_params(ours) == count_params(theirs)
    # torchvision's layers -> ours: laterals, 3x3 output convs (n0: P5, n2: P4, n3: P3), P6/P7.
    mapping = {"inner_blocks.0.0": "lateral.p3", "inner_blocks.1.0": "lateral.p4", "inner_blocks.2.0": "lateral.p5",
               "layer_blocks.0.0": "cells.0.n3.op", "layer_blocks.1.0": "cells.0.n2.op",
               "layer_blocks.2.0": "cells.0.n0.op", "extra_blocks.p6": "extra.p6.conv", "extra_blocks.p7": "extra.p7.conv"}
    state = {}
    for key, value in theirs.state_dict().items():
        prefix, param = key.rsplit(".", 1)
        state[f"{mapping[prefix]}.{param}"] = value
    ours.load_state_dict(state)  # strict: every parameter of ours is covered
    x = example_inputs(RESNET50, 256, batch=2)
    expected = theirs(OrderedDict(x))
    got = ours(x)
    assert list(got) == ["p3", "p4", "p5", "p6", "p7"]
    for want, have in zip(expected.values(), got.values()):
        assert want.shape == have.shape
        torch.testing.assert_close(have, want, rtol=0, atol=1e-5)


def test_bifpn_d0_parameter_count_matches_effdet():
    # Reference: rwightman/efficientdet-pytorch (effdet 0.4.1), config "efficientdet_d0",
    # BiFpn(config, feature_info) with EfficientNet-B0's C3-C5 channels (40, 112, 320) at
    # reductions 8/16/32: sum(p.numel() for p in bifpn.parameters()) == 194,361 (measured with
    # timm 1.0.31, torch 2.14.1). Its parts: P6 from C5 by 1x1 conv + BN 20,608; first-cell
    # edge adapters 58,496; 24 fusion nodes of 4,802 / 4,803 parameters. ("tf_efficientdet_d0"
    # keeps redundant conv biases: 196,281.)
    reference = 194_361
    ours = count_params(build_neck(load_genotype("bifpn"), EFFICIENTNET_B0))
    assert abs(ours - reference) / reference < 0.01
    assert ours == reference


@pytest.mark.parametrize("name", ["fpn", "panet", "bifpn", "nasfpn", "augfpn"])
def test_reference_forward_resnet50_shapes(name):
    genotype = load_genotype(name)
    neck = build_neck(genotype, RESNET50)
    x = example_inputs(RESNET50, 512)  # C3-C5 of a 512 image: 64, 32, 16
    before = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        out = neck(x)
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    for level, tensor in zip(range(3, 8), out.values()):
        assert tensor.shape == (1, genotype.width, 512 >> level, 512 >> level)
        assert torch.isfinite(tensor).all()
    assert neck.out_channels == genotype.width
    assert all(torch.equal(before[k], x[k]) for k in x)  # the input is not mutated


def test_reference_table(capsys):
    rows = []
    for name in ["fpn", "panet", "bifpn", "nasfpn"]:
        cost = neck_cost(load_genotype(name), RESNET50, 512)
        rows.append((name, cost["params"], cost["macs"]))
    with capsys.disabled():
        print("\nreference necks on ResNet-50 C3-C5, 512x512 input")
        print(f"{'neck':8s} {'params':>12s} {'GMACs':>8s}")
        for name, params, macs in rows:
            print(f"{name:8s} {params:12,d} {macs / 1e9:8.2f}")
    by_name = {name: (params, macs) for name, params, macs in rows}
    # Sanity of relative costs: NAS-FPN 7@256 >> PANet > FPN > BiFPN (width 64).
    assert by_name["nasfpn"][0] > by_name["panet"][0] > by_name["fpn"][0] > by_name["bifpn"][0]
    assert by_name["fpn"][0] == 3_868_672  # equals torchvision's FPN, checked above


def test_repeats_stack_cells_without_sharing():
    genotype = load_genotype("nasfpn").replace(repeats=2, width=16)
    neck = build_neck(genotype, {3: 8, 4: 8, 5: 8})
    assert len(neck.cells) == 2
    one = build_neck(genotype.replace(repeats=1), {3: 8, 4: 8, 5: 8})
    cell_params = count_params(neck.cells[0])
    assert count_params(neck) - count_params(one) == cell_params
    assert neck.cells[0].n0.op.conv.weight is not neck.cells[1].n0.op.conv.weight


def test_odd_input_sizes():
    neck = build_neck(load_genotype("panet"), {3: 8, 4: 8, 5: 8}, width=8)
    x = OrderedDict(c3=torch.rand(1, 8, 25, 19), c4=torch.rand(1, 8, 13, 10), c5=torch.rand(1, 8, 7, 5))
    out = neck(x)
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(25, 19), (13, 10), (7, 5), (4, 3), (2, 2)]


def test_in_channels_as_list_and_errors():
    genotype = load_genotype("fpn")
    assert count_params(build_neck(genotype, [8, 16, 32], 8)) == count_params(build_neck(genotype, {3: 8, 4: 16, 5: 32}, 8))
    with pytest.raises(ValueError, match="in_channels must give a positive channel count for each backbone level"):
        build_neck(genotype, {3: 8, 4: 16})
    neck = build_neck(genotype, [8, 16, 32], 8)
    with pytest.raises(ValueError, match="expected 3 backbone features"):
        neck({"a": torch.rand(1, 8, 8, 8)})


def test_pool_on_raw_c5_that_cannot_reach_width_is_an_error():
    genotype = load_genotype("bifpn").replace(extra=nasfpn.ExtraLevels("backbone", ("pool", "pool")))
    with pytest.raises(GenotypeError, match=r"extra.ops\[0\]: 'pool' keeps the 320 channels of C5"):
        build_neck(genotype, EFFICIENTNET_B0)


def test_unused_inputs_get_no_lateral():
    fpn = load_genotype("fpn")
    no_p3 = fpn.replace(nodes=fpn.nodes[:3] + (nasfpn.Node(("n1",), 3, "sum", "conv3x3"),))
    neck = build_neck(no_p3, RESNET50)
    assert "p3" not in neck.lateral and "p4" in neck.lateral


def test_unused_sum_builds_the_explicit_cell():
    from test_genotype import nasfpn_blocks
    blocks = nasfpn_blocks().replace(repeats=1, width=16)
    explicit = load_genotype("nasfpn").replace(repeats=1, width=16)
    ch = {3: 8, 4: 8, 5: 8}
    assert count_params(build_neck(blocks, ch)) == count_params(build_neck(explicit, ch))
    assert len(build_neck(blocks, ch).cells[0].plan) == 9


def test_combine_ops_follow_their_definitions():
    hi, lo = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    gate = torch.sigmoid(hi.amax(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(global_attention(hi, lo), hi + lo * gate)
    gate = torch.sigmoid(lo.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(global_attention_avg(hi, lo), lo + hi * gate)
    fusion = WeightedFusion(2)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([3.0, -1.0]))  # relu clips the negative weight to 0
    torch.testing.assert_close(fusion([hi, lo]), hi * 3.0 / (3.0 + 1e-4))


def test_global_attention_takes_the_coarser_input_as_hi():
    genotype = load_genotype("nasfpn").replace(repeats=1, width=4)
    neck = build_neck(genotype, {3: 4, 4: 4, 5: 4})
    # n0 merges P4 (finer) and P6 (coarser): P6 is "hi" although it is listed second.
    assert neck.cells[0].n0.order == (1, 0)


@pytest.mark.parametrize("space, seeds", [("wide", 25), ("wide_family", 12)])
def test_samples_of_the_wide_space_build_and_export_identically(space, seeds, tmp_path):
    from nasfpn.export import export_neck, load_exported
    from nasfpn.space import load_space

    wide = load_space(space)
    channels = {3: 8, 4: 16, 5: 32}
    x = example_inputs(channels, 128)
    for seed in range(seeds):
        genotype = wide.decode(wide.sample(seed)).replace(width=8, repeats=2)
        built = build_neck(genotype, channels).eval()
        export_neck(genotype, channels, tmp_path / f"neck{seed}.py")
        exported = load_exported(tmp_path / f"neck{seed}.py").eval()
        exported.load_state_dict(built.state_dict())
        want, got = built(x), exported(x)
        assert all(torch.equal(want[k], got[k]) for k in want), seed


@pytest.mark.parametrize("name", sorted(STATE_DICT_DIGESTS))
def test_state_dict_names_are_those_before_the_refactor(name):
    from test_canonical import SAMPLED, sampled
    genotype = sampled(name) if name in SAMPLED else load_genotype(name)
    neck = build_neck(genotype.replace(repeats=min(genotype.repeats, 2)), {3: 8, 4: 16, 5: 32}, width=8)
    names = [[key, list(value.shape)] for key, value in neck.state_dict().items()]
    assert hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16] == STATE_DICT_DIGESTS[name], names


def test_raw_inputs_are_read_in_every_cell_through_their_own_adapters():
    from test_canonical import family
    genotype = family("raw inputs, rfa and sac")
    channels = {3: 8, 4: 16, 5: 32}
    neck = build_neck(genotype, channels, width=8)
    assert neck.raw_levels == [3, 4, 5]
    for k in range(2):  # both repeats read the same backbone features
        cell = neck.cells[k]
        assert cell.input_names == ("P3", "P4", "P5", "C3", "C4", "C5")
        assert isinstance(cell.n0.op, nasfpn.ops.RFA) and cell.n0.op.branches[0].in_channels == 32
        assert cell.n0.adapters == [None]                       # RFA takes C5 at its 32 channels
        assert cell.n1.adapters == [None, None] and isinstance(cell.n1.op, nasfpn.ops.SACBN)
        assert cell.n2.adapters == [None, None, "lat2"]         # C4 (16 channels) through a 1x1 conv + BN
        assert cell.n3.adapters == [None, None, None]           # C3 has the width already
    names = set(neck.state_dict())
    assert {"cells.1.n0.op.branches.2.weight", "cells.1.n2.lat2.conv.weight", "cells.1.n1.op.conv.weight_diff",
            "cells.0.n2.fuse.weight"} <= names
    x = example_inputs(channels, 128, batch=2)
    out = neck(x)
    assert [tuple(t.shape) for t in out.values()] == [(2, 8, 128 >> lv, 128 >> lv) for lv in range(3, 8)]
    sum(t.sum() for t in out.values()).backward()
    assert neck.cells[1].n0.op.branches[0].weight.grad is not None
    assert neck.cells[1].n2.lat2.conv.weight.grad is not None


def test_rfa_reading_an_input_of_the_width_needs_no_adapter():
    data = load_genotype("fpn").to_dict()
    data["nodes"][0].update(inputs=["C5"], op="rfa")
    neck = build_neck(nasfpn.Genotype.from_dict(data), {3: 8, 4: 8, 5: 8}, width=8)
    assert count_params(neck.cells[0].n0.op) == count_params(nasfpn.ops.RFA(8, 8)) and "lat0" not in neck.cells[0].n0.calls


def test_augfpn_parameter_count_on_resnet50():
    # By hand from AugFPN's HighFPNRetinanet (width 256, ResNet-50 C3-C5 = 512/1024/2048):
    # laterals (512 + 1024 + 2048) * 256 + 3 * 256 = 918,272; three 3x3 output convs
    # 3 * 590,080 = 1,770,240; P6 by a 3x3 stride-2 conv of C5 4,718,848; P7 590,080; RFA 1,777,411.
    neck = build_neck(load_genotype("augfpn"), RESNET50)
    assert count_params(neck.cells[0].n0.op) == 1_777_411
    assert count_params(neck) == 918_272 + 1_770_240 + 4_718_848 + 590_080 + 1_777_411 == 9_774_851


@pytest.mark.parametrize("channels", [{3: 40, 4: 112, 5: 320}, RESNET50], ids=["lite0", "resnet"])
def test_augfpn_builds_runs_and_learns(channels):
    """RFA reads the raw C5 and its sum with the top lateral feeds the P5 output and the top-down
    path; a training step of the proxy detector moves RFA's weights."""
    from nasfpn.detector import ProxyDetector

    torch.manual_seed(0)
    genotype = load_genotype("augfpn")
    neck = build_neck(genotype, channels, width=16)
    cell = neck.cells[0]
    assert cell.input_names[-1] == "C5" and cell.n0.op.branches[0].in_channels == channels[5]
    assert [name for name, sources, _ in cell.plan if "n1" in sources] == ["n2", "n3"]
    x = example_inputs(channels, 128, batch=2)
    out = neck(x)
    assert [tuple(t.shape) for t in out.values()] == [(2, 16, 128 >> lv, 128 >> lv) for lv in range(3, 8)]
    sum(t.square().mean() for t in out.values()).backward()
    assert all(p.grad is not None for p in cell.n0.op.parameters())

    model = ProxyDetector(genotype, channels, num_classes=3, image_size=128, width=16, head_depth=1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.neck.cells[0].n0.op.fusion[0].weight.detach().clone()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(targets=targets, features=x)
    sum(losses.values()).backward()
    optimiser.step()
    assert torch.isfinite(sum(losses.values()))
    assert not torch.equal(before, model.neck.cells[0].n0.op.fusion[0].weight)

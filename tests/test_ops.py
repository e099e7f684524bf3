"""The layers of the rest of the neck family, against their references' parameter counts and
parts: AugFPN's RFA and DetectoRS' switchable atrous convolution."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from nasfpn.ops import RFA, SACBN, SAConv2d
from nasfpn.profile import count_params


def test_rfa_parameter_count_matches_augfpn():
    # AugFPN's high_fpn.py at width 256 on ResNet-50's C5 (REFERENCES.md): three 1x1 convs
    # 2048 -> 256 with bias, 3 x 524,544 = 1,573,632; the fusion's 1x1 conv 768 -> 256 with bias,
    # 196,864; its 3x3 conv 256 -> 3 with bias, 6,915.
    assert count_params(RFA(2048, 256)) == 1_777_411 == 3 * 524_544 + 196_864 + 6_915


def test_rfa_follows_augfpn():
    torch.manual_seed(0)
    rfa = RFA(6, 4).eval()
    x = torch.rand(2, 6, 13, 9)
    # Written out as AugFPN writes it: pool to max(1, int(ratio * size)), conv, bilinear back
    # with aligned corners; one sigmoid map per branch; the weighted sum.
    branches = [F.interpolate(conv(F.adaptive_avg_pool2d(x, (max(1, int(13 * r)), max(1, int(9 * r))))),
                              size=(13, 9), mode="bilinear", align_corners=True)
                for conv, r in zip(rfa.branches, (0.1, 0.2, 0.3))]
    weights = torch.sigmoid(rfa.fusion(torch.cat(branches, 1)))
    want = sum(weights[:, i:i + 1] * branches[i] for i in range(3))
    torch.testing.assert_close(rfa(x), want)
    assert rfa(torch.rand(1, 6, 2, 3)).shape == (1, 4, 2, 3)  # pools never shrink below a pixel


# mmcv's SAConv2d(256, 256, 3) (REFERENCES.md): weight 589,824, its bias 256 (dead: mmcv
# convolves with a zero bias), switch 256 + 1, weight_diff 589,824, pre- and post-context
# 1x1 convs 65,792 each.
MMCV_SAC = 1_311_745
MMCV_SAC_WITHOUT_CONTEXT = 1_180_161
MMCV_DEAD_BIAS = 256


def test_sac_parameter_count_matches_mmcv():
    # Ours has no conv bias (mmcv's is dead, and BN follows the op): exactly that bias fewer.
    assert count_params(SAConv2d(256, 256)) + MMCV_DEAD_BIAS == MMCV_SAC
    assert count_params(SAConv2d(256, 256, context=False)) + MMCV_DEAD_BIAS == MMCV_SAC_WITHOUT_CONTEXT
    assert MMCV_SAC - MMCV_SAC_WITHOUT_CONTEXT == 2 * (256 * 256 + 256)
    assert count_params(SACBN(256)) == count_params(SAConv2d(256, 256)) + 2 * 256


def standardised(weight: torch.Tensor) -> torch.Tensor:
    """mmcv's ConvAWS2d._get_weight with its buffers at their defaults (gamma 1, beta 0)."""
    flat = weight.view(weight.size(0), -1)
    return (weight - flat.mean(1).view(-1, 1, 1, 1)) / torch.sqrt(flat.var(1) + 1e-5).view(-1, 1, 1, 1)


def test_sac_starts_as_a_standardised_3x3_conv():
    # Zero-initialised contexts and weight_diff, switch weight 0 and bias 1 (no sigmoid): S = 1,
    # so the op starts as the weight-standardised conv at dilation 1.
    torch.manual_seed(0)
    sac = SAConv2d(5, 7)
    assert torch.count_nonzero(sac.weight_diff) == 0 and torch.count_nonzero(sac.switch.weight) == 0
    assert torch.equal(sac.switch.bias, torch.ones(1))
    assert all(torch.count_nonzero(p) == 0 for p in (*sac.pre_context.parameters(), *sac.post_context.parameters()))
    x = torch.rand(2, 5, 9, 8)
    torch.testing.assert_close(sac(x), F.conv2d(x, standardised(sac.weight), padding=1))


def test_sac_parts_as_mmcv_composes_them():
    torch.manual_seed(1)
    sac = SAConv2d(4, 6)
    with torch.no_grad():
        for p in sac.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.rand(2, 4, 7, 10)
    pre = x + sac.pre_context(F.adaptive_avg_pool2d(x, 1)).expand_as(x)
    # The switch's 5x5 average over the window inside the map (mmcv reflects at the border).
    switch = sac.switch(F.avg_pool2d(pre, 5, stride=1, padding=2, count_include_pad=False))
    w = standardised(sac.weight)
    out = switch * F.conv2d(pre, w, padding=1) + (1 - switch) * F.conv2d(pre, w + sac.weight_diff, padding=3, dilation=3)
    out = out + sac.post_context(F.adaptive_avg_pool2d(out, 1)).expand_as(out)
    torch.testing.assert_close(sac(x), out)
    # The interior of the switch's window is mmcv's reflect-padded average.
    mmcv = F.avg_pool2d(F.pad(pre, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    torch.testing.assert_close(sac.switch(mmcv)[..., 2:-2, 2:-2], switch[..., 2:-2, 2:-2])
    assert SAConv2d(4, 6, context=False).pre_context is None


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (9, 7)])
def test_new_layers_script_and_run_on_tiny_maps(size):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still works
        for module, channels in ((RFA(6, 4), 6), (SACBN(4).eval(), 4), (SAConv2d(4, 4, context=False), 4)):
            x = torch.rand(2, channels, *size)
            assert torch.equal(torch.jit.script(module)(x), module(x))

"""Drawing the reference necks: files are written in the right format, with the right labels."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from nasfpn import Node, load_genotype
from nasfpn.draw import draw_genotype

REFERENCES = ("fpn", "panet", "bifpn", "nasfpn", "augfpn")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", REFERENCES)
def test_png(name, tmp_path):
    path = draw_genotype(load_genotype(name), tmp_path / "deep" / "dir" / f"{name}.png")
    assert path == tmp_path / "deep" / "dir" / f"{name}.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    image = np.asarray(Image.open(path).convert("L"))
    ink = image < 128                            # boxes, arrows, labels
    assert 0.005 < ink.mean() < 0.5, "a drawing, not a blank or a filled image"
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    assert rows.max() - rows.min() > image.shape[0] / 2 and cols.max() - cols.min() > image.shape[1] / 2
    # The PNG is the same figure as the SVG (which test_svg checks label by label): same aspect.
    svg = draw_genotype(load_genotype(name), tmp_path / f"{name}.svg").read_text()
    width, height = (float(v.rstrip("pt")) for v in re.search(r'width="([\d.]+pt)" height="([\d.]+pt)"', svg).groups())
    assert image.shape[1] / image.shape[0] == pytest.approx(width / height, rel=0.02)


def test_a_bigger_cell_makes_a_bigger_drawing(tmp_path):
    fpn = Image.open(draw_genotype(load_genotype("fpn"), tmp_path / "fpn.png")).size
    nasfpn = Image.open(draw_genotype(load_genotype("nasfpn"), tmp_path / "nasfpn.png")).size
    assert nasfpn[0] * nasfpn[1] > fpn[0] * fpn[1]


@pytest.mark.parametrize("name", REFERENCES)
def test_svg_names_nodes_inputs_and_outputs(name, tmp_path):
    genotype = load_genotype(name)
    text = draw_genotype(genotype, str(tmp_path / f"{name}.svg")).read_text()
    assert "<svg" in text
    for i in genotype.spelled_out().live_nodes():
        assert f">n{i}<" in text
    for level in genotype.levels:
        assert f"P{level} out" in text
    assert genotype.name in text


def test_title_and_repeats(tmp_path):
    text = draw_genotype(load_genotype("bifpn"), tmp_path / "b.svg", title="My neck").read_text()
    assert "My neck" in text and "× 3" in text
    assert "extra P6, P7: proj_pool, pool from backbone C5" in text
    assert "BiFPN" not in text


def test_unused_sum_is_spelled_out_and_dead_nodes_are_left_out(tmp_path):
    nasfpn = load_genotype("nasfpn")
    blocks = nasfpn.nodes[:4] + (Node(("n2", "n3"), 5, "global_attention", "relu_conv_bn"),
                                 Node(("n1", "n4"), 7, "global_attention", "relu_conv_bn"),
                                 Node(("n4", "n5"), 6, "global_attention", "relu_conv_bn"))
    seven = nasfpn.replace(nodes=blocks, outputs=("n2", "n3", "n4", "n6", "n5"), unused="sum")
    text = draw_genotype(seven, tmp_path / "sum.svg").read_text()
    assert ">n8<" in text  # 7 blocks + 2 sum nodes
    fpn = load_genotype("fpn")
    dead = fpn.replace(nodes=fpn.nodes + (Node(("P3",), 3, "sum", "conv3x3"),), outputs=("n3", "n2", "P5"))
    text = draw_genotype(dead, tmp_path / "dead.svg").read_text()
    assert ">n1<" in text and ">n0<" not in text and ">n4<" not in text


@pytest.mark.parametrize("suffix", [".jpg", ".pdf", ""])
def test_bad_suffix(suffix, tmp_path):
    with pytest.raises(ValueError) as error:
        draw_genotype(load_genotype("fpn"), tmp_path / f"x{suffix}")
    assert repr(suffix) in str(error.value)
    assert ".png" in str(error.value) and ".svg" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_raw_inputs_rfa_and_sac_are_drawn_and_labelled(tmp_path):
    from test_canonical import family

    text = draw_genotype(family("raw inputs, rfa and sac"), tmp_path / "family.svg").read_text()
    for label in ("sum · RFA", "sum · SAC", "weighted · SAC", ">C3<", ">C4<", ">C5<", "backbone feature (raw C)"):
        assert label in text, label
    assert "backbone feature" not in draw_genotype(load_genotype("fpn"), tmp_path / "fpn.svg").read_text()
    png = draw_genotype(family("raw inputs, rfa and sac"), tmp_path / "family.png")
    assert png.read_bytes().startswith(PNG_MAGIC)

"""The vocabulary table: every record's layer is what its exported source writes, the tables hold
together, and a new word is one entry that the whole project then reads."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from nasfpn import load_genotype, ops
from nasfpn.draw import draw_genotype
from nasfpn.export import export_neck, load_exported
from nasfpn.neck import build_neck, example_inputs
from nasfpn.space import SearchSpace
from nasfpn.vocabulary import (ANY, BY_LEVEL, COMBINES, DOWNSAMPLES, EXTRA_OPS, LATERALS, LISTED, MAX_INPUTS, OPS,
                               Combine, Layer, Op, adapter, layer)


def every_call() -> dict[str, Layer]:
    """One call of every record that makes a layer, with small channel counts."""
    calls = {f"op {name} ({activation})": op.layer(8, activation)
             for name, op in OPS.items() if op.layer is not None for activation in ("relu", "swish")}
    calls |= {f"op {name} (on a backbone feature)": op.backbone_layer(16, 8) for name, op in OPS.items() if op.reads_backbone}
    calls |= {f"combine {name}": c.layer(3) for name, c in COMBINES.items() if c.layer is not None}
    calls |= {f"lateral {name}": lat.layer(16, 8) for name, lat in LATERALS.items() if lat.layer is not None}
    calls |= {f"extra {name}": e.layer(8 if e.keeps_channels else 16, 8) for name, e in EXTRA_OPS.items()}
    calls |= {f"downsample {name}": d.layer(8, 4) for name, d in DOWNSAMPLES.items() if d.layer is not None}
    return calls | {"adapter": adapter(16, 8)}


@pytest.mark.parametrize("what, call", sorted(every_call().items()))
def test_a_call_makes_the_layer_its_source_writes(what, call):
    # The namespace an exported file has: the layers of nasfpn.ops and torch's nn.
    namespace = {name: value for name, value in vars(ops).items() if not name.startswith("_")}
    written = eval(call.source(), namespace)  # noqa: S307 - our own generated source
    made = call.make()
    assert type(made) is type(written), what
    assert {k: v.shape for k, v in made.state_dict().items()} == {k: v.shape for k, v in written.state_dict().items()}


def test_layer_source_spells_the_call():
    assert layer("SepConvBN", 64, swish=True).source() == "SepConvBN(64, swish=True)"
    assert layer("nn.Conv2d", 8, 8, 3, padding=1).source() == "nn.Conv2d(8, 8, 3, padding=1)"


def test_the_tables_hold_together():
    for table in (OPS, COMBINES, LATERALS, EXTRA_OPS, DOWNSAMPLES):
        for name, record in table.items():
            assert record.name == name and record.label
    for combine in COMBINES.values():
        assert combine.arity and all(1 <= n <= MAX_INPUTS for n in combine.arity)
        assert not combine.function or callable(getattr(ops, combine.function))
    assert MAX_INPUTS == 3
    with pytest.raises(ValueError, match="input_order"):
        Combine("odd", "odd", arity=(2,), input_order="sideways")
    with pytest.raises(ValueError, match="the width or a backbone feature, not both"):
        Op("odd", "odd", lambda width, activation: layer("SACBN", width),
           backbone_layer=lambda channels, width: layer("RFA", channels, width))


def test_an_op_on_a_backbone_feature_reads_one_at_its_level():
    rfa, sac, raw = OPS["rfa"], OPS["sac"], {"C3": 3, "C4": 4, "C5": 5}
    assert rfa.reads_backbone and rfa.layer is None and not sac.reads_backbone
    assert rfa.input_problem(["C5"], raw, 5) == "" and sac.input_problem(["P5", "C4"], raw, 5) == ""
    for inputs, level in ((["C5"], 4), (["P5"], 5), (["C5", "C4"], 5), (["n0"], 5)):
        assert "reads exactly one raw backbone feature" in rfa.input_problem(inputs, raw, level)


def test_input_order():
    attention, added, listed = (COMBINES["global_attention"], COMBINES["sum"],
                                Combine("gate", "gate", arity=(2,), input_order=LISTED, function="global_attention"))
    assert (attention.input_order, added.input_order) == (BY_LEVEL, ANY)
    assert attention.order([4, 6]) == (1, 0) and attention.order([6, 4]) == (0, 1)
    assert attention.order([5, 5]) == (0, 1)                    # a tie: as listed
    assert not attention.order_matters([4, 6]) and attention.order_matters([5, 5])
    assert added.order([4, 6, 5]) == (0, 1, 2) and not added.order_matters([5, 5])
    assert listed.order([4, 6]) == (0, 1) and listed.order_matters([4, 6])


def test_a_new_word_is_one_entry(monkeypatch, tmp_path):
    """A node op and a combine added to the tables, and nothing else, are validated, hashed, built,
    exported with the same state dict, drawn with their labels and offered by a space."""
    monkeypatch.setitem(OPS, "conv1x1", Op("conv1x1", "conv1x1", lambda width, activation: layer("nn.Conv2d", width, width, 1)))
    # Attention that takes its inputs as listed (the first is "hi"), whatever their levels.
    monkeypatch.setitem(COMBINES, "gate", Combine("gate", "gate", arity=(2,), input_order=LISTED,
                                                  function="global_attention"))
    fpn = load_genotype("fpn")
    nodes = list(fpn.nodes)
    nodes[1] = dataclasses.replace(nodes[1], combine="gate", op="conv1x1")   # n1: gate(P4, P5)
    genotype = fpn.replace(nodes=tuple(nodes), width=8).validate()
    swapped = list(nodes)
    swapped[1] = dataclasses.replace(nodes[1], inputs=nodes[1].inputs[::-1])
    assert fpn.replace(nodes=tuple(swapped)).hash() != genotype.hash()        # the listed order counts
    assert type(genotype).from_yaml(genotype.to_yaml()) == genotype

    channels = {3: 8, 4: 16, 5: 32}
    built = build_neck(genotype, channels).eval()
    n1 = built.cells[0].n1
    assert isinstance(n1.op, torch.nn.Conv2d) and n1.op.kernel_size == (1, 1) and n1.order == (0, 1)
    export_neck(genotype, channels, tmp_path / "neck.py")
    exported = load_exported(tmp_path / "neck.py").eval()
    exported.load_state_dict(built.state_dict())
    x = example_inputs(channels, 64)
    assert all(torch.equal(a, b) for a, b in zip(built(x).values(), exported(x).values()))
    assert "gate · conv1x1" in draw_genotype(genotype, tmp_path / "neck.svg").read_text()

    space = SearchSpace(cell={"levels": [3, 4, 5, 6, 7], "extra": {"source": "output", "ops": ["conv", "relu_conv"]}},
                        nodes=3, inputs=[1, 2], combines=["sum", "gate"], ops=["none", "conv1x1"])
    sampled = [space.decode(space.sample(seed)) for seed in range(30)]
    assert any(n.combine == "gate" for g in sampled for n in g.nodes)
    assert all(len(n.inputs) == 2 for g in sampled for n in g.nodes if n.combine == "gate")

import dataclasses

import pytest

import nasfpn
from nasfpn import Genotype, GenotypeError, Node, load_genotype, reference_names

REFERENCES = ["augfpn", "bifpn", "fpn", "nasfpn", "panet", "rfp"]

# The seven blocks of the NAS-FPN cell as Google lists them, with the paper's rule for unused
# features as data (unused: sum) instead of the explicit nodes of search_spaces/nasfpn.yaml.
NASFPN_BLOCKS = [
    {"inputs": ["P4", "P6"], "level": 4, "combine": "global_attention", "op": "relu_conv_bn"},
    {"inputs": ["P4", "n0"], "level": 4, "combine": "sum", "op": "relu_conv_bn"},
    {"inputs": ["P3", "n1"], "level": 3, "combine": "sum", "op": "relu_conv_bn"},
    {"inputs": ["n1", "n2"], "level": 4, "combine": "sum", "op": "relu_conv_bn"},
    {"inputs": ["n2", "n3"], "level": 5, "combine": "global_attention", "op": "relu_conv_bn"},
    {"inputs": ["n1", "n4"], "level": 7, "combine": "global_attention", "op": "relu_conv_bn"},
    {"inputs": ["n4", "n5"], "level": 6, "combine": "global_attention", "op": "relu_conv_bn"},
]


def nasfpn_blocks() -> Genotype:
    data = load_genotype("nasfpn").to_dict()
    data.update(nodes=NASFPN_BLOCKS, outputs={3: "n2", 4: "n3", 5: "n4", 6: "n6", 7: "n5"}, unused="sum")
    return Genotype.from_dict(data)


def fpn_dict() -> dict:
    return load_genotype("fpn").to_dict()


def test_references_load_by_name_and_path():
    assert reference_names() == REFERENCES
    for name in REFERENCES:
        by_name = load_genotype(name)
        by_path = load_genotype(nasfpn.genotype.REFERENCE_DIR / f"{name}.yaml")
        assert by_name == by_path and by_name.name


def test_reference_facts():
    bifpn = load_genotype("bifpn")
    assert (len(bifpn.nodes), bifpn.repeats, bifpn.width) == (8, 3, 64)
    assert sum(n.combine == "weighted" for n in bifpn.nodes) == 8
    nas = load_genotype("nasfpn")
    assert (nas.repeats, nas.width) == (7, 256)
    assert {n.combine for n in nas.nodes} == {"sum", "global_attention"}
    assert load_genotype("fpn").cell_levels == (3, 4, 5)


@pytest.mark.parametrize("name", REFERENCES)
def test_yaml_round_trip(name, tmp_path):
    genotype = load_genotype(name)
    again = Genotype.from_yaml(genotype.to_yaml())
    assert again == genotype and again.name == genotype.name
    nasfpn.save_genotype(genotype, tmp_path / "g.yaml")
    assert load_genotype(tmp_path / "g.yaml").to_dict() == genotype.to_dict()


def test_genotype_is_immutable():
    genotype = load_genotype("fpn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        genotype.width = 3
    assert isinstance(genotype.nodes, tuple) and isinstance(genotype.nodes[0].inputs, tuple)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["nodes"][1].update(inputs=["P4", "P9"]), "node n1: input 'P9' does not exist"),
    (lambda d: d["nodes"][1].update(inputs=["P4", "n2"]), "node n1: input 'n2' is this node or a later one (a cycle)"),
    (lambda d: d["nodes"][1].update(inputs=["n1"]), "node n1: input 'n1' is this node or a later one"),
    (lambda d: d["nodes"][2].update(combine="concat"), "node n2: combine: unknown value 'concat'"),
    (lambda d: d["nodes"][2].update(op="conv5x5"), "node n2: op: unknown value 'conv5x5'"),
    (lambda d: d["nodes"][0].update(level=6), "node n0: level 6 is not one of the cell levels [3, 4, 5]"),
    (lambda d: d["nodes"][0].update(level="5"), "node n0: level must be an integer"),
    (lambda d: d["outputs"].pop(4), "outputs: no output for level(s) [4]"),
    (lambda d: d["outputs"].update({4: "n3"}), "outputs: level 4 names 'n3', which is at level 3"),
    (lambda d: d["outputs"].update({4: "n9"}), "outputs: level 4 names 'n9', which does not exist"),
    (lambda d: d.update(nodes=[]), "nodes: the node list is empty"),
    (lambda d: d.update(nodes="n0"), "nodes: must be a list"),
    (lambda d: d["nodes"][1].update(inputs=["P4", "P4"]), "node n1: inputs ['P4', 'P4'] name the same input twice"),
    (lambda d: d["nodes"][1].update(inputs=["P3", "P4", "P5", "n0"]), "node n1: inputs must list 1 to 3 names"),
    (lambda d: d["nodes"][1].update(combine="global_attention", inputs=["P4"]), "merges exactly 2 inputs"),
    (lambda d: d["nodes"][1].update(inputs=[4]), "node n1: inputs: 4 is not a name"),
    (lambda d: d["nodes"][1].update(colour="red"), "node n1: unknown field(s) ['colour']"),
    (lambda d: d.update(repeats=0), "repeats: must be a positive integer"),
    (lambda d: d.update(width="wide"), "width: must be a positive integer"),
    (lambda d: d.update(levels=[3, 5, 6]), "levels: must be ascending and consecutive"),
    (lambda d: d.update(lateral="fancy"), "lateral: unknown value 'fancy'"),
    (lambda d: d["extra"].update(source="c5"), "extra.source: unknown value 'c5'"),
    (lambda d: d["extra"].update(ops=["conv", "avgpool"]), "extra.ops[1]: unknown value 'avgpool'"),
    (lambda d: d.update(colour="red"), "unknown field(s) ['colour']"),
])
def test_validate_names_node_and_field(change, message):
    data = fpn_dict()
    change(data)
    with pytest.raises(GenotypeError) as err:
        Genotype.from_dict(data)
    assert message in str(err.value)


def test_validate_rejects_wrong_types_in_constructed_records():
    genotype = load_genotype("fpn")
    bad = genotype.replace(nodes=(Node(("P5",), 5, "sum", "conv3x3"), Node(["P4"], 4)))
    with pytest.raises(GenotypeError, match="node n1: inputs must list"):
        bad.validate()


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("levels: [3\n")
    with pytest.raises(GenotypeError, match="broken.yaml: not valid YAML"):
        load_genotype(path)
    path.write_text("- just a list\n")
    with pytest.raises(GenotypeError, match="broken.yaml: a genotype must be a mapping"):
        load_genotype(path)
    with pytest.raises(GenotypeError, match="neither a file nor a shipped reference neck"):
        load_genotype("no_such_neck")
    with pytest.raises(GenotypeError, match="neither a file nor a shipped reference neck"):
        load_genotype("wide_space")  # a shipped space is no reference neck


def test_hash_ignores_spelling():
    panet = load_genotype("panet")
    # n2 (FPN P3), n3 (FPN P4) and n4 (FPN P5) are independent of each other: list them in
    # another order, and swap the inputs of a sum.
    reordered = panet.renumbered([0, 1, 4, 3, 2, 5, 6, 7, 8]).validate()
    assert reordered.nodes != panet.nodes
    assert reordered.hash() == panet.hash()
    swapped = panet.replace(nodes=(Node(("P5", "P4"), 4),) + panet.nodes[1:])
    assert swapped.hash() == panet.hash()
    # A dead node (nobody reads it, no output names it) does not change the graph.
    dead = panet.replace(nodes=panet.nodes + (Node(("P3", "n8"), 3, "sum", "conv3x3"),)).validate()
    assert dead.hash() == panet.hash()
    assert panet.replace(name="another name").hash() == panet.hash()
    assert len(panet.hash()) == 64 and panet.hash() == load_genotype("panet").hash()


def test_unused_rule_as_data_equals_explicit_nodes():
    blocks = nasfpn_blocks()
    assert len(blocks.nodes) == 7 and blocks.unused == "sum"
    assert blocks.hash() == load_genotype("nasfpn").hash()
    spelled = blocks.spelled_out()
    assert spelled.unused == "drop" and len(spelled.nodes) == 9


def test_different_graphs_hash_differently():
    fpn = load_genotype("fpn")
    variants = [
        fpn,
        fpn.replace(nodes=fpn.nodes[:3] + (Node(("P3", "n1"), 3, "sum", "relu_conv_bn"),)),
        fpn.replace(nodes=fpn.nodes[:3] + (Node(("P3", "n2"), 3, "sum", "conv3x3"),)),
        fpn.replace(nodes=fpn.nodes[:3] + (Node(("P3", "n1"), 3, "weighted", "conv3x3"),)),
        fpn.replace(lateral="conv_bn"),
        fpn.replace(repeats=2),
        fpn.replace(width=128),
        fpn.replace(extra=nasfpn.ExtraLevels("output", ("conv", "conv"))),
    ] + [load_genotype(name) for name in ("panet", "bifpn", "nasfpn")]
    hashes = {g.validate().hash() for g in variants}
    assert len(hashes) == len(variants)


def test_attention_orientation_is_part_of_the_graph():
    nas = load_genotype("nasfpn")
    avg = nas.replace(nodes=tuple(dataclasses.replace(n, combine="global_attention_avg")
                                  if n.combine == "global_attention" else n for n in nas.nodes))
    assert avg.hash() != nas.hash()


def test_fields_without_effect_do_not_change_the_hash():
    fpn = load_genotype("fpn")  # no downsampling edge, no sepconv
    assert fpn.replace(downsample="conv", activation="swish").hash() == fpn.hash()
    assert load_genotype("panet").replace(downsample="pool").hash() != load_genotype("panet").hash()


def test_unused_sum_follows_list_order_and_never_cycles():
    # n2 and n3 are unread, but each is listed after the output of its level and reads the
    # other level's output: absorbing them would make a cycle. They are dropped; n4 is unread
    # and its level's output is the cell input P5, which absorbs it for the output only.
    genotype = Genotype.from_dict({
        "levels": [3, 4, 5], "unused": "sum",
        "nodes": [{"inputs": ["P3"], "level": 3, "op": "conv3x3"},
                  {"inputs": ["P4", "P5"], "level": 4, "op": "conv3x3"},
                  {"inputs": ["n1"], "level": 3}, {"inputs": ["n0"], "level": 4},
                  {"inputs": ["n1"], "level": 5}],
        "outputs": {3: "n0", 4: "n1", 5: "P5"}})
    spelled = genotype.spelled_out().validate()
    live = [spelled.nodes[i] for i in sorted(spelled.live_nodes())]
    assert Node(("P5", "n4"), 5, "sum", "none") in live
    assert spelled.output_of(5) != "P5"
    assert Node(("P4", "P5"), 4, "sum", "conv3x3") in live  # still reads the raw P5
    assert len(live) == 4 and genotype.hash() == genotype.canonical().hash()


@pytest.mark.parametrize("space", ["wide", "wide_family"])
def test_every_sample_of_the_wide_space_hashes(space):
    from nasfpn.space import load_space

    wide = load_space(space)
    for seed in range(300):
        genotype = wide.decode(wide.sample(seed))
        canonical = genotype.canonical()
        if canonical.nodes:  # a cell whose outputs are all its inputs has no live node
            assert canonical.hash() == genotype.hash()
        genotype.spelled_out().validate()


def test_edge_laterals_have_no_shared_lateral_to_start_extras_from():
    data = load_genotype("bifpn").to_dict()
    data["extra"]["source"] = "lateral"
    with pytest.raises(GenotypeError, match="extra.source: 'lateral' needs a shared lateral"):
        Genotype.from_dict(data)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["nodes"][0].update(inputs=["C9"]),
     "node n0: input 'C9' is not a feature the backbone gives (['C3', 'C4', 'C5'])"),
    # P6 and P7 are made by the neck: there is no C6.
    (lambda d: d["nodes"][0].update(inputs=["C6"]), "node n0: input 'C6' is not a feature the backbone gives"),
    (lambda d: d["nodes"][0].update(op="rfa"), "node n0: op: op 'rfa' reads exactly one raw backbone feature"),
    (lambda d: d["nodes"][0].update(inputs=["C5", "P5"], op="rfa"), "node n0: op: op 'rfa' reads exactly one raw"),
    (lambda d: d["nodes"][3].update(inputs=["C5"], op="rfa"),
     "node n3: op: op 'rfa' reads exactly one raw backbone feature at the node's level (one of ['C3', 'C4', 'C5']), "
     "got inputs ['C5'] at level 3"),
    (lambda d: d["outputs"].update({5: "C5"}), "outputs: level 5 names 'C5', a raw backbone feature"),
    (lambda d: d["nodes"][1].update(inputs=["P4", "c5"]), "node n1: input 'c5' does not exist"),
])
def test_raw_inputs_are_validated_by_node_and_field(change, message):
    data = fpn_dict()
    change(data)
    with pytest.raises(GenotypeError) as err:
        Genotype.from_dict(data)
    assert message in str(err.value)


def test_raw_inputs_are_backbone_levels_and_read_like_names():
    data = fpn_dict()
    data["nodes"][0].update(inputs=["C5"], op="rfa")                       # n0: RFA(C5) at level 5
    data["nodes"][1].update(inputs=["P4", "n0", "C3"], combine="weighted", op="sac")
    genotype = Genotype.from_dict(data)
    assert genotype.raw_inputs == ("C3", "C4", "C5") and genotype.level_of("C3") == 3
    assert "C5" not in genotype.cell_inputs
    # With P6/P7 made from the lateral the cell has five levels, and still three raw inputs.
    nasfpn_raw = load_genotype("nasfpn")
    assert nasfpn_raw.raw_inputs == ("C3", "C4", "C5") and len(nasfpn_raw.cell_inputs) == 5
    # The unused rule never sums a raw input into an output: C4 is unread, and stays out.
    summed = genotype.replace(unused="sum").spelled_out()
    assert not any("C4" in node.inputs for node in summed.nodes)

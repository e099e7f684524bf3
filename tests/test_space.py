import random

import pytest
import yaml

from nasfpn import Genotype, Node, load_genotype
from nasfpn.space import SearchSpace, SpaceError, load_space, space_from_dict, space_names
from test_genotype import nasfpn_blocks

REFERENCES = ["fpn", "panet", "bifpn", "nasfpn"]


def test_shipped_spaces():
    assert space_names() == ["nasfpn", "wide", "wide_family"]
    paper = load_space("nasfpn")
    assert (paper.min_nodes, paper.max_nodes, paper.inputs, paper.outputs) == (7, 7, (2,), "last")
    assert paper.combines == ("sum", "global_attention")
    # NAS-FPN's 4 decisions per merging cell: input 1, input 2, level, combine.
    assert paper.decision_kinds[:4] == ("input", "input", "level", "combine") and len(paper.decisions) == 28


@pytest.mark.parametrize("name", REFERENCES)
def test_wide_space_contains_every_reference(name):
    wide = load_space("wide")
    genotype = load_genotype(name)
    assert wide.contains(genotype)
    decoded = wide.decode(wide.encode(genotype))
    assert decoded.hash() == genotype.replace(repeats=wide.template.repeats, width=wide.template.width).hash()


def test_paper_space_contains_the_paper_cell():
    paper = load_space("nasfpn")
    assert paper.contains(nasfpn_blocks())
    # Its explicit 9-node spelling uses op "none" and is outside the paper's space, inside the wide one.
    assert not paper.contains(load_genotype("nasfpn"))
    assert not paper.contains(load_genotype("fpn"))


def test_paper_space_reorders_outputs_last():
    """An output block written before an independent non-output one is another spelling of the
    same cell: the paper's space (outputs last) takes it and encodes it as the canonical order."""
    paper = load_space("nasfpn")
    data = nasfpn_blocks().to_dict()
    nodes = [dict(n) for n in data["nodes"]]
    nodes[2]["inputs"] = ["P3", "n0"]           # the P3 output no longer reads n1 ...
    in_order = Genotype.from_dict({**data, "nodes": nodes})
    assert paper.contains(in_order)
    # ... so it may be written before n1: swap n1 and n2 and rename every reference.
    rename = {"n1": "n2", "n2": "n1"}
    swapped = [nodes[0], nodes[2], nodes[1]] + nodes[3:]
    swapped = [{**n, "inputs": [rename.get(x, x) for x in n["inputs"]]} for n in swapped]
    outputs = {level: rename.get(name, name) for level, name in data["outputs"].items()}
    reordered = Genotype.from_dict({**data, "nodes": swapped, "outputs": outputs})
    assert reordered.nodes != in_order.nodes and reordered.outputs != in_order.outputs
    assert reordered.hash() == in_order.hash()
    assert paper.contains(reordered)
    assert paper.encode(reordered) == paper.encode(in_order)


@pytest.mark.parametrize("name", ["nasfpn", "wide", "wide_family"])
def test_random_decodes_validate_and_round_trip(name):
    space = load_space(name)
    rng = random.Random(0)
    for _ in range(200):
        decisions = space.sample(rng)
        assert len(decisions) == len(space.decision_sizes)
        assert all(0 <= d < size for d, size in zip(decisions, space.decision_sizes))
        genotype = space.decode(decisions)
        genotype.validate()
        assert space.encode(genotype) == decisions
        assert space.contains(genotype)


@pytest.mark.parametrize("name", ["nasfpn", "wide", "wide_family"])
def test_mutate_changes_one_choice_and_stays_valid(name):
    space = load_space(name)
    rng = random.Random(1)
    for _ in range(100):
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        assert child != parent
        space.decode(child).validate()


def test_valid_choices_mask():
    paper = load_space("nasfpn")
    assert paper.valid_choices([]) == [0, 1, 2, 3, 4]          # P3..P7
    assert paper.valid_choices([1]) == [0, 2, 3, 4]             # distinct second input
    prefix = [1, 3, 1, 1]                                        # n0 = GP(P4, P6) at P4
    assert paper.valid_choices(prefix) == [0, 1, 2, 3, 4, 5]    # n0 joins the pool
    # The last five nodes are the outputs: their levels are a permutation.
    decisions = paper.encode(nasfpn_blocks())
    levels_of_outputs = [decisions[4 * i + 2] for i in range(2, 7)]
    assert sorted(levels_of_outputs) == [0, 1, 2, 3, 4]


def test_decode_names_the_bad_decision():
    paper = load_space("nasfpn")
    decisions = paper.sample(0)
    decisions[1] = decisions[0]
    with pytest.raises(SpaceError, match=r"decision 1 \(input, slot 0\): .* is not a valid option"):
        paper.decode(decisions)
    with pytest.raises(SpaceError, match="expected 28 decisions"):
        paper.decode(decisions[:-1])


def test_not_contained_for_the_right_reason():
    wide = load_space("wide")
    fpn = load_genotype("fpn")
    many = fpn.replace(nodes=fpn.nodes + tuple(Node(("P3",), 3, "sum", "conv3x3") for _ in range(8))).validate()
    with pytest.raises(SpaceError, match="12 nodes; the space has 2 to 10"):
        wide.encode(many)
    paper = load_space("nasfpn")
    with pytest.raises(SpaceError, match="lateral 'conv' differs from the space's 'conv_bn'"):
        paper.encode(fpn)


def test_size_estimate():
    paper = load_space("nasfpn")
    # Each of 7 cells picks 2 distinct inputs from 5 + i, one of 5 levels (the last 5 as a
    # permutation) and 2 merges: the count is exact here and the estimator must agree.
    exact = 1
    for i in range(7):
        pool = 5 + i
        levels = 5 if i < 2 else 5 - (i - 2)
        exact *= pool * (pool - 1) * levels * 2
    import math
    assert paper.log10_size(samples=50) == pytest.approx(math.log10(exact), abs=1e-9)
    assert load_space("wide").log10_size(samples=200) > paper.log10_size(samples=50)


def test_space_file_errors(tmp_path):
    base = yaml.safe_load((load_space.__globals__["REFERENCE_DIR"] / "nasfpn_space.yaml").read_text())
    for change, message in [
        (lambda d: d.update(colour="red"), "unknown key(s) ['colour']"),
        (lambda d: d.update(combines=["sum", "concat"]), "combines: unknown ['concat']"),
        (lambda d: d.update(inputs=[1, 2], combines=["global_attention"]), "combines ['global_attention'] merge exactly 2"),
        (lambda d: d.update(nodes=[5, 3]), "nodes: must be a positive integer or [min, max]"),
        (lambda d: d.update(outputs="first"), "outputs: must be 'any' or 'last'"),
        (lambda d: d.update(nodes=4), "outputs 'last' needs at least 5 nodes"),
        (lambda d: d.update(choose={"lateral": ["conv", "fancy"]}), "choose: 'lateral' is also fixed under cell"),
        (lambda d: d.update(choose={"width": [1, 2]}), "choose: 'width' cannot be chosen"),
        (lambda d: d["cell"].update(lateral="fancy"), "cell: lateral: unknown value 'fancy'"),
    ]:
        data = yaml.safe_load(yaml.safe_dump(base))
        change(data)
        path = tmp_path / "space.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(SpaceError) as err:
            load_space(path)
        assert message in str(err.value) and "space.yaml" in str(err.value)
    path.write_text("cell: [1\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_space_in_python():
    space = SearchSpace(cell={"levels": [3, 4, 5], "width": 8}, nodes=(1, 3), inputs=(1, 2),
                        combines=("sum",), ops=("none", "conv3x3"), name="tiny")
    assert "num_nodes" in space.decision_kinds and "tiny" in repr(space)
    for seed in range(20):
        assert space.encode(space.decode(space.sample(seed))) == space.sample(seed)
    with pytest.raises(SpaceError, match="choose.extra: option"):
        space_from_dict({"cell": {"levels": [3, 4, 5, 6]}, "choose": {"extra": [{"source": "backbone", "ops": ["pool"]}]}})


def test_existing_spaces_keep_their_encoding():
    """Raw inputs are a separate space: the decision sizes of the shipped spaces, which a saved
    controller checks on resume, are those before raw inputs existed."""
    import hashlib

    for name, count, digest in (("wide", 81, "be86a32cfb4006bf"), ("nasfpn", 28, "f02f41baf62e4eae")):
        sizes = load_space(name).decision_sizes
        assert (len(sizes), hashlib.sha256(str(sizes).encode()).hexdigest()[:16]) == (count, digest), name
    wide, family = load_space("wide"), load_space("wide_family")
    assert wide.raw_inputs == () and family.raw_inputs == (3, 4, 5)
    assert len(family.decision_sizes) == len(wide.decision_sizes)
    assert wide.contains(load_genotype("fpn")) and not wide.contains(load_genotype("augfpn"))


@pytest.mark.parametrize("name", REFERENCES + ["augfpn"])
def test_wide_family_space_contains_every_reference(name):
    family = load_space("wide_family")
    genotype = load_genotype(name)
    assert family.contains(genotype)
    decoded = family.decode(family.encode(genotype))
    assert decoded.hash() == genotype.replace(repeats=family.template.repeats, width=family.template.width).hash()


def test_raw_inputs_in_a_space_and_the_op_that_reads_one():
    space = SearchSpace(cell={"levels": [3, 4, 5], "width": 8}, nodes=2, inputs=[1, 2], combines=["sum"],
                        ops=["none", "rfa"], raw_inputs=[5])
    # Input picks: P3, P4, P5, then C5, then the nodes; output picks are P3..P5 and the nodes.
    assert [space.input_name(p) for p in range(5)] == ["P3", "P4", "P5", "C5", "n0"]
    assert space.decision_kinds[:5] == ("num_inputs", "input", "input", "level", "op")
    assert space.decision_sizes[1] == 5 and space.decision_sizes[-1] == 5   # input: 3 + 1 + 1; output: 3 + 2
    assert space.valid_choices([0]) == [0, 1, 2, 3]                         # n0 may read C5
    assert space.valid_choices([0, 3, 0, 2]) == [0, 1]                      # C5 at level 5: none or rfa
    assert space.valid_choices([0, 3, 0, 1]) == [0]                         # C5 at level 4: not rfa
    assert space.valid_choices([0, 2, 0, 2]) == [0]                         # P5: not rfa
    genotype = space.decode([0, 3, 0, 2, 1] + [1, 2, 4, 2, 0] + [0, 1, 4])
    assert genotype.nodes[0] == Node(("C5",), 5, "sum", "rfa") and genotype.nodes[1].inputs == ("P5", "n0")
    assert genotype.outputs == ("P3", "P4", "n1") and space.encode(genotype) == [0, 3, 0, 2, 1, 1, 2, 4, 2, 0, 0, 1, 4]
    rfa_seen = {space.decode(space.sample(seed)).nodes[0].op for seed in range(60)}
    assert rfa_seen == {"none", "rfa"}
    # A raw input the space does not offer, and a space that offers no raw input at all.
    reads_c4 = genotype.replace(nodes=(Node(("C4",), 4), genotype.nodes[1])).validate()
    with pytest.raises(SpaceError, match="input 'C4' is not among the space's inputs"):
        space.encode(reads_c4)
    fpn = load_genotype("fpn")
    fpn_reading_c5 = fpn.replace(nodes=(Node(("P5", "C5"), 5, "sum", "conv3x3"),) + fpn.nodes[1:]).validate()
    assert load_space("wide").contains(fpn) and load_space("wide_family").contains(fpn_reading_c5)
    with pytest.raises(SpaceError, match="input 'C5' is not among the space's inputs"):
        load_space("wide").encode(fpn_reading_c5)


@pytest.mark.parametrize("change, message", [
    ({"raw_inputs": [6]}, "raw_inputs: must list distinct backbone levels of [3, 4, 5]"),
    ({"raw_inputs": [5, 5]}, "raw_inputs: must list distinct backbone levels"),
    ({"raw_inputs": 5}, "raw_inputs: must list distinct backbone levels"),
    ({"ops": ["none", "rfa"]}, "ops: ['rfa'] read one raw backbone feature: the space needs raw_inputs"),
    ({"ops": ["rfa"], "raw_inputs": [5]}, "and another op"),
    ({"ops": ["none", "rfa"], "raw_inputs": [5], "inputs": [2]}, "1 among inputs"),
])
def test_raw_input_space_errors(change, message):
    data = {"cell": {"levels": [3, 4, 5, 6, 7], "extra": {"source": "backbone", "ops": ["conv", "conv"]}},
            "nodes": 5, "inputs": [1, 2], "combines": ["sum"], "ops": ["none"], **change}
    with pytest.raises(SpaceError) as err:
        space_from_dict(data)
    assert message in str(err.value)


def test_a_bad_space_name_or_path_is_named(tmp_path):
    with pytest.raises(SpaceError, match=r"'wid' is neither a file nor a shipped space; shipped: \['nasfpn', 'wide'"):
        load_space("wid")
    with pytest.raises(SpaceError, match="neither a file nor a shipped space"):
        load_space("fpn")  # a reference neck is no space
    with pytest.raises(SpaceError, match="missing.yaml: no such file"):
        load_space(tmp_path / "missing.yaml")
